"""EarlyStopping through the Keras callback: same decisions and weights as Keras' own
EarlyStopping, exact restore of weights and batch-norm statistics, resume across fits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import data, fit, mlp, sgd, weights

from regplug.adapters.keras import Regularize
from regplug.plugins import EarlyStopping

X, Y = data(n=96)
XV, YV = data(n=32, seed=7)


class Snapshots(keras.callbacks.Callback):
    """Every epoch's weights (a test-only host read), before other callbacks act."""

    def __init__(self):
        super().__init__()
        self.by_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch[epoch] = weights(self.model)


def overfitting_fit(callbacks, epochs=25):
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.2), loss="mse")
    history = fit(model, X[:24], Y[:24], epochs=epochs, validation_data=(XV, YV),
                  callbacks=callbacks)
    return model, history


@pytest.mark.parametrize("kwargs", [dict(patience=2), dict(patience=3, min_delta=1e-3),
                                    dict(patience=1, start_from_epoch=4)])
def test_same_stop_epoch_and_restored_weights_as_keras_early_stopping(kwargs):
    theirs, h_theirs = overfitting_fit(
        [keras.callbacks.EarlyStopping(restore_best_weights=True, **kwargs)])
    probe = Snapshots()
    stopper = EarlyStopping(**kwargs)
    ours, h_ours = overfitting_fit([probe, Regularize([stopper])])
    assert len(h_ours.history["loss"]) == len(h_theirs.history["loss"]) < 25
    np.testing.assert_array_equal(h_ours.history["val_loss"], h_theirs.history["val_loss"])
    for a, b in zip(weights(ours), weights(theirs)):
        np.testing.assert_array_equal(a, b)
    # ... and those weights are exactly the ones the model had after the best epoch
    for a, b in zip(weights(ours), probe.by_epoch[stopper.best_epoch]):
        np.testing.assert_array_equal(a, b)
    assert stopper.stop_reason.startswith("patience exhausted")


def test_batchnorm_statistics_come_back_with_the_weights():
    probe = Snapshots()
    stopper = EarlyStopping(patience=50)  # never stops: the restore happens at the last epoch
    model, history = overfitting_fit([probe, Regularize([stopper])], epochs=8)
    assert len(history.history["loss"]) == 8 and stopper.stop_reason is None
    names = [w.path for w in model.weights]
    assert any("moving_mean" in n for n in names)
    best = probe.by_epoch[stopper.best_epoch]
    assert stopper.best_epoch != 7, "the scenario needs an earlier best epoch"
    for name, a, b in zip(names, weights(model), best):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_stop_reason_and_request_are_readable_after_fit():
    callback = Regularize([EarlyStopping(patience=1)])
    overfitting_fit([callback])
    [request] = callback.stop_requests
    assert request.source == "early_stopping" and "best" in request.reason


def test_resuming_in_a_second_fit_continues_patience_and_keeps_the_best_weights():
    stopper = EarlyStopping(patience=3)
    full, h_full = overfitting_fit([Regularize([stopper])], epochs=25)
    ran = len(h_full.history["loss"])
    cut = stopper.best_epoch + 1
    assert cut < ran - 1

    first = EarlyStopping(patience=3, restore_best_weights=True)
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.2), loss="mse")
    fit(model, X[:24], Y[:24], epochs=cut, validation_data=(XV, YV),
        callbacks=[_NoRestore(first)])
    state = first.state_dict()
    second = EarlyStopping(patience=3)
    second.load_state_dict(state)
    h = fit(model, X[:24], Y[:24], epochs=25, initial_epoch=cut, validation_data=(XV, YV),
            callbacks=[Regularize([second])])
    assert cut + len(h.history["loss"]) == ran
    assert second.stopped_epoch == stopper.stopped_epoch
    for a, b in zip(weights(model), weights(full)):
        np.testing.assert_array_equal(a, b)


def _NoRestore(stopper):
    """A first fit interrupted after ``cut`` epochs: the process would end there, so its
    end-of-training restore must not happen (the checkpoint is taken before it)."""

    class Interrupted(Regularize):
        def on_train_end(self, logs=None):
            stopper.restore_best_weights = False
            try:
                super().on_train_end(logs)
            finally:
                stopper.restore_best_weights = True

    return Interrupted([stopper])


class _Score(keras.callbacks.Callback):
    """Logs a made-up ``score`` per epoch (listed before Regularize, so plugins see it)."""

    def __init__(self, series):
        super().__init__()
        self.series = series

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.series[epoch]


@pytest.mark.parametrize("on", ["device", "host"])
def test_restoring_a_middle_epoch_leaves_a_working_model_with_that_epochs_weights_exactly(on):
    # On JAX, Variable.assign keeps the array it is given and fit's train step donates
    # (deletes) the model's buffers: a snapshot sharing them broke the restored model.
    probe = Snapshots()
    stopper = EarlyStopping(monitor="score", mode="min", patience=2, best_weights_on=on)
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.05), loss="mse")
    history = fit(model, X, Y, epochs=7,
                  callbacks=[probe, _Score([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8]),
                             Regularize([stopper])])
    assert len(history.history["loss"]) == 5 and stopper.restored_epoch == 2
    for name, a, b in zip([w.path for w in model.weights], weights(model), probe.by_epoch[2]):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(weights(model)[0], probe.by_epoch[4][0])
    prediction = model.predict(X, verbose=0)
    assert prediction.shape == (len(X), 1) and np.isfinite(prediction).all()
    assert np.isfinite(model.evaluate(X, Y, verbose=0))
    fit(model, X, Y, epochs=1)  # trains on from the restored weights
    assert all(np.isfinite(w).all() for w in weights(model))

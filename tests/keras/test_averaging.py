"""EMA and SWA in Keras ``fit`` (every backend): EMA equals the optimizer's own ``use_ema=True``
averages (first-step rule included), validation runs on the averages when asked, and a
plugin state carries the average into the next fit bit for bit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import data, mlp

from regplug.adapters.keras import Regularize
from regplug.plugins import EMA, SWA

X, Y = data(n=800)  # batch 16: 50 updates per epoch
X_VAL, Y_VAL = data(n=64, seed=3)


def fitted(plugins=(), *, epochs=4, optimizer=None, validate=False, model=None, **kwargs):
    model = model if model is not None else mlp(dropout=0.0)
    if getattr(model, "optimizer", None) is None:
        model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
                      loss="mse")
    callbacks = [Regularize(list(plugins))] if plugins else []
    history = model.fit(X, Y, batch_size=16, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=callbacks,
                        validation_data=(X_VAL, Y_VAL) if validate else None, **kwargs)
    return model, history


def trainable(model):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]


def assert_close(a, b, *, rtol=1e-6, atol=1e-7):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_ema_equals_the_optimizers_use_ema_after_200_steps():
    # Keras' fit ends by writing the optimizer's averages into the model.
    reference, _ = fitted(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True,
                                                         ema_momentum=0.95))
    ours, _ = fitted([EMA(0.95)])
    assert int(keras.ops.convert_to_numpy(ours.optimizer.iterations)) == 200
    assert_close(trainable(ours), trainable(reference))
    raw, _ = fitted()
    assert not np.allclose(trainable(raw)[0], trainable(ours)[0])  # the test can fail


def test_keep_raw_leaves_the_trained_weights_and_hands_out_the_average():
    ema = EMA(0.95, keep_raw=True)
    ours, _ = fitted([ema], epochs=2)
    raw, _ = fitted(epochs=2)
    assert_close(trainable(ours), trainable(raw), rtol=0, atol=0)
    reference, _ = fitted(epochs=2, optimizer=keras.optimizers.SGD(
        0.05, momentum=0.9, use_ema=True, ema_momentum=0.95))
    averages = ema.averages()
    assert_close([averages[p.name] for p in ema._params], trainable(reference))


def test_validation_runs_on_the_average():
    ema = EMA(0.9, evaluate_on_average=True)
    model, history = fitted([ema], epochs=2, validate=True)
    # The model now holds the average the last validation ran on.
    val_loss = model.evaluate(X_VAL, Y_VAL, verbose=0, batch_size=16)
    assert abs(history.history["val_loss"][-1] - val_loss) < 1e-5
    _, raw_history = fitted([EMA(0.9, keep_raw=True)], epochs=2, validate=True)
    assert abs(raw_history.history["val_loss"][-1] - val_loss) > 1e-5  # the test can fail


def test_validating_on_the_average_leaves_training_unchanged():
    swapped, _ = fitted([EMA(0.9, evaluate_on_average=True, keep_raw=True)], epochs=2,
                        validate=True)
    plain, _ = fitted([EMA(0.9, keep_raw=True)], epochs=2, validate=True)
    assert_close(trainable(swapped), trainable(plain), rtol=0, atol=0)


def test_the_average_continues_into_the_next_fit_from_the_plugin_state():
    whole = EMA(0.9, keep_raw=True)
    fitted([whole], epochs=2)
    first = EMA(0.9, keep_raw=True)
    model, _ = fitted([first], epochs=1)
    state = first.state_dict()
    second = EMA(0.9, keep_raw=True)
    second.load_state_dict(state)
    fitted([second], epochs=1, model=model)
    # Layer names differ between the two models: compare in order.
    for got, value in zip(second.averages().values(), whole.averages().values(), strict=True):
        np.testing.assert_array_equal(got, value)


def test_swa_averages_the_epoch_ends_from_start():
    swa = SWA(start=1, keep_raw=True)
    snapshots = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(trainable(model)))
    model = mlp(dropout=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=4, verbose=0, shuffle=False,
              callbacks=[Regularize([swa]), record])
    assert swa.averaged == 3
    expected = [np.mean([s[i] for s in snapshots[1:]], axis=0) for i in range(len(snapshots[0]))]
    averages = swa.averages()
    assert_close([averages[p.name] for p in swa._params], expected, rtol=1e-5, atol=1e-6)


def test_a_bad_decay_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^EMA: argument 'decay' must be in \(0, 1\)"):
        EMA(1.0)
    with pytest.raises(ValueError, match=r"^SWA: argument 'start' must be an integer >= 0"):
        SWA(start=-1)

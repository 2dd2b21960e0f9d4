"""Nothing of regplug outlives its fit: after any end of ``fit`` (a plugin raising, Ctrl-C in
another callback) the model behaves, trains, evaluates and saves as a plain Keras model, and
one ``Regularize`` cannot serve two fits that run at the same time."""

from __future__ import annotations

import logging
import threading
import zipfile

import keras
import numpy as np
import pytest
from _keras_models import (
    SetRates,
    assert_same_weights,
    data,
    fit,
    mlp,
    plain_twin,
    regplug_leftovers,
    sgd,
    weights,
)
from keras import ops

import regplug
from regplug.adapters.keras import Regularize, detach
from regplug.plugins import L2, MaxNorm

X, Y = data(64)


class RaiseIn(regplug.Plugin):
    """Raises ``error`` from one hook: ``on_epoch_end`` (Python side) or ``on_loss`` (inside
    the step, while it is traced)."""

    def __init__(self, hook: str, error: BaseException) -> None:
        self.hook, self.error = hook, error

    @regplug.hookimpl
    def on_epoch_end(self, run, epoch, logs):
        if self.hook == "on_epoch_end":
            raise self.error

    @regplug.hookimpl
    def on_loss(self, run, loss):
        if self.hook == "on_loss" and loss is not None:  # not at the fit-start listing
            raise self.error
        return


class Interrupt(keras.callbacks.Callback):
    """Ctrl-C in the middle of the first epoch."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt


def _plugins() -> list[object]:
    # a penalty (compute_loss), an update plugin (optimizer.apply), a dropout schedule
    return [L2(0.05), MaxNorm(0.5), SetRates({"dropout": [0.5, 0.5]})]


SCENARIOS = {
    "plugin raises in on_epoch_end": (
        lambda: [Regularize([*_plugins(), RaiseIn("on_epoch_end", RuntimeError("boom"))])],
        RuntimeError),
    "plugin raises in on_loss while the step is traced": (
        lambda: [Regularize([*_plugins(), RaiseIn("on_loss", ValueError("bad loss"))])],
        ValueError),
    "KeyboardInterrupt from another callback": (
        lambda: [Regularize(_plugins()), Interrupt()], KeyboardInterrupt),
}


def _crashed_model(scenario: str) -> keras.Model:
    callbacks, error = SCENARIOS[scenario]
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    with pytest.raises(error):
        fit(model, X, Y, epochs=2, callbacks=callbacks())
    return model


def _check_evaluate(model: keras.Model, twin: keras.Model, tmp_path) -> None:
    ours = model.evaluate(X, Y, batch_size=16, verbose=0, return_dict=True)
    theirs = twin.evaluate(X, Y, batch_size=16, verbose=0, return_dict=True)
    assert sorted(ours) == ["loss"]  # no l2_penalty, no re-raised plugin error
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6)


def _check_fit(model: keras.Model, twin: keras.Model, tmp_path) -> None:
    history = fit(model, X, Y, epochs=1)
    fit(twin, X, Y, epochs=1)
    assert sorted(history.history) == ["loss"]
    assert_same_weights(twin, model)  # no penalty, no max-norm, Keras' own dropout


def _check_save(model: keras.Model, twin: keras.Model, tmp_path) -> None:
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert "regplug" not in archive.read("config.json").decode()
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(X, training=False)),
                               ops.convert_to_numpy(twin(X, training=False)), rtol=1e-6)
    assert sorted(loaded.evaluate(X, Y, verbose=0, return_dict=True)) == ["loss"]


CHECKS = {"evaluate": _check_evaluate, "fit": _check_fit, "save": _check_save}


@pytest.mark.parametrize("scenario, first", list(zip(SCENARIOS, ["evaluate", "fit", "save"])))
def test_after_a_crashed_fit_the_model_evaluates_trains_and_saves_as_plain_keras(
        scenario, first, tmp_path):
    model = _crashed_model(scenario)
    twin = plain_twin(model)
    CHECKS[first](model, twin, tmp_path)  # the first call after the crash cleans up...
    assert regplug_leftovers(model) == []  # ... every patch, tracker, variable, attribute
    assert model.layers[2].rate == 0.2
    assert detach(model) is False  # nothing left for detach
    for name, check in CHECKS.items():
        if name != first:
            check(model, twin, tmp_path)
    assert regplug_leftovers(model) == []


def test_the_patches_are_inert_as_soon_as_their_fit_is_gone():
    model = _crashed_model("plugin raises in on_loss while the step is traced")
    # Nothing called through the model's entry points yet: the leftover wrappers act as the
    # originals (no penalty, no re-raised plugin error, Keras' dropout rate).
    y_pred = model(X, training=False)
    loss = ops.convert_to_numpy(model.compute_loss(X, Y, y_pred))
    np.testing.assert_allclose(loss, np.mean((ops.convert_to_numpy(y_pred) - Y) ** 2),
                               rtol=1e-5)
    ones = np.ones((4, 1000), dtype="float32")
    dropped = ops.convert_to_numpy(model.layers[2](ones, training=True))
    assert 0.1 < float(np.mean(dropped == 0.0)) < 0.3  # Keras' rate 0.2, not the plugin's 0.5


def test_cleanup_is_logged_and_a_later_regularized_fit_works(caplog):
    model = _crashed_model("KeyboardInterrupt from another callback")
    with caplog.at_level(logging.WARNING, logger="regplug"):
        model.predict(X, verbose=0)
    assert "did not finish" in caplog.text and model.name in caplog.text
    baseline = plain_twin(model, reg=keras.regularizers.L2(0.05))
    fit(baseline, X, Y, epochs=1)
    history = fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.05)])])
    assert sorted(history.history) == ["l2_penalty", "loss"]
    assert_same_weights(baseline, model)
    assert regplug_leftovers(model) == []


class EvaluatesEachEpoch(keras.callbacks.Callback):
    """Calls the model's entry points from inside the running fit."""

    def __init__(self, tmp_path):
        super().__init__()
        self.tmp_path = tmp_path
        self.logs: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(self.model.evaluate(X, Y, verbose=0, return_dict=True))
        self.model.predict(X[:4], verbose=0)
        self.model.save(self.tmp_path / f"e{epoch}.keras")


def test_calls_into_the_model_from_inside_a_running_fit_leave_the_attachment_alone(tmp_path):
    baseline = mlp(reg=keras.regularizers.L2(0.05))
    baseline.compile(optimizer=sgd(), loss="mse")
    fit(baseline, X, Y, epochs=2)
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    inside = EvaluatesEachEpoch(tmp_path)
    history = fit(model, X, Y, epochs=2, callbacks=[Regularize([L2(0.05)]), inside])
    assert len(history.history["l2_penalty"]) == 2
    assert all("l2_penalty" in logs for logs in inside.logs)  # still attached in there
    assert_same_weights(baseline, model)
    assert regplug_leftovers(model) == []


# -- one Regularize, one fit at a time -----------------------------------------------------
class RunInThread(keras.callbacks.Callback):
    """At the first epoch of this fit, runs ``job`` in another thread and waits for it."""

    def __init__(self, job):
        super().__init__()
        self.job, self.error = job, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch:
            return

        def target():
            try:
                self.job()
            except BaseException as err:
                self.error = err

        thread = threading.Thread(target=target)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive()


@pytest.mark.parametrize("same_model", [False, True], ids=["two models", "one model"])
def test_one_regularize_in_two_threads_fits_is_refused_and_the_first_fit_finishes(same_model):
    baseline = mlp(reg=keras.regularizers.L2(0.05))
    baseline.compile(optimizer=sgd(), loss="mse")
    fit(baseline, X, Y, epochs=2)
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    other = model
    if not same_model:
        other = mlp(seed=1)
        other.compile(optimizer=sgd(), loss="mse")
    other_before = weights(other)
    callback = Regularize([L2(0.05)])
    second = RunInThread(lambda: fit(other, X, Y, epochs=1, callbacks=[callback]))
    history = fit(model, X, Y, epochs=2, callbacks=[callback, second])
    assert isinstance(second.error, regplug.UsageError), second.error
    message = str(second.error)
    assert message.startswith("Regularize: ") and "one Regularize per fit" in message
    assert model.name in message
    assert len(history.history["l2_penalty"]) == 2
    assert_same_weights(baseline, model)  # the first fit went on, penalized, undisturbed
    assert regplug_leftovers(model) == [] and regplug_leftovers(other) == []
    if not same_model:
        for a, b in zip(weights(other), other_before):
            np.testing.assert_array_equal(a, b)  # the refused fit did not train
    assert callback.model is model
    fit(other, X, Y, epochs=1, callbacks=[callback])  # free again once the first fit ended
    assert regplug_leftovers(other) == []

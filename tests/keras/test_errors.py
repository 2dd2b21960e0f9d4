"""Bad input is refused at construction or at fit start, with messages that say what to do."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, COMPILED, data, fit, kernel, linear, mlp, sgd, zero_loss

import regplug
from regplug.adapters.keras import Regularize
from regplug.plugins import L2, DecoupledWeightDecay

X, Y = data(32)


class Watch(regplug.Plugin):
    """Names a metric to watch, as early stopping or gap monitors do."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    @regplug.hookimpl
    def on_epoch_end(self, run, logs):
        pass


def test_monitor_missing_from_the_logs_warns_with_the_available_keys():
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    with pytest.warns(regplug.RegplugWarning, match=r"monitor 'val_loss' is not in the logs.*"
                      r"Available keys: l2_penalty, loss\..*pass validation_data"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.01), Watch("val_loss")])])
    with pytest.warns(regplug.RegplugWarning, match="Did you mean 'val_loss'"):
        fit(model, X, Y, epochs=1, validation_data=(X, Y),
            callbacks=[Regularize([Watch("val_los")])])


class EveryStep(regplug.Plugin):
    """Needs Python at every update (counts them on the host)."""

    requires = ("eager_step",)

    def __init__(self) -> None:
        self.steps = 0

    @regplug.hookimpl
    def on_step(self, run):
        self.steps += 1


def test_plugin_needing_python_at_every_step_is_refused_at_fit_start_when_compiled():
    model = linear()
    model.compile(optimizer=sgd(), loss=zero_loss)
    before = kernel(model)
    plugin = EveryStep()
    if COMPILED:
        with pytest.raises(regplug.UnsupportedPluginError,
                           match=r"every_step: requires 'eager_step'.*on_step.*run_eagerly=True"):
            fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.1), plugin])])
        np.testing.assert_array_equal(kernel(model), before)  # refused before any step
        assert "compute_loss" not in vars(model)
        model.compile(optimizer=sgd(), loss=zero_loss, run_eagerly=True)
    fit(model, X, Y, epochs=1, callbacks=[Regularize([plugin])])  # eager: served
    assert plugin.steps == 2


def test_plugin_requiring_an_unknown_capability_is_refused():
    plugin = EveryStep()
    plugin.requires = ("telepathy",)
    model = linear()
    model.compile(optimizer=sgd(), loss=zero_loss)
    with pytest.raises(regplug.UnsupportedPluginError, match="'telepathy'.*known: eager_step"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([plugin])])


def test_update_plugins_are_refused_with_optimizer_gradient_accumulation():
    model = linear()
    model.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
                  loss=zero_loss)
    with pytest.raises(regplug.UnsupportedPluginError, match="gradient_accumulation_steps=2"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([DecoupledWeightDecay(0.1)])])
    fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.1)])])  # penalties are fine


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow-style custom train_step")
def test_custom_train_step_that_bypasses_compute_loss_is_reported():
    import tensorflow as tf

    class Custom(keras.Model):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = keras.ops.mean((self(x, training=True) - y) ** 2)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"loss": loss}

    inp = keras.Input((8,))
    model = Custom(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer=sgd(), loss="mse")
    with pytest.raises(regplug.UsageError, match=r"did not call compute_loss.*self\.compute_loss"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.01)])])


@pytest.mark.skipif(not COMPILED, reason="only a traced step has no values to read")
def test_host_read_inside_the_traced_step_fails_with_a_message_that_explains_why():
    class ReadsHost(regplug.Plugin):
        @regplug.hookimpl
        def on_step(self, run):
            run.ops.to_float(run.ops.sum_squares(run.parameters()))

    model = linear()
    model.compile(optimizer=sgd(), loss=zero_loss)
    with pytest.raises(regplug.UsageError, match="inside Keras' compiled train step"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([ReadsHost()])])


def test_constructor_rejects_a_plugin_that_is_not_in_a_list_and_misspelled_hooks():
    with pytest.raises(TypeError, match=r"list of plugin objects.*Regularize\(\[L2\(1e-4\)\]\)"):
        Regularize(L2(0.01))  # type: ignore[arg-type]

    class Typo(regplug.Plugin):
        def on_setp(self, run):
            pass

    with pytest.raises(regplug.PluginValidationError, match="did you mean 'on_step'"):
        Regularize([Typo()])
    with pytest.raises(regplug.PluginValidationError, match="instance, not the class"):
        Regularize([L2])

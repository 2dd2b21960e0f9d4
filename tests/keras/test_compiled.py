"""Schedules, step hooks and dropout rates act *inside* the train step Keras compiles.

On TensorFlow and JAX ``fit`` traces the step; a Python number changed by a callback after
tracing changes nothing. These tests measure each effect where it happens — the weights a
known number of updates produce (so the penalty's gradient and the update hooks are
checked step by step), the fraction of units a dropout layer zeroed inside the step — and,
when compiled, check that the plugin code ran only while tracing, not once per step.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import (
    BACKEND,
    COMPILED,
    CountHooks,
    ProbeLog,
    SetRates,
    assert_same_weights,
    data,
    dropout_model,
    fit,
    kernel,
    linear,
    mlp,
    sgd,
    zero_loss,
)

import regplug
from regplug import LinearWarmup
from regplug.adapters.keras import Regularize
from regplug.plugins import L2, DecoupledWeightDecay, ProximalL1

X, Y = data(64)
STEPS_PER_EPOCH = 4  # 64 samples, batches of 16


def _assert_traced_not_per_step(count: int, steps: int) -> None:
    if COMPILED:
        assert 1 <= count <= 2, count  # the trace (JAX may trace once more), not each step
    else:
        assert count == steps, count   # eager torch: every step runs the Python hooks


@pytest.mark.parametrize("unit", ["steps", "epochs"])
def test_strength_schedule_takes_effect_inside_the_compiled_step_from_the_step_it_is_due(unit):
    lr, top, epochs = 0.1, 0.05, 3
    if unit == "steps":
        schedule = LinearWarmup(top, warmup_steps=4)
        strength = [top * min(t / 4, 1.0) for t in range(epochs * STEPS_PER_EPOCH)]
    else:
        schedule = LinearWarmup(top, warmup_epochs=2)
        strength = [top * min((t // STEPS_PER_EPOCH) / 2, 1.0)
                    for t in range(epochs * STEPS_PER_EPOCH)]
    model = linear()
    model.compile(optimizer=sgd(lr), loss=zero_loss)
    w0 = kernel(model)
    counter = CountHooks()
    fit(model, X, Y, epochs=epochs, callbacks=[Regularize([L2(schedule), counter])])

    # Only the penalty moves the kernel: w ← w − lr·2λ_t·w at update t.
    factors = np.array([1 - 2 * lr * s for s in strength])
    np.testing.assert_allclose(kernel(model), w0 * np.prod(factors), rtol=3e-6)
    shifted = np.prod(factors[1:]) * (1 - 2 * lr * top)  # the schedule one step late
    assert abs(shifted / np.prod(factors) - 1) > 1e-4    # ... would be told apart
    _assert_traced_not_per_step(counter.calls["on_loss"], epochs * STEPS_PER_EPOCH)
    assert all(shape == () for shape in counter.loss_shapes)  # on_loss got the real loss


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_decoupled_weight_decay_acts_at_every_update_inside_the_step(steps_per_execution):
    if BACKEND == "torch" and steps_per_execution > 1:
        pytest.skip("the torch backend runs one step per call")
    model = linear()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=zero_loss,
                  steps_per_execution=steps_per_execution)
    w0 = kernel(model)
    counter = CountHooks()
    callback = Regularize([DecoupledWeightDecay(0.5), counter])
    fit(model, X, Y, epochs=2, callbacks=[callback])
    updates = 2 * STEPS_PER_EPOCH  # with steps_per_execution=3: executions of 3 and 1
    # Adam's update is 0 for a zero gradient: only the decay, 1 − lr·wd per update.
    np.testing.assert_allclose(kernel(model), w0 * (1 - 0.01 * 0.5) ** updates, rtol=2e-6)
    _assert_traced_not_per_step(counter.calls["on_before_step"], updates)
    assert callback.run.step == updates


def test_proximal_l1_makes_exact_zeros_after_every_update():
    lr, l1, epochs = 0.1, 0.2, 2
    model = linear()
    model.compile(optimizer=sgd(lr), loss=zero_loss)
    w0 = kernel(model)
    fit(model, X, Y, epochs=epochs, callbacks=[Regularize([ProximalL1(l1)])])
    total = lr * l1 * epochs * STEPS_PER_EPOCH  # soft-thresholds add up
    expected = np.sign(w0) * np.maximum(np.abs(w0) - total, 0.0)
    w = kernel(model)
    np.testing.assert_allclose(w, expected, atol=2e-6)
    clear = np.abs(np.abs(w0) - total) > 1e-4
    assert ((w == 0) == (expected == 0))[clear].all()
    assert (w == 0).sum() >= 3  # exact zeros, not tiny residues


class GradientL2(regplug.Plugin):
    """A third-party plugin that adds 2λθ to the gradients in on_before_step."""

    def __init__(self, l2: float) -> None:
        self.l2 = l2

    @regplug.hookimpl
    def on_train_begin(self, run):
        self.params = run.parameters()

    @regplug.hookimpl
    def on_before_step(self, run):
        run.ops.add_to_grad_(self.params, 2 * self.l2)


def test_on_before_step_changes_the_gradients_the_optimizer_applies():
    baseline = mlp(reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    ours = mlp()
    ours.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    fit(baseline, X, Y)
    fit(ours, X, Y, callbacks=[Regularize([GradientL2(0.01)])])
    assert_same_weights(baseline, ours, rtol=1e-5, atol=1e-6)  # Adam: not a plain rescale


def test_dropout_rate_set_during_fit_changes_the_drop_fraction_inside_the_compiled_step():
    rates = {"drop_0": [0.0, 0.3, 0.8], "drop_1": [0.5, 0.0, 0.2]}  # drop_0 built with 0
    model = dropout_model(rates=(0.0, 0.5))
    model.compile(optimizer=sgd(), loss="mse")
    ones = np.ones((64, 512), "float32")
    probes = ProbeLog(["probe_0", "probe_1"])
    fit(model, ones, np.zeros((64, 1), "float32"), epochs=3, batch_size=32,
        callbacks=[Regularize([SetRates(rates)]), probes])

    for epoch in range(3):
        r0, r1 = rates["drop_0"][epoch], rates["drop_1"][epoch]
        assert probes.zeros["probe_0"][epoch] == pytest.approx(r0, abs=0.02)
        assert probes.zeros["probe_1"][epoch] == pytest.approx(1 - (1 - r0) * (1 - r1),
                                                               abs=0.02)
        assert probes.means["probe_0"][epoch] == pytest.approx(1.0, abs=0.08)  # 1/(1-rate)
    probe = model.get_layer("probe_0")
    _assert_traced_not_per_step(probe.traced, 3 * 2)
    # After fit the layers are Keras' own again, with the rates they were built with.
    layer = model.get_layer("drop_0")
    assert "call" not in vars(layer) and layer.rate == 0.0
    assert model.get_layer("drop_1").rate == 0.5


def test_dropout_handles_report_names_types_and_built_rates():
    seen = {}

    class Look(regplug.Plugin):
        @regplug.hookimpl
        def on_train_begin(self, run):
            seen["handles"] = run.dropout_layers()

    model = dropout_model(rates=(0.0, 0.5))
    model.compile(optimizer=sgd(), loss="mse")
    fit(model, np.ones((16, 512), "float32"), np.zeros((16, 1), "float32"), epochs=1,
        callbacks=[Regularize([Look()])])
    handles = seen["handles"]
    assert [(h.name, h.layer_type, h.rate) for h in handles] == [
        ("drop_0", "Dropout", 0.0), ("drop_1", "Dropout", 0.5)]
    with pytest.raises(ValueError, match="rate"):
        handles[0].rate = 1.5


def test_no_host_reads_per_step(monkeypatch):
    """regplug adds O(epochs) device-to-host reads to fit, none per step."""
    reads = []
    original = keras.ops.convert_to_numpy

    def counting(x):
        reads.append(1)
        return original(x)

    def host_reads(callbacks) -> int:
        model = mlp()
        model.compile(optimizer=sgd(), loss="mse")
        reads.clear()
        fit(model, X, Y, epochs=2, batch_size=4, callbacks=callbacks)  # 32 steps
        return len(reads)

    monkeypatch.setattr(keras.ops, "convert_to_numpy", counting)
    plain = host_reads([])
    plugins = [L2(LinearWarmup(0.01, warmup_steps=8)), DecoupledWeightDecay(0.1),
               ProximalL1(1e-3)]
    ours = host_reads([Regularize(plugins)])
    assert ours - plain <= 3  # the optimizer's step count: at fit start and each epoch end


class LateRates(regplug.Plugin):
    """Asks for the dropout layers only at epoch 1, after the step was traced."""

    @regplug.hookimpl
    def on_epoch_begin(self, run, epoch):
        if epoch == 1:
            for handle in run.dropout_layers():
                handle.rate = 0.4


def test_dropout_layers_handed_out_after_tracing_take_effect_from_the_next_batch():
    model = dropout_model(rates=(0.0,))
    model.compile(optimizer=sgd(), loss="mse")
    probes = ProbeLog(["probe_0"])
    fit(model, np.ones((64, 512), "float32"), np.zeros((64, 1), "float32"), epochs=2,
        batch_size=32, callbacks=[Regularize([L2(0.01), LateRates()]), probes])
    assert probes.zeros["probe_0"][0] == 0.0
    assert probes.zeros["probe_0"][1] == pytest.approx(0.4, abs=0.02)


class ChannelProbe(keras.layers.Layer):
    """Inside the step: the fraction of zeroed channels, and whether a channel is zeroed at
    every timestep or at none (SpatialDropout1D drops whole channels)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.zeros = self.add_weight(shape=(), initializer="zeros", trainable=False)
        self.mixed = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x, training=None):
        if training:
            z = keras.ops.cast(keras.ops.equal(x, 0.0), "float32")
            self.zeros.assign(keras.ops.mean(z))
            self.mixed.assign(keras.ops.max(keras.ops.abs(z - z[:, :1, :])))
        return x


def test_spatial_dropout_built_with_rate_zero_drops_whole_channels_when_scheduled():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 256))
    x = keras.layers.SpatialDropout1D(0.0, name="sdrop")(inp)
    x = ChannelProbe(name="cprobe")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    model.compile(optimizer=sgd(), loss="mse")
    fit(model, np.ones((32, 6, 256), "float32"), np.zeros((32, 1), "float32"), epochs=1,
        batch_size=32, callbacks=[Regularize([SetRates({"sdrop": [0.5]})])])
    probe = model.get_layer("cprobe")
    assert float(keras.ops.convert_to_numpy(probe.zeros)) == pytest.approx(0.5, abs=0.04)
    assert float(keras.ops.convert_to_numpy(probe.mixed)) == 0.0

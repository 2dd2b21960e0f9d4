"""DropoutSchedule in ``model.fit``: the fraction of units each dropout layer drops *inside the
compiled train step* follows the schedule, step by step.

A probe layer after each dropout layer (its input is all ones, so a dropped unit is a 0)
writes the dropped fraction of every training step into its own slot of a non-trainable
variable, from inside the traced step; the test reads the slots after ``fit``. Nothing here
reads a rate from a Python attribute.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest
from _keras_models import fit, sgd
from keras import ops

import regplug
from regplug import EarlyDropout, ExponentialRamp, LateDropout, Linear
from regplug.adapters.keras import Regularize
from regplug.plugins import DropoutSchedule

SAMPLES, BATCH = 64, 16  # 4 steps per epoch


class StepProbe(keras.layers.Layer):
    """Records, inside each training step, the fraction of dropped units of its all-ones input.

    Step ``t`` (counted by the ``count`` variable) writes slot ``t`` of ``fractions``. With
    ``channels=True`` the unit is one channel of one sample (channels last), and ``mixed``
    keeps 1 if any channel was ever dropped only in part.
    """

    def __init__(self, steps: int, channels: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps, self.channels = steps, channels
        self.fractions = self.add_weight(shape=(steps,), initializer="zeros", trainable=False,
                                         name="fractions")
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="count")
        self.mixed = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="mixed")

    def call(self, x: Any, training: bool | None = None) -> Any:
        if training:
            dropped = ops.cast(ops.equal(x, 0.0), "float32")
            if self.channels:
                axes = tuple(range(1, len(x.shape) - 1))
                whole = ops.min(dropped, axis=axes)
                self.mixed.assign(ops.maximum(self.mixed,
                                              ops.max(ops.max(dropped, axis=axes) - whole)))
                dropped = whole
            slot = ops.one_hot(ops.cast(self.count, "int32"), self.steps)
            self.fractions.assign(self.fractions + slot * ops.mean(dropped))
            self.count.assign(self.count + 1.0)
        return x

    def units(self, shape: tuple[int, ...]) -> int:
        """Units per step for a batch of inputs of ``shape`` (without the batch axis)."""
        return BATCH * (shape[-1] if self.channels else math.prod(shape))

    def read(self) -> list[float]:
        assert float(ops.convert_to_numpy(self.count)) == self.steps  # one slot per step
        return [float(v) for v in ops.convert_to_numpy(self.fractions)]


def probed_model(shape: tuple[int, ...], drops: list[keras.layers.Layer], steps: int
                 ) -> keras.Model:
    """Input → each dropout layer → its probe (``probe_<layer name>``) → sum → Dense(1)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    outs = []
    for layer in drops:
        channels = isinstance(layer, (keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                                      keras.layers.SpatialDropout3D))
        outs.append(StepProbe(steps, channels, name=f"probe_{layer.name}")(layer(inp)))
    merged = outs[0] if len(outs) == 1 else keras.layers.Add()(outs)
    out = keras.layers.Dense(1, name="head")(keras.layers.Flatten()(merged))
    model = keras.Model(inp, out)
    model.compile(optimizer=sgd(0.01), loss="mse")
    return model


def run_fit(model: keras.Model, shape: tuple[int, ...], plugins: list, epochs: int) -> None:
    fit(model, np.ones((SAMPLES, *shape), "float32"), np.zeros((SAMPLES, 1), "float32"),
        epochs=epochs, batch_size=BATCH, callbacks=[Regularize(plugins)])


def tolerance(p: float, units: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / units)  # 5 binomial standard deviations


def assert_follows(measured: list[float], rates: list[float], units: int) -> None:
    """Step by step: exactly 0 at rate 0, else within 5 binomial standard deviations."""
    assert len(measured) == len(rates)
    for t, (m, p) in enumerate(zip(measured, rates)):
        assert abs(m - p) <= tolerance(p, units), (t, m, p)


def clock(epochs: int) -> list[tuple[int, int]]:
    steps = SAMPLES // BATCH
    return [(epoch * steps + i, epoch) for epoch in range(epochs) for i in range(steps)]


def test_a_per_epoch_schedule_is_in_force_in_every_compiled_step_of_its_epoch():
    shape, epochs = (1024,), 3
    model = probed_model(shape, [keras.layers.Dropout(0.0, name="drop_zero"),
                                 keras.layers.Dropout(0.5, name="drop_other")], steps=12)
    schedule = Linear(0.0, 0.6, span=2, per="epoch")
    run_fit(model, shape, [DropoutSchedule(schedule, include="drop_zero")], epochs)
    zero, other = model.get_layer("probe_drop_zero"), model.get_layer("probe_drop_other")
    # built with rate 0, selected by name: follows the schedule
    assert_follows(zero.read(), [schedule(t, e) for t, e in clock(epochs)], zero.units(shape))
    assert_follows(other.read(), [0.5] * 12, other.units(shape))  # not included: unchanged


def test_a_per_step_schedule_is_in_force_from_the_step_it_is_due():
    shape, epochs = (1024,), 3
    model = probed_model(shape, [keras.layers.Dropout(0.0, name="drop_zero"),
                                 keras.layers.Dropout(0.2, name="drop_other")], steps=12)
    schedule = Linear(0.0, 0.66, span=11, per="step")  # 0.06 more at every step
    run_fit(model, shape, [DropoutSchedule(schedule, layers="Dropout")], epochs)
    rates = [schedule(t, e) for t, e in clock(epochs)]
    for name in ("drop_zero", "drop_other"):  # selected by type: both follow
        probe = model.get_layer(f"probe_{name}")
        measured = probe.read()
        assert_follows(measured, rates, probe.units(shape))
        late = [0.0] + rates[:-1]  # the schedule one step late would be told apart
        assert any(abs(m - p) > tolerance(p, probe.units(shape)) for m, p in zip(measured, late))


@pytest.mark.parametrize("schedule", [
    EarlyDropout(0.4, cutoff=1, per="epoch"),        # Liu et al. 2023, early dropout
    LateDropout(0.4, cutoff=6, per="step"),          # ... late dropout
    ExponentialRamp(0.6, gamma=0.5, per="step"),     # Morerio et al. 2017, curriculum dropout
], ids=repr)
def test_the_papers_schedules_are_followed_inside_the_compiled_step(schedule):
    shape, epochs = (1024,), 2
    model = probed_model(shape, [keras.layers.Dropout(0.0, name="drop")], steps=8)
    run_fit(model, shape, [DropoutSchedule(schedule)], epochs)
    probe = model.get_layer("probe_drop")
    assert_follows(probe.read(), [schedule(t, e) for t, e in clock(epochs)], probe.units(shape))


@pytest.mark.parametrize("spatial,shape", [
    (keras.layers.SpatialDropout1D, (8, 256)),
    (keras.layers.SpatialDropout2D, (4, 2, 256)),
    (keras.layers.SpatialDropout3D, (2, 2, 2, 256)),
], ids=lambda v: getattr(v, "__name__", None))
def test_spatial_dropout_built_with_rate_zero_drops_whole_channels_at_the_scheduled_rate(
        spatial, shape):
    epochs = 2
    model = probed_model(shape, [spatial(0.0, name="spatial"),
                                 keras.layers.Dropout(0.0, name="plain")], steps=8)
    schedule = LateDropout(0.5, cutoff=1, per="epoch")
    run_fit(model, shape, [DropoutSchedule(schedule, layers="SpatialDropout?D")], epochs)
    probe = model.get_layer("probe_spatial")
    assert_follows(probe.read(), [0.0] * 4 + [0.5] * 4, probe.units(shape))  # per channel
    assert float(ops.convert_to_numpy(probe.mixed)) == 0.0  # a channel: all dropped or none
    plain = model.get_layer("probe_plain")
    assert plain.read() == [0.0] * 8  # another type: not selected


def test_a_selection_matching_no_layer_warns_at_fit_start_listing_the_layers():
    shape = (64,)
    model = probed_model(shape, [keras.layers.Dropout(0.25, name="drop")], steps=4)
    with pytest.warns(regplug.RegplugWarning, match=(
            r"DropoutSchedule: the selection \(include=\['encoder\*'\]\) matches none of the "
            r"model's dropout layers, so it changes nothing. Dropout layers found: 'drop' "
            r"\(Dropout, rate 0.25\).")):
        run_fit(model, shape, [DropoutSchedule(0.1, include="encoder*")], epochs=1)

"""Ties at ``min_delta`` are decided as Keras decides them: in float32.

Keras shifts the value by ``min_delta`` in float64 and compares in float32 (``ops.less`` /
``ops.greater`` on its TensorFlow, JAX and torch backends), so on a 0.1 grid ``0.4 - 0.1 >
0.3`` is no improvement there. These tests feed series on such grids to regplug's
EarlyStopping and to Keras' own callback and expect the same stop and restored epochs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug.plugins import EarlyStopping
from regplug.testing import NumpyLoop

keras = pytest.importorskip("keras")


class FakeKerasModel:
    """What keras.callbacks.EarlyStopping touches on a model."""

    def __init__(self) -> None:
        self.stop_training = False
        self.weights = [np.zeros(1)]
        self.metrics: list[object] = []

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.weights = [w.copy() for w in weights]


def keras_decision(values: list[float], **kwargs: object) -> tuple[int, int]:
    """(epochs run, epoch whose weights were restored) of keras.callbacks.EarlyStopping."""
    callback = keras.callbacks.EarlyStopping(restore_best_weights=True, **kwargs)
    model = FakeKerasModel()
    callback.set_model(model)
    callback.on_train_begin()
    ran = len(values)
    for epoch, value in enumerate(values):
        model.weights = [np.full(1, float(epoch))]
        callback.on_epoch_end(epoch, {"val_loss": value, "val_accuracy": value})
        if model.stop_training:
            ran = epoch + 1
            break
    callback.on_train_end()
    return ran, int(model.weights[0][0])


def regplug_decision(values: list[float], **kwargs: object) -> tuple[int, int]:
    monitor = str(kwargs.get("monitor", "val_loss"))
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [EarlyStopping(**kwargs)])  # type: ignore[arg-type]
    ran = len(values)
    for epoch, value in enumerate(values):
        loop.params["w"][...] = epoch
        if loop.epoch_end({monitor: value}):
            ran = epoch + 1
            break
    loop.close()
    return ran, int(loop.params["w"].item())


def test_a_float32_tie_at_min_delta_is_no_improvement_as_in_keras():
    # max mode: 0.4 - 0.1 > 0.3 holds in float64 but not in float32
    kwargs = dict(monitor="val_accuracy", mode="max", min_delta=0.1, patience=1)
    values = [0.3, 0.4, 0.2]  # in float64, epoch 1 would be the best, and the stop at 2
    assert keras_decision(values, **kwargs) == (2, 0)
    assert regplug_decision(values, **kwargs) == (2, 0)


grid_series = st.lists(st.integers(0, 10).map(lambda k: k / 10), min_size=2, max_size=12)
grid_kwargs = st.fixed_dictionaries({
    "min_delta": st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.05]),
    "patience": st.integers(0, 3),
    "monitor_mode": st.sampled_from([("val_loss", "min"), ("val_accuracy", "max")]),
}, optional={"baseline": st.integers(0, 10).map(lambda k: k / 10),
             "start_from_epoch": st.integers(0, 2)})


@settings(max_examples=300, deadline=None)
@given(grid_series, grid_kwargs)
def test_series_on_a_tenth_grid_stop_and_restore_where_keras_does(values, kwargs):
    kwargs["monitor"], kwargs["mode"] = kwargs.pop("monitor_mode")
    assert regplug_decision(values, **kwargs) == keras_decision(values, **kwargs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40).map(lambda k: 0.2 + k * 0.025), min_size=2, max_size=12),
       st.sampled_from([0.025, 0.05, 0.075]), st.integers(0, 2))
def test_series_on_a_finer_grid_with_grid_sized_deltas_agree_with_keras(values, min_delta,
                                                                        patience):
    kwargs = dict(min_delta=min_delta, patience=patience)
    assert regplug_decision(values, **kwargs) == keras_decision(values, **kwargs)

"""LayerMonitor on the NumPy reference loop: what each quantity measures, its keys, state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regplug.plugins import LayerMonitor
from regplug.plugins.layer_monitor import QUANTITIES, layer_stats, monitor_series
from regplug.testing import NumpyLoop


def test_each_quantity_per_parameter_after_one_step():
    w = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    loop = NumpyLoop({"fc.weight": w.copy(), "fc.bias": np.zeros(3)}, [LayerMonitor()], lr=0.1)
    grad = np.array([[0.0, 0.0], [1.0, -1.0], [0.0, 0.0]])  # units 0 and 2 get none
    loop.step({"fc.weight": grad, "fc.bias": np.ones(3)})
    loop.epoch_end({"loss": 1.0})
    h = loop.run.history
    after = w - 0.1 * grad
    assert h["weight_norm/fc.weight"] == [pytest.approx(np.linalg.norm(after))]
    assert h["grad_norm/fc.weight"] == [pytest.approx(math.sqrt(2.0))]
    assert h["update_ratio/fc.weight"] == [pytest.approx(0.1 * math.sqrt(2) / np.linalg.norm(w))]
    assert h["zeros/fc.weight"] == [pytest.approx(2 / 6)]
    assert h["dead_units/fc.weight"] == [pytest.approx(2 / 3)]
    assert not any(k.endswith("fc.bias") for k in h)  # weights only, as the penalties


def test_the_update_ratio_is_per_epoch_from_the_previous_epochs_end():
    loop = NumpyLoop({"fc.weight": np.ones((2, 2))}, [LayerMonitor()], lr=1.0)
    loop.step({"fc.weight": np.full((2, 2), 0.5)})
    loop.epoch_end({"loss": 1.0})
    loop.epoch_end({"loss": 1.0})  # nothing moved in the second epoch
    h = loop.run.history
    assert h["update_ratio/fc.weight"] == [pytest.approx(0.5), 0.0]
    assert h["dead_units/fc.weight"] == [0.0, 1.0]  # no unit moved: all count as dead
    assert len(h["grad_norm/fc.weight"]) == 1  # the second epoch had no step to measure


def test_every_n_epochs_and_the_selection():
    monitor = LayerMonitor(kinds="all", every=2)
    loop = NumpyLoop({"a.weight": np.ones((2, 2)), "a.bias": np.ones(2)}, [monitor])
    for _ in range(4):
        loop.step({"a.weight": np.ones((2, 2)), "a.bias": np.ones(2)})
        loop.epoch_end({"loss": 1.0})
    h = loop.run.history
    assert len(h["weight_norm/a.bias"]) == 2 and len(h["weight_norm/a.weight"]) == 2
    assert "dead_units/a.bias" not in h  # a vector has no units
    assert [r["epoch"] for r in monitor.records] == [0.0, 2.0]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="every"):
        LayerMonitor(every=0)
    with pytest.raises(ValueError, match="kinds"):
        LayerMonitor(kinds="weights")


def test_state_round_trip_and_series():
    monitor = LayerMonitor()
    loop = NumpyLoop({"fc.weight": np.ones((2, 2))}, [monitor])
    loop.step({"fc.weight": np.ones((2, 2))})
    loop.epoch_end({"loss": 1.0})
    again = LayerMonitor()
    again.load_state_dict(monitor.state_dict())
    assert again.records == monitor.records
    series = monitor_series(loop.run.history)
    assert list(series) == [q for q in QUANTITIES if q in series]
    assert series["weight_norm"] == {"fc.weight": loop.run.history["weight_norm/fc.weight"]}


def test_layer_stats_of_a_zero_start():
    s = layer_stats(np.zeros((2, 2)), np.zeros((2, 2)), 0)
    assert s["update_ratio"] == 0.0 and s["zeros"] == 1.0 and s["dead_units"] == 1.0
    assert layer_stats(np.zeros(2), np.ones(2), None)["update_ratio"] == math.inf

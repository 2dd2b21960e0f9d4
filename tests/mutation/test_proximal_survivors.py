"""Mutants of plugins/proximal.py that tests/plugins and tests/torch let live (issue 16, item
19): ProximalL1's default strength (0.01, as L1) and its documented search range
(docs/plugins/update-rules.md: ``l1`` over 1e-5 … 1e-1, log)."""

from __future__ import annotations

import numpy as np
import pytest

from regplug.plugins import ProximalL1
from regplug.testing import NumpyLoop


def test_the_default_strength_soft_thresholds_by_lr_times_0_01():
    loop = NumpyLoop({"w": np.array([[0.5, -0.5, 0.0005]])}, [ProximalL1()], lr=0.1)
    loop.step({"w": np.zeros((1, 3))})
    loop.close()
    np.testing.assert_allclose(loop.params["w"], [[0.499, -0.499, 0.0]], rtol=0, atol=1e-15)


def test_the_strength_is_searched_over_the_documented_log_range():
    assert {arg: r.to_config() for arg, r in ProximalL1.tunable.items()} == {
        "l1": {"low": 1e-5, "high": 1e-1, "log": True}}


@pytest.mark.parametrize("l1", [0.0, 0.3])
def test_the_threshold_is_lr_times_l1(l1):
    loop = NumpyLoop({"w": np.array([[1.0, -2.0]])}, [ProximalL1(l1)], lr=0.5)
    loop.step({"w": np.zeros((1, 2))})
    loop.close()
    np.testing.assert_allclose(loop.params["w"], [[1.0 - 0.5 * l1, -2.0 + 0.5 * l1]],
                               rtol=0, atol=1e-15)

"""Mutants of plugins/penalties.py that tests/plugins and tests/torch let live (issue 16,
item 19): the default strengths (Keras': 0.01 for L1 and L2, 0 for both parts of
ElasticNet) and the search ranges ``regplug tune`` uses for them, as
docs/plugins/penalties.md states them (``l2`` over 1e-6 … 1e-1, ``l1`` over 1e-6 … 1e-2, on a
log scale)."""

from __future__ import annotations

import numpy as np
import pytest

from regplug.plugins import L1, L2, ElasticNet
from regplug.testing import NumpyLoop

L2_RANGE = {"low": 1e-6, "high": 1e-1, "log": True}
L1_RANGE = {"low": 1e-6, "high": 1e-2, "log": True}


@pytest.mark.parametrize("plugin,expected", [
    (L2, {"l2": L2_RANGE}),
    (L1, {"l1": L1_RANGE}),
    (ElasticNet, {"l1": L1_RANGE, "l2": L2_RANGE}),
], ids=["L2", "L1", "ElasticNet"])
def test_the_strengths_are_searched_over_the_documented_log_ranges(plugin, expected):
    assert {arg: r.to_config() for arg, r in plugin.tunable.items()} == expected


@pytest.mark.parametrize("plugin,expected", [(L2, 0.01 * 4.0), (L1, 0.01 * 2.0),
                                             (ElasticNet, 0.0)], ids=["L2", "L1", "ElasticNet"])
def test_the_default_strengths_are_keras_defaults(plugin, expected):
    """w = [[2, 0]]: Σθ² = 4 and Σ|θ| = 2."""
    loop = NumpyLoop({"w": np.array([[2.0, 0.0]])}, [plugin()])
    assert loop.penalty() == pytest.approx(expected, rel=1e-12)
    loop.close()

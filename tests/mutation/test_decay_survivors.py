"""Mutants of plugins/decay.py that tests/plugins and tests/torch let live (issue 16, item
19): DecoupledWeightDecay's default (0.01, as ``torch.optim.AdamW``) and its search range
(``weight_decay`` over 1e-5 … 1, log)."""

from __future__ import annotations

import numpy as np

from regplug.plugins import DecoupledWeightDecay
from regplug.testing import NumpyLoop


def test_the_default_decay_is_adamws_0_01():
    loop = NumpyLoop({"w": np.ones((1, 2))}, [DecoupledWeightDecay()], lr=0.1)
    loop.step({"w": np.zeros((1, 2))})
    loop.close()
    np.testing.assert_allclose(loop.params["w"], [[1 - 0.1 * 0.01] * 2], rtol=0, atol=1e-15)


def test_the_decay_is_searched_on_a_log_scale_over_five_decades():
    assert {arg: r.to_config() for arg, r in DecoupledWeightDecay.tunable.items()} == {
        "weight_decay": {"low": 1e-5, "high": 1.0, "log": True}}

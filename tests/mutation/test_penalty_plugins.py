"""The penalty plugins' arguments and Penalty objects, checked one by one on the NumPy
reference: written to kill the survivors of a mutation run (mutmut) over plugins/penalties.py
(issue 16, item 19) — a dropped ``include``/``exclude``, a changed default, a nameless or
gradient-less Penalty all went unnoticed."""

from __future__ import annotations

import numpy as np
import pytest

from regplug.plugins import L1, L2, ElasticNet
from regplug.testing import NumpyLoop, numpy_run

PARAMS = {"enc.weight": np.array([[1.0, -2.0]]), "head.weight": np.array([[3.0, -4.0]])}
PLUGINS = {"l1": lambda **kw: L1(0.5, **kw), "l2": lambda **kw: L2(0.5, **kw),
           "elastic": lambda **kw: ElasticNet(l1=0.5, l2=0.25, **kw)}
# Each plugin's penalty on the enc and the head weight alone.
ENC = {"l1": 0.5 * 3, "l2": 0.5 * 5, "elastic": 0.5 * 3 + 0.25 * 5}
HEAD = {"l1": 0.5 * 7, "l2": 0.5 * 25, "elastic": 0.5 * 7 + 0.25 * 25}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_include_and_exclude_select_what_the_penalty_covers(name):
    make = PLUGINS[name]
    both = NumpyLoop(PARAMS, [make()]).penalty()
    only_head = NumpyLoop(PARAMS, [make(include="head.*")]).penalty()
    not_head = NumpyLoop(PARAMS, [make(exclude="head.*")]).penalty()
    assert both == pytest.approx(ENC[name] + HEAD[name])
    assert only_head == pytest.approx(HEAD[name])
    assert not_head == pytest.approx(ENC[name])


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_the_penalty_is_named_after_the_plugin_and_knows_its_gradient(name):
    plugin = PLUGINS[name]()
    run = numpy_run(PARAMS)
    plugin.on_train_begin(run)
    penalty = plugin.on_loss(run)
    assert penalty.name == f"{plugin.name}_penalty"
    assert penalty.add_grad is not None  # closed form: the fused path, never autograd
    assert float(penalty.value()) == pytest.approx(ENC[name] + HEAD[name])


def test_elastic_net_strengths_default_to_zero_each():
    assert NumpyLoop(PARAMS, [ElasticNet()]).penalty() == 0.0
    assert NumpyLoop(PARAMS, [ElasticNet(l2=0.25)]).penalty() == pytest.approx(0.25 * 30)
    assert NumpyLoop(PARAMS, [ElasticNet(l1=0.5)]).penalty() == pytest.approx(0.5 * 10)
    assert ElasticNet().config()["l1"] == ElasticNet(l1=0.0).config()["l1"]


def test_elastic_net_gradient_is_sign_plus_twice_theta():
    loop = NumpyLoop({"w": np.array([[2.0, -3.0]])}, [ElasticNet(l1=0.5, l2=0.25)], lr=1.0)
    loop.step({"w": np.zeros((1, 2))})
    # θ − lr·(l1·sign θ + 2·l2·θ)
    np.testing.assert_allclose(loop.params["w"], [[2.0 - (0.5 + 1.0), -3.0 - (-0.5 - 1.5)]])

"""Every built-in parameter plugin honours ``include``/``exclude`` and its documented default
strength, and the step window hands the hooks their documented arguments: written to kill the
survivors of a mutation run (mutmut) over plugins/ and regplug/window.py (issue 16, item 19)."""

from __future__ import annotations

import numpy as np
import pytest

import regplug
from regplug.plugins import L1, L2, DecoupledWeightDecay, ElasticNet, MaxNorm, ProximalL1
from regplug.testing import NumpyLoop, numpy_run

PARAMS = {"enc.weight": np.array([[1.0, -2.0]]), "head.weight": np.array([[3.0, -4.0]])}
CLASSES = [L1, L2, ElasticNet, DecoupledWeightDecay, ProximalL1, MaxNorm]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_include_and_exclude_reach_the_selection(cls):
    run = numpy_run(PARAMS)
    assert [p.name for p in run.params if cls(include="head.*").selection.matches(p)] == \
        ["head.weight"]
    assert [p.name for p in run.params if cls(exclude="head.*").selection.matches(p)] == \
        ["enc.weight"]


@pytest.mark.parametrize("cls", [DecoupledWeightDecay, ProximalL1, MaxNorm],
                         ids=lambda c: c.__name__)
def test_update_plugins_leave_what_they_exclude_alone(cls):
    loop = NumpyLoop(PARAMS, [cls(0.5, exclude="head.*")], lr=1.0)
    loop.step({k: np.zeros_like(v) for k, v in PARAMS.items()})
    np.testing.assert_array_equal(loop.params["head.weight"], PARAMS["head.weight"])
    assert not np.array_equal(loop.params["enc.weight"], PARAMS["enc.weight"])


@pytest.mark.parametrize("cls,arg,default", [
    (L1, "l1", 0.01), (L2, "l2", 0.01), (ElasticNet, "l1", 0.0), (ElasticNet, "l2", 0.0),
    (DecoupledWeightDecay, "weight_decay", 0.01), (ProximalL1, "l1", 0.01),
    (MaxNorm, "max_value", 2.0)])
def test_documented_default_strengths(cls, arg, default):
    assert cls().config()[arg] == cls(**{arg: default}).config()[arg]
    assert cls().config()[arg] != cls(**{arg: default * 2 + 1}).config()[arg]


class Recorder(regplug.Plugin):
    name = "recorder"

    def __init__(self) -> None:
        self.calls = []

    @regplug.hookimpl
    def on_loss(self, run, loss):
        self.calls.append(("loss", loss))

    @regplug.hookimpl
    def on_before_step(self, run, step):
        self.calls.append(("before_step", step, run.step))

    @regplug.hookimpl
    def on_step(self, run, step):
        self.calls.append(("step", step, run.step))


def test_the_window_hands_each_hook_its_documented_arguments():
    recorder = Recorder()
    loop = NumpyLoop(PARAMS, [recorder])
    for _ in range(2):
        loop.step({k: np.zeros_like(v) for k, v in PARAMS.items()})
    # on_loss gets the loss; on_before_step the step about to be done (run.step unchanged);
    # on_step the step just done (run.step already advanced).
    assert recorder.calls == [("loss", 0.0), ("before_step", 0, 0), ("step", 0, 1),
                              ("loss", 0.0), ("before_step", 1, 1), ("step", 1, 2)]


class Nameless:
    @regplug.hookimpl
    def on_loss(self, run, loss):
        return None


def test_an_update_without_a_loss_names_the_penalty_plugins():
    loop = NumpyLoop(PARAMS, [L2(0.1), Nameless()])
    with pytest.raises(regplug.UsageError, match=r"the penalties of Nameless, l2 would be "
                                                 r"missing"):
        loop.window.before_step()

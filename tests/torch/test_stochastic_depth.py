"""DropoutSchedule drives stochastic depth in a PyTorch loop: torchvision's
``StochasticDepth.p`` and timm's ``DropPath.drop_prob``, read inside the step at every batch
(stand-ins with the same names and attributes where the packages are missing)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _stochastic_depth import DropPath, ResidualNet, StochasticDepth
from torch import nn

from regplug import Linear
from regplug.adapters.torch import attach, discover_dropout
from regplug.plugins import DropoutSchedule

DEPTH = ["StochasticDepth", "DropPath"]


def _train(model: ResidualNet, plugins, epochs: int = 4, rows: int = 4000) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(rows, 4, generator=g), torch.randint(0, 2, (rows,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with attach(model, opt, plugins) as reg:
        for _ in range(epochs):
            opt.zero_grad()
            reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
            reg.epoch_end({})


def test_the_rate_is_read_inside_the_step_epoch_by_epoch():
    model = ResidualNet()
    _train(model, [DropoutSchedule(Linear(0.0, 0.6, span=3, per="epoch"), layers=DEPTH)])
    expected = [0.0, 0.2, 0.4, 0.6]
    assert [r[0] for r in model.read] == pytest.approx(expected)
    assert [r[2] for r in model.read] == pytest.approx(expected)
    for (_, sd_dropped, _, dp_dropped), p in zip(model.read, expected):
        assert sd_dropped == pytest.approx(p, abs=0.03)  # rows really dropped at that rate
        assert dp_dropped == pytest.approx(p, abs=0.03)
    assert model.sd.p == 0.0 and model.drop_path.drop_prob == 0.0  # given back at the end


def test_per_step_schedule_and_one_family_by_name():
    model = ResidualNet(rate=0.1)
    _train(model, [DropoutSchedule(Linear(0.0, 0.3, span=3, per="step"),
                                   layers="DropPath")], epochs=4)
    assert [r[2] for r in model.read] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [r[0] for r in model.read] == [0.1] * 4  # StochasticDepth not named: untouched


def test_a_plain_dropout_schedule_leaves_stochastic_depth_alone():
    model = ResidualNet(rate=0.25)
    model.drop = nn.Dropout(0.0)
    with pytest.warns(Warning, match=r"'sd' \(StochasticDepth, rate 0.25\)"):
        _train(model, [DropoutSchedule(0.5, layers="AlphaDropout")], epochs=1)
    _train(model, [DropoutSchedule(0.5)], epochs=2)
    assert {r[0] for r in model.read} == {0.25} and model.drop.p == 0.0


def test_subclasses_are_found_under_their_family_and_odd_attributes_are_not():
    class MyDropPath(DropPath):
        pass

    class NotARate(StochasticDepth):
        pass

    model = nn.Sequential(MyDropPath(0.1), NotARate(0.2))
    model[1].p = torch.tensor(0.2)  # not a plain number: not rescheduled
    assert [(h.name, h.layer_type, h.rate) for h in discover_dropout(model)] == [
        ("0", "DropPath", pytest.approx(0.1))]


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision is not installed (its PyPI wheel needs CUDA torch)")
def test_torchvision_stochastic_depth():
    from torchvision.ops import StochasticDepth as Real

    model = nn.Sequential(nn.Linear(2, 2), Real(0.1, "row"))
    handles = discover_dropout(model)
    assert [(h.layer_type, h.rate) for h in handles] == [("StochasticDepth", pytest.approx(0.1))]
    handles[0].rate = 0.3
    assert model[1].p == 0.3


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_drop_path():
    from timm.layers import DropPath as Real

    model = nn.Sequential(nn.Linear(2, 2), Real(0.1))
    handles = discover_dropout(model)
    assert [(h.layer_type, h.rate) for h in handles] == [("DropPath", pytest.approx(0.1))]
    handles[0].rate = 0.3
    assert model[1].drop_prob == 0.3

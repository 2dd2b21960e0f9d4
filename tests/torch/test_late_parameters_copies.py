"""Plugins that copy parameters when training begins (L2SP's θ₀, EMA's and SWA's averages)
say so when a parameter group joins the optimizer later, instead of leaving the newcomers
out in silence (issue 16 item 5 extends parameter groups added after attach to every plugin)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regplug import RegplugWarning
from regplug.adapters.torch import attach
from regplug.plugins import EMA, L2SP, SWA


def _train(plugin: object, *, late: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("layers", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 2))
    first = model.layers.parameters() if late else model.parameters()
    opt = torch.optim.SGD(first, lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with attach(model, opt, [plugin]) as reg:
        for epoch in range(2):
            for step in range(2):
                if late and epoch == 0 and step == 1:
                    opt.add_param_group({"params": model.head.parameters()})
                opt.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
            reg.epoch_end({"loss": 1.0})
    return model


@pytest.mark.parametrize("make, fragment", [
    (lambda: L2SP(alpha=0.1), r"^L2SP: 1 parameter\(s\) joined the optimizer after training "
                              r"began .* e\.g\. 'head\.weight'\); θ₀ was taken at the start"),
    (lambda: L2SP(alpha=0.1, decoupled=True), r"^L2SP: 1 parameter\(s\) joined"),
    (lambda: EMA(0.9), r"^EMA: 2 parameter\(s\) joined the optimizer after training began"),
    (lambda: SWA(0), r"^SWA: 2 parameter\(s\) joined the optimizer after training began"),
])
def test_a_parameter_group_added_later_is_named_once_with_the_fix(make, fragment):
    with pytest.warns(RegplugWarning, match=fragment) as caught:
        _train(make(), late=True)
    joined = [w for w in caught if "joined the optimizer" in str(w.message)]
    assert len(joined) == 1
    assert "Give every parameter to the optimizer up front" in str(joined[0].message)


@pytest.mark.parametrize("make", [lambda: L2SP(alpha=0.1), lambda: EMA(0.9), lambda: SWA(0)])
def test_no_warning_when_the_optimizer_holds_everything_from_the_start(make, recwarn):
    _train(make(), late=False)
    assert not [w for w in recwarn if "joined the optimizer" in str(w.message)]

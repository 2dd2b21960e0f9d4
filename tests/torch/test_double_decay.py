"""DecoupledWeightDecay on top of the optimizer's own weight_decay decays the weights twice:
attach warns, once, naming the plugin and the optimizer's weight_decay (issue 18)."""

from __future__ import annotations

import warnings

import pytest
import torch

from regplug import RegplugWarning
from regplug.adapters.torch import attach
from regplug.plugins import L2, DecoupledWeightDecay


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("make, shown", [
    (lambda p: torch.optim.AdamW(p), "AdamW decays too (its weight_decay=0.01)"),
    (lambda p: torch.optim.AdamW(p, weight_decay=0.1), "AdamW decays too (its weight_decay=0.1)"),
    (lambda p: torch.optim.Adam(p, weight_decay=1e-4), "Adam decays too (its weight_decay=0.0001)"),
    (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-3),
     "SGD decays too (its weight_decay=0.001)"),
])
def test_an_optimizer_that_decays_too_gets_one_warning_at_attach(make, shown):
    model = _model()
    optimizer = make(model.parameters())
    with pytest.warns(RegplugWarning) as caught:
        with attach(model, optimizer, [DecoupledWeightDecay(0.01), L2(1e-4)]):
            pass
    messages = [str(w.message) for w in caught if "decay twice" in str(w.message)]
    assert messages == [f"attach: DecoupledWeightDecay(weight_decay=0.01) decays 2 parameters "
                        f"that {shown}: the weights decay twice. Set the optimizer's "
                        "weight_decay=0 (Adam + DecoupledWeightDecay is AdamW with undecayed "
                        "biases), or drop the plugin"]


def test_no_warning_where_the_optimizer_does_not_decay_the_plugin_s_parameters():
    model = _model()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizers = [
        torch.optim.Adam(model.parameters()),
        torch.optim.AdamW(model.parameters(), weight_decay=0.0),
        # the plugin decays the weights (its default selection), AdamW the biases only
        torch.optim.AdamW([{"params": weights, "weight_decay": 0.0},
                           {"params": biases, "weight_decay": 0.1}]),
    ]
    for optimizer in optimizers:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RegplugWarning)
            with attach(model, optimizer, [DecoupledWeightDecay(0.01)]):
                pass
    with warnings.catch_warnings():  # the optimizer decays, but no plugin does
        warnings.simplefilter("error", RegplugWarning)
        with attach(model, torch.optim.AdamW(model.parameters()), [L2(1e-4)]):
            pass


def test_the_warning_counts_only_the_parameters_both_decay():
    model = _model()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.AdamW([{"params": weights[:1], "weight_decay": 0.05},
                                   {"params": weights[1:] + biases, "weight_decay": 0.0}])
    with pytest.warns(RegplugWarning, match=r"decays 1 parameter that AdamW decays too \(its "
                                            r"weight_decay=0.05\)"):
        with attach(model, optimizer, [DecoupledWeightDecay(0.01, kinds="all")]):
            pass

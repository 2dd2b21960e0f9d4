"""LayerMonitor in Lightning: the same object, its keys in the run's history each epoch, the
numbers of the module's weights (snapshots at each epoch's end)."""

from __future__ import annotations

import pytest
import torch
from _lightning_models import Tiny, fit

from regplug.adapters.lightning import Regularize
from regplug.plugins import LayerMonitor


def test_the_history_holds_each_quantity_of_each_weight():
    model, reg = Tiny(), Regularize([LayerMonitor()])
    start = model.net[0].weight.detach().clone()
    fit(model, epochs=2, callbacks=[reg], validate=True)
    h = reg.history
    for quantity in ("weight_norm", "grad_norm", "update_ratio", "zeros", "dead_units"):
        for name in ("net.0.weight", "net.2.weight"):
            assert len(h[f"{quantity}/{name}"]) == 2, (quantity, name)
    ends = [s["net.0.weight"] for s in model.snapshots]
    assert h["weight_norm/net.0.weight"] == pytest.approx([float(e.norm()) for e in ends],
                                                          rel=1e-5)
    ratio = float((ends[0] - start).norm() / start.norm())
    assert h["update_ratio/net.0.weight"][0] == pytest.approx(ratio, rel=1e-4)
    assert all(v > 0 for v in h["grad_norm/net.0.weight"])
    assert torch.is_tensor(model.net[0].weight)

"""LayerMonitor in a plain PyTorch loop: its numbers against the model's own tensors, dead
ReLU units seen from the weights, no host read on the per-step path."""

from __future__ import annotations

import itertools

import pytest
import torch
from _torch_models import batches, make_model
from torch import nn

from regplug.adapters.torch import _compat, attach
from regplug.plugins import LayerMonitor


def _train(model, monitor, epochs=2, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    data = batches(3)
    grads, starts = [], [model[0].weight.detach().clone()]
    with attach(model, opt, [monitor]) as reg:
        for _ in range(epochs):
            for i, (x, y) in enumerate(data):
                opt.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
                if i == 0:
                    grads.append(model[0].weight.grad.norm().item())
                opt.step()
            reg.epoch_end({"loss": 1.0})
            starts.append(model[0].weight.detach().clone())
    return reg, grads, starts


def test_the_numbers_are_the_models():
    model = make_model()
    reg, grads, starts = _train(model, LayerMonitor())
    h = reg.history
    assert h["grad_norm/0.weight"] == pytest.approx(grads, rel=1e-5)
    assert h["weight_norm/0.weight"] == pytest.approx(
        [float(s.norm()) for s in starts[1:]], rel=1e-5)
    ratios = [float((b - a).norm() / a.norm()) for a, b in itertools.pairwise(starts)]
    assert h["update_ratio/0.weight"] == pytest.approx(ratios, rel=1e-4)
    assert set(h) >= {f"{q}/{n}" for q in ("zeros", "dead_units")
                      for n in ("0.weight", "2.weight", "4.weight")}


def test_dead_relu_units_are_counted():
    model = make_model()
    with torch.no_grad():
        model[0].bias[:8] = -100.0  # half of the first layer's units are 0 on every input
    reg, _, _ = _train(model, LayerMonitor())
    assert reg.history["dead_units/0.weight"] == [0.5, 0.5]
    assert reg.history["dead_units/4.weight"] == [0.0, 0.0]


def test_no_host_sync_on_the_per_step_path(monkeypatch):
    model = make_model()
    monitor = LayerMonitor()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [monitor]) as reg:
        read = []
        monkeypatch.setattr(torch.Tensor, "item", lambda self: read.append(1) or 0.0)
        for x, y in batches(3):
            opt.zero_grad()
            reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
        assert read == []
        monkeypatch.undo()
        reg.epoch_end({"loss": 1.0})
    assert len(reg.history["grad_norm/0.weight"]) == 1


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)], ids=["momentum", "adamw"])
def test_units_that_die_mid_training_are_counted_the_epoch_they_die(make_opt):
    # momentum (and Adam's moments) keep moving a dead unit's weights for epochs, and
    # decoupled weight decay moves them forever: the weights alone saw none of these
    model = make_model()
    opt = make_opt(model.parameters())
    with attach(model, opt, [LayerMonitor()]) as reg:
        for epoch in range(3):
            if epoch == 1:
                with torch.no_grad():
                    model[0].bias[:8] = -100.0  # half of the first layer dies now
            for x, y in batches(3):
                opt.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
            reg.epoch_end({"loss": 1.0})
    assert reg.history["dead_units/0.weight"] == [0.0, 0.5, 0.5]


def test_the_monitor_leaves_the_models_forward_passes_unhooked_and_measures_every_nth_epoch():
    """It arms itself at each epoch's end for the next one, not in on_epoch_begin: a plugin
    acting there makes the adapter hook every forward pass (a slower module call, in
    evaluation too)."""
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = LayerMonitor(every=2)
    with attach(model, opt, [monitor]) as reg:
        assert not _compat.has_forward_hooks(model)  # the one place private torch API is read
        for _ in range(4):
            for x, y in batches(2):
                opt.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
            reg.epoch_end({"loss": 1.0})
    assert [r["epoch"] for r in monitor.records] == [0.0, 2.0]
    assert all(any(k.startswith("grad_norm/") for k in r) for r in monitor.records)

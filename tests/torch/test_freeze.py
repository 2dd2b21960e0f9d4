"""Freeze in a plain PyTorch loop: a real freeze (no gradient, optimizer and its state untouched),
unfreezing exactly as by hand, gradual unfreezing from the top, resume, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import DecoupledWeightDecay, Freeze


class Stack(nn.Module):
    """embed -> layers.0 -> layers.1 -> head: the names regplug.depth orders."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.embed(x))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def _model() -> Stack:
    torch.manual_seed(0)
    return Stack()


OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
}


def _epochs(model: nn.Module, opt: torch.optim.Optimizer, epochs: int, reg=None,
            on_epoch=None, batches: int = 4):
    x, y = _data()
    seen = []
    for epoch in range(epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        for b in range(batches):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[b * 8:(b + 1) * 8]), y[b * 8:(b + 1) * 8])
            if reg is not None:
                loss = reg.loss(loss)
            loss.backward()
            seen.append({n for n, p in model.named_parameters() if p.grad is None})
            opt.step()
        if reg is not None:
            reg.epoch_end({})
    return seen


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_frozen_bit_identical_then_exactly_as_unfrozen_by_hand(name):
    make = OPTIMIZERS[name]
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make(model.parameters())
    frozen_names = {"embed.weight", "embed.bias", "layers.0.weight", "layers.0.bias"}
    snapshots = []
    with attach(model, opt, [Freeze(2, include=["embed.*", "layers.0.*"])]) as reg:
        seen = _epochs(model, opt, 4, reg, on_epoch=lambda e: snapshots.append(
            {n: p.detach().clone() for n, p in model.named_parameters()}))
    # epochs 0-1: frozen weights bit for bit as they started, and never given a gradient
    for epoch in (1, 2):
        for n in frozen_names:
            assert torch.equal(snapshots[epoch][n], start[n]), (epoch, n)
    assert all(s == frozen_names for s in seen[:8])
    assert all(not s for s in seen[8:])
    assert not torch.equal(snapshots[2]["head.weight"], start["head.weight"])

    # the reference: the same parameters made trainable by hand at epoch 2
    ref = _model()
    ref_opt = make(ref.parameters())
    frozen = [p for n, p in ref.named_parameters() if n in frozen_names]

    def by_hand(epoch: int) -> None:
        for p in frozen:
            p.requires_grad_(epoch >= 2)

    _epochs(ref, ref_opt, 4, on_epoch=by_hand)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    # optimizer state: created when a parameter first had a gradient (torch's lazy state)
    if name == "adamw":  # its step counts only the updates the parameter took part in
        assert int(opt.state[model.embed.weight]["step"]) == 8
        assert int(opt.state[model.head.weight]["step"]) == 16
    assert all(p.requires_grad for p in model.parameters())  # the end unfreezes


def test_the_backward_pass_skips_frozen_parameters():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [Freeze(None, exclude="head.*")]) as reg:
        x, y = _data()
        out = model(x)
        assert not model.embed.weight.requires_grad
        loss = reg.loss(nn.functional.cross_entropy(out, y))
        loss.backward()
        assert model.embed.weight.grad is None and model.layers[1].bias.grad is None
        assert model.head.weight.grad is not None
        opt.step()
    assert model.embed.weight.requires_grad  # given back at the end


def test_other_plugins_leave_frozen_parameters_alone():
    model = _model()
    before = model.embed.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [DecoupledWeightDecay(0.5), Freeze(1, include="embed.*")]) as reg:
        _epochs(model, opt, 1, reg)
        assert torch.equal(model.embed.weight, before)
        _epochs(model, opt, 1, reg)
    assert not torch.equal(model.embed.weight, before)


def _frozen_now(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_gradual_unfreezing_one_block_per_epoch_from_the_top():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sets = []
    with attach(model, opt, [Freeze(1, gradual=True, exclude="head.*")]) as reg:
        x, y = _data()
        for _ in range(5):
            opt.zero_grad()
            loss = reg.loss(nn.functional.cross_entropy(model(x), y))
            sets.append(_frozen_now(model))
            loss.backward()
            opt.step()
            reg.epoch_end({})
    blocks = [{"embed.weight", "embed.bias"}, {"layers.0.weight", "layers.0.bias"},
              {"layers.1.weight", "layers.1.bias"}]
    assert sets == [blocks[0] | blocks[1] | blocks[2], blocks[0] | blocks[1], blocks[0],
                    set(), set()]


def test_resume_in_the_middle_of_a_gradual_unfreeze_gives_the_same_frozen_set():
    x, y = _data()

    def step(model, opt, reg):
        opt.zero_grad()
        loss = reg.loss(nn.functional.cross_entropy(model(x), y))
        frozen = _frozen_now(model)
        loss.backward()
        opt.step()
        reg.epoch_end({})
        return frozen

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with attach(model, opt, [Freeze(1, gradual=True, exclude="head.*")]) as reg:
        step(model, opt, reg)
        step(model, opt, reg)
        state, weights = reg.state_dict(), model.state_dict()
        expected = step(model, opt, reg)
    resumed = _model()
    resumed.load_state_dict(weights)
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05)
    with attach(resumed, opt2, [Freeze(1, gradual=True, exclude="head.*")]) as reg2:
        reg2.load_state_dict(state)
        assert step(resumed, opt2, reg2) == expected == {"embed.weight", "embed.bias"}
    other = _model()
    with pytest.raises(ValueError, match="configured differently"):
        with attach(other, torch.optim.SGD(other.parameters(), lr=0.1),
                    [Freeze(2, exclude="head.*")]) as reg3:
            reg3.load_state_dict(state)


def test_a_pattern_that_matches_nothing_is_refused_before_any_change():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"Freeze: argument 'include' \('encoder\.\*'\)"):
        attach(model, opt, [Freeze(2, include=["embed.*", "encoder.*"])])
    assert all(p.requires_grad for p in model.parameters())


def test_parameters_the_optimizer_does_not_hold_are_refused_with_the_fix():
    model = _model()
    model.embed.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError) as caught:
        attach(model, opt, [Freeze(2, include="embed.*")])
    message = str(caught.value)
    assert "optimizer does not hold" in message and "'embed.weight'" in message
    assert "give them to the optimizer up front" in message and "\n" not in message


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "'epochs' must be an integer >= 0"),
    ({"epochs": 1.5}, "'epochs' must be an integer"),
    ({"epochs": None, "gradual": True}, "'epochs' must be a number with gradual=True"),
    ({"epochs": 1, "kinds": "weights"}, "'kinds' must be 'all' or"),
    ({"epochs": 1, "depth": "layers.*"}, "'depth' must be a list"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Freeze(**kwargs)


def test_an_unresolvable_depth_is_a_named_error():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.middle = nn.Linear(2, 2)
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    model = Odd()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Freeze: argument 'depth'"):
        attach(model, opt, [Freeze(1, gradual=True)])
    # explicit patterns resolve it
    with attach(model, opt, [Freeze(0, gradual=True,
                                    depth=["layers.*", "middle.*", "blocks.*"])]) as reg:
        assert reg.manager.plugins[0].frozen() == ["layers.0.weight", "layers.0.bias",
                                                   "layers.1.weight", "layers.1.bias",
                                                   "middle.weight", "middle.bias"]

"""LayerwiseLR in a PyTorch loop equals per-layer parameter groups at lr·γ^(L−d) built by hand.

The reference never asks the plugin: its groups come from the model's structure (embedding
at depth 0, block i at i+1, final norm and head at the top), so a wrong depth rule fails here.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from regplug.adapters.torch import attach
from regplug.depth import DepthError
from regplug.plugins import DecoupledWeightDecay, LayerwiseLR, MaxNorm

STEPS = 100
BLOCKS = 4
GAMMA = 0.7
criterion = nn.CrossEntropyLoss()


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(self.norm(x)))


class Stack(nn.Module):
    """Embedding, numbered blocks (``layers.N``), a final norm and a head."""

    def __init__(self, seed: int = 0, d: int = 12, vocab: int = 20, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(BLOCKS))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(1)
        for block in self.layers:
            x = block(x)
        return self.head(self.norm(x))


def data(n: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 20, (16, 5), generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def groups_by_hand(model: Stack, lr: float, gamma: float = GAMMA) -> list[dict]:
    top = BLOCKS + 1
    groups = [{"params": list(model.embed.parameters()), "lr": lr * gamma ** top}]
    groups += [{"params": list(block.parameters()), "lr": lr * gamma ** (top - (i + 1))}
               for i, block in enumerate(model.layers)]
    groups.append({"params": [*model.norm.parameters(), *model.head.parameters()], "lr": lr})
    return groups


def train(model, opt, batches, plugins=(), scheduler=None):
    with attach(model, opt, list(plugins)) as reg:
        for x, y in batches:
            opt.zero_grad()
            reg.loss(criterion(model(x), y)).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
    return model


def assert_close(a: nn.Module, b: nn.Module, rtol: float, atol: float) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


OPTIMIZERS = {
    "SGD": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "SGD-momentum-wd": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=1e-2),
    "SGD-nesterov-wd": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=True,
                                                      weight_decay=1e-2, dampening=0.0),
    "Adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    "Adam-coupled-wd": lambda ps, lr: torch.optim.Adam(ps, lr=lr, weight_decay=1e-2),
    "AdamW": lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.05),
    "AdamW-foreach-off": lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.05,
                                                          foreach=False),
    "RMSprop-momentum": lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, momentum=0.5),
    "Adagrad": lambda ps, lr: torch.optim.Adagrad(ps, lr=lr, lr_decay=1e-3),
}
LR = {"SGD": 0.1, "SGD-momentum-wd": 0.05, "SGD-nesterov-wd": 0.05, "Adam": 1e-3,
      "Adam-coupled-wd": 1e-3, "AdamW": 1e-3, "AdamW-foreach-off": 1e-3,
      "RMSprop-momentum": 1e-3, "Adagrad": 0.05}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_equals_per_layer_param_groups_over_100_steps(name, dtype):
    make, lr, batches = OPTIMIZERS[name], LR[name], data()
    ours, theirs = Stack().to(dtype), Stack().to(dtype)
    train(ours, make(ours.parameters(), lr), batches, [LayerwiseLR(GAMMA)])
    train(theirs, make(groups_by_hand(theirs, lr), lr), batches)
    if dtype == torch.float64:  # the same numbers up to rounding: ~1e-15 measured
        assert_close(ours, theirs, rtol=1e-11, atol=1e-13)
        return
    assert_close(ours, theirs, rtol=1e-4, atol=3e-5)  # float32 rounding over 100 steps
    # and the scaling mattered: plain fine-tuning lands elsewhere
    plain = train(Stack(), make(Stack().parameters(), lr), batches)
    assert not torch.allclose(plain.embed.weight, ours.embed.weight, atol=1e-4)


def test_with_a_learning_rate_schedule_too():
    batches = data()
    ours, theirs = Stack(), Stack()
    opt = torch.optim.AdamW(ours.parameters(), lr=2e-3, weight_decay=0.05)
    train(ours, opt, batches, [LayerwiseLR(GAMMA)],
          scheduler=torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=STEPS))
    opt2 = torch.optim.AdamW(groups_by_hand(theirs, 2e-3), lr=2e-3, weight_decay=0.05)
    max_lrs = [g["lr"] for g in opt2.param_groups]
    train(theirs, opt2, batches,
          scheduler=torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=max_lrs, total_steps=STEPS))
    assert_close(ours, theirs, rtol=1e-4, atol=3e-5)


def test_adam_plus_decoupled_weight_decay_listed_first_equals_per_layer_adamw():
    # LayerwiseLR copies the weights before any other plugin acts, so the decay is part of
    # the update it scales: lr·γ^(L−d)·wd per layer, as AdamW's groups do.
    batches = data()
    ours, theirs = Stack(), Stack()
    train(ours, torch.optim.Adam(ours.parameters(), lr=1e-3), batches,
          [DecoupledWeightDecay(0.1, kinds="all"), LayerwiseLR(GAMMA)])
    train(theirs, torch.optim.AdamW(groups_by_hand(theirs, 1e-3), weight_decay=0.1), batches)
    assert_close(ours, theirs, rtol=1e-4, atol=3e-5)


def test_projection_plugins_act_on_the_scaled_update():
    # MaxNorm listed before LayerwiseLR still projects after the scaling: = groups + MaxNorm
    batches = data(30)
    ours, theirs = Stack(), Stack()
    train(ours, torch.optim.SGD(ours.parameters(), lr=0.5), batches,
          [MaxNorm(0.9), LayerwiseLR(GAMMA)])
    train(theirs, torch.optim.SGD(groups_by_hand(theirs, 0.5), lr=0.5), batches, [MaxNorm(0.9)])
    assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_not_exact_where_the_update_is_not_linear_in_the_learning_rate():
    # Documented: ASGD's step size lr / (1 + λ·lr·t)^α is not proportional to lr.
    batches = data(50)
    ours, theirs = Stack(), Stack()
    train(ours, torch.optim.ASGD(ours.parameters(), lr=0.1, lambd=1.0), batches,
          [LayerwiseLR(GAMMA)])
    train(theirs, torch.optim.ASGD(groups_by_hand(theirs, 0.1), lr=0.1, lambd=1.0), batches)
    gap = (ours.embed.weight - theirs.embed.weight).abs().max().item()
    assert gap > 1e-3  # far beyond float noise (the exact cases agree to ~1e-7)


def test_frozen_and_gradient_less_parameters_are_left_alone_bit_for_bit():
    model = Stack()
    model.layers[0].fc.weight.requires_grad_(False)
    unused = nn.Parameter(torch.ones(3))
    model.layers[1].register_parameter("unused", unused)
    frozen = model.layers[0].fc.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plugin = LayerwiseLR(GAMMA)
    train(model, opt, data(5), [plugin])
    assert torch.equal(model.layers[0].fc.weight, frozen)
    assert torch.equal(unused, torch.ones(3))
    assert "layers.1.unused" in plugin.factors  # selected, but never scaled


def test_top_parameters_are_not_copied():
    model = Stack()
    plugin = LayerwiseLR(GAMMA)
    with attach(model, torch.optim.SGD(model.parameters(), lr=0.1), [plugin]):
        assert not any(n.startswith(("head.", "norm.")) for n in plugin.factors)
        assert plugin.factors["embed.weight"] == pytest.approx(GAMMA ** (BLOCKS + 1))
        assert len(plugin._plan.before) == len(plugin.factors)


def test_unresolvable_name_is_refused_at_attach_before_any_change():
    bad = nn.Module()
    bad.layers = nn.ModuleList([nn.Linear(3, 3)])
    bad.bridge = nn.Linear(3, 3)  # in no block, between two stacks of blocks
    bad.decoder = nn.ModuleDict({"layers": nn.ModuleList([nn.Linear(3, 3)])})
    before = {k: v.clone() for k, v in bad.state_dict().items()}
    opt = torch.optim.SGD(bad.parameters(), lr=0.1)
    with pytest.raises(DepthError, match=r"^LayerwiseLR: argument 'layers' is not given and "
                                         r"parameter 'bridge.weight' has no depth"):
        attach(bad, opt, [LayerwiseLR(0.5)])
    assert all(torch.equal(v, before[k]) for k, v in bad.state_dict().items())
    # with patterns, bottom to top, it trains
    plugin = LayerwiseLR(0.5, layers=["layers.*", "bridge.*", "decoder.*"])
    with attach(bad, opt, [plugin]):
        assert plugin.factors == {"layers.0.weight": 0.25, "layers.0.bias": 0.25,
                                  "bridge.weight": 0.5, "bridge.bias": 0.5}


def test_resume_from_a_checkpoint_equals_training_straight_through():
    batches = data(40)
    straight = Stack()
    train(straight, torch.optim.AdamW(straight.parameters(), lr=1e-3), batches,
          [LayerwiseLR(GAMMA)])
    first = Stack()
    opt = torch.optim.AdamW(first.parameters(), lr=1e-3)
    with attach(first, opt, [LayerwiseLR(GAMMA)]) as reg:
        for x, y in batches[:20]:
            opt.zero_grad()
            reg.loss(criterion(first(x), y)).backward()
            opt.step()
        buffer = io.BytesIO()
        torch.save({"model": first.state_dict(), "opt": opt.state_dict(),
                    "reg": reg.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    second = Stack(seed=5)
    second.load_state_dict(checkpoint["model"])
    opt2 = torch.optim.AdamW(second.parameters(), lr=1e-3)
    opt2.load_state_dict(checkpoint["opt"])
    with attach(second, opt2, [LayerwiseLR(GAMMA)]) as reg2:
        reg2.load_state_dict(checkpoint["reg"])
        for x, y in batches[20:]:
            opt2.zero_grad()
            reg2.loss(criterion(second(x), y)).backward()
            opt2.step()
    for (name, a), b in zip(straight.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_parameter_group_added_later_is_scaled_from_its_first_step():
    # progressive unfreezing: the embedding joins the optimizer after 10 steps
    batches = data(30)
    ours, theirs = Stack(), Stack()
    for m in (ours, theirs):
        m.embed.weight.requires_grad_(False)
    body = [p for n, p in ours.named_parameters() if not n.startswith("embed.")]
    opt = torch.optim.SGD(body, lr=0.1, momentum=0.9)
    ref_groups = groups_by_hand(theirs, 0.1)
    opt2 = torch.optim.SGD(ref_groups[1:], lr=0.1, momentum=0.9)
    with attach(ours, opt, [LayerwiseLR(GAMMA)]) as reg:
        for i, (x, y) in enumerate(batches):
            if i == 10:
                ours.embed.weight.requires_grad_(True)
                opt.add_param_group({"params": [ours.embed.weight]})
                theirs.embed.weight.requires_grad_(True)
                opt2.add_param_group(ref_groups[0])
            opt.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            opt.step()
            opt2.zero_grad()
            criterion(theirs(x), y).backward()
            opt2.step()
    assert_close(ours, theirs, rtol=1e-4, atol=3e-5)
    assert not torch.equal(ours.embed.weight, Stack().embed.weight)


def test_copy_of_the_model_gets_its_own_plan():
    a = Stack()
    b = copy.deepcopy(a)
    plugin = LayerwiseLR(GAMMA)
    train(a, torch.optim.SGD(a.parameters(), lr=0.1), data(3), [plugin])
    train(b, torch.optim.SGD(b.parameters(), lr=0.1), data(3), [plugin])
    assert_close(a, b, rtol=0, atol=0)


def test_scale_update_op_matches_the_numpy_reference_and_skips_what_torch_optim_skips():
    import numpy as np

    from regplug.adapters.torch.ops import TorchOps
    from regplug.numpy_ops import NumpyOps
    from regplug.run import ParamHandle

    torch.manual_seed(0)
    tensors = [nn.Parameter(torch.randn(3, 2)) for _ in range(4)]
    tensors[2].requires_grad_(False)  # frozen
    for i, t in enumerate(tensors):
        t.grad = None if i == 3 else torch.ones_like(t)  # tensors[3]: no gradient this step
    handles = [ParamHandle(f"p{i}", "weight", t, "Linear", 0, tuple(t.shape))
               for i, t in enumerate(tensors)]
    ops = TorchOps()
    before = ops.clone(handles)
    with torch.no_grad():
        for t in tensors:
            t.sub_(0.5)  # "the update"
    after = [t.detach().clone() for t in tensors]
    factors = [0.25, 0.5, 0.5, 0.25]
    ops.in_update = True
    ops.scale_update_(handles, before, factors)
    np_ops = NumpyOps()
    arrays = [a.numpy().astype(np.float64) for a in after]
    np_handles = [ParamHandle(h.name, "weight", a, "numpy", 0, a.shape)
                  for h, a in zip(handles, arrays)]
    np_ops.grads = {"p0": np.ones((3, 2)), "p1": np.ones((3, 2))}
    np_ops.scale_update_(np_handles, [b.numpy().astype(np.float64) for b in before], factors)
    for i in (0, 1):
        np.testing.assert_allclose(tensors[i].detach().numpy(), arrays[i], rtol=1e-6)
        torch.testing.assert_close(tensors[i].detach(), before[i] - 0.5 * factors[i])
    assert torch.equal(tensors[2].detach(), after[2])  # frozen: untouched
    assert torch.equal(tensors[3].detach(), after[3])  # no gradient: untouched
    with pytest.raises(ValueError, match="scale_update_ got 3 copies for 4 parameters"):
        ops.scale_update_(handles, before[:3], factors)


def test_beside_freeze_frozen_weights_stay_and_then_train_at_their_layer_rate():
    from regplug.plugins import Freeze

    batches = data(20)
    ours, theirs = Stack(), Stack()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    opt2 = torch.optim.AdamW(groups_by_hand(theirs, 1e-3), lr=1e-3)
    start = ours.embed.weight.detach().clone()
    with attach(ours, opt, [Freeze(1, include="embed.*"), LayerwiseLR(GAMMA)]) as reg:
        for epoch in range(2):
            theirs.embed.weight.requires_grad_(epoch >= 1)
            for x, y in batches[epoch * 10:(epoch + 1) * 10]:
                opt.zero_grad()
                reg.loss(criterion(ours(x), y)).backward()
                opt.step()
                opt2.zero_grad()
                criterion(theirs(x), y).backward()
                opt2.step()
            if epoch == 0:
                assert torch.equal(ours.embed.weight, start)  # frozen: bit-identical
            reg.epoch_end({})
    assert not torch.equal(ours.embed.weight, start)
    assert_close(ours, theirs, rtol=1e-4, atol=3e-5)

"""L2SP in a plain PyTorch loop: the fused gradient, the autograd penalty and the decoupled
decay equal the same formulas written by hand; gradient accumulation, frozen parameters,
checkpoint resume, a given reference and refusals before any weight changes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import L2SP

ALPHA, BETA, LR = 0.3, 0.05, 0.1


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("body", nn.Linear(6, 8))
    net.add_module("act", nn.Tanh())
    net.add_module("head", nn.Linear(8, 3))
    return net


def _batches(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]


def _pretend_pretrained(model: nn.Module) -> dict[str, torch.Tensor]:
    """θ₀: the weights as they are now (what L2SP snapshots at train begin)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train_regplug(plugin: L2SP, *, opt_cls=torch.optim.SGD, fused: bool = True,
                   accumulate: int = 1, freeze: str | None = None) -> nn.Module:
    model = _model()
    if freeze:
        model.get_submodule(freeze).requires_grad_(False)
    opt = opt_cls(model.parameters(), lr=LR)
    with attach(model, opt, [plugin], fused=fused) as reg:
        for i in range(0, len(_batches()), accumulate):
            opt.zero_grad()
            for x, y in _batches()[i:i + accumulate]:
                loss = reg.loss(nn.functional.cross_entropy(model(x), y) / accumulate)
                loss.backward()
            opt.step()
    return model


def _train_by_hand(grad_term, *, opt_cls=torch.optim.SGD, loss_term=None,
                   before_step=None, accumulate: int = 1, freeze: str | None = None
                   ) -> nn.Module:
    model = _model()
    if freeze:
        model.get_submodule(freeze).requires_grad_(False)
    start = _pretend_pretrained(model)
    opt = opt_cls(model.parameters(), lr=LR)
    for i in range(0, len(_batches()), accumulate):
        opt.zero_grad()
        for j, (x, y) in enumerate(_batches()[i:i + accumulate]):
            loss = nn.functional.cross_entropy(model(x), y) / accumulate
            if loss_term is not None and j == 0:  # once per update, as regplug does
                loss = loss + loss_term(model, start)
            loss.backward()
        if grad_term is not None:
            with torch.no_grad():
                grad_term(model, start)
        if before_step is not None:
            with torch.no_grad():
                before_step(model, start)
        opt.step()
    return model


def _fused_by_hand(model: nn.Module, start: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if p.grad is None or not p.requires_grad:
            continue
        if name == "body.weight":
            p.grad.add_(p - start[name], alpha=ALPHA)
        elif name == "head.weight":
            p.grad.add_(p, alpha=BETA)


def _penalty_by_hand(model: nn.Module, start: dict[str, torch.Tensor]) -> torch.Tensor:
    body, head = model.get_submodule("body").weight, model.get_submodule("head").weight
    terms = [BETA / 2 * head.square().sum()]
    if body.requires_grad:
        terms.append(ALPHA / 2 * (body - start["body.weight"]).square().sum())
    return sum(terms)


def _assert_same(a: nn.Module, b: nn.Module, **tol) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if tol:
            torch.testing.assert_close(p, q, **tol, msg=name)
        else:
            assert torch.equal(p, q), name


def test_fused_gradient_is_bit_equal_to_the_same_formula_by_hand():
    ours = _train_regplug(L2SP(ALPHA, BETA, new="head.*"))
    mine = _train_by_hand(_fused_by_hand)
    _assert_same(ours, mine)


@pytest.mark.parametrize("fused", [True, False])
def test_penalty_equals_the_hand_written_autograd_penalty(fused):
    ours = _train_regplug(L2SP(ALPHA, BETA, new="head.*"), fused=fused)
    mine = _train_by_hand(None, loss_term=_penalty_by_hand)
    _assert_same(ours, mine, rtol=1e-6, atol=1e-7)


def test_penalty_value_is_alpha_half_squared_distance():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    start = _pretend_pretrained(model)
    with attach(model, opt, [L2SP(ALPHA, BETA, new="head.*")]) as reg:
        for x, y in _batches(3):
            opt.zero_grad()
            reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
        value = reg.penalties()["l2sp_penalty"]
    torch.testing.assert_close(value, _penalty_by_hand(model, start).detach(),
                               rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_accumulation_counts_the_penalty_once_per_update(fused):
    ours = _train_regplug(L2SP(ALPHA, BETA, new="head.*"), fused=fused, accumulate=3)
    mine = _train_by_hand(None, loss_term=_penalty_by_hand, accumulate=3)
    _assert_same(ours, mine, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_decoupled_decays_toward_the_start_before_the_update(opt_cls):
    def decay(model: nn.Module, start: dict[str, torch.Tensor]) -> None:
        body, head = model.get_submodule("body").weight, model.get_submodule("head").weight
        body.sub_(LR * ALPHA * (body - start["body.weight"]))
        head.mul_(1 - LR * BETA)

    ours = _train_regplug(L2SP(ALPHA, BETA, new="head.*", decoupled=True), opt_cls=opt_cls)
    mine = _train_by_hand(None, before_step=decay, opt_cls=opt_cls)
    _assert_same(ours, mine, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{}, {"fused": False}, {"decoupled": True}])
def test_frozen_parameters_are_left_alone_bit_for_bit(kwargs):
    fused = kwargs.pop("fused", True)
    before = _weights(_model())
    model = _train_regplug(L2SP(1.0, 1.0, new="head.*", **kwargs), fused=fused,
                           freeze="body")
    after = _weights(model)
    assert torch.equal(after["body.weight"], before["body.weight"])
    assert torch.equal(after["body.bias"], before["body.bias"])
    assert not torch.equal(after["head.weight"], before["head.weight"])


def test_a_given_state_dict_reference_anchors_there_and_is_never_written_back():
    pretrained = _model(seed=5).state_dict()
    kept = copy.deepcopy(pretrained)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    plugin = L2SP(ALPHA, reference={k: v for k, v in pretrained.items() if k != "head.weight"})
    with attach(model, opt, [plugin]) as reg:
        x, y = _batches(1)[0]
        opt.zero_grad()
        reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
        value = reg.penalties()["l2sp_penalty"]
        opt.step()
    start = _model()
    expected = ALPHA / 2 * (start.body.weight - pretrained["body.weight"]).square().sum()
    torch.testing.assert_close(value, expected.detach(), rtol=1e-6, atol=0.0)
    assert all(torch.equal(pretrained[k], kept[k]) for k in kept)
    assert torch.equal(torch.as_tensor(plugin.anchors()["body.weight"]), kept["body.weight"])
    assert "head.weight" not in plugin.anchors()  # absent from the reference: new


def test_checkpoint_resume_is_bit_identical_and_keeps_the_first_start_point():
    def steps(model, opt, reg, batches):
        for x, y in batches:
            opt.zero_grad()
            reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()

    batches = _batches(6)
    whole = _model()
    opt = torch.optim.SGD(whole.parameters(), lr=LR, momentum=0.9)
    with attach(whole, opt, [L2SP(ALPHA)]) as reg:
        steps(whole, opt, reg, batches)

    first = _model()
    opt = torch.optim.SGD(first.parameters(), lr=LR, momentum=0.9)
    with attach(first, opt, [L2SP(ALPHA)]) as reg:
        steps(first, opt, reg, batches[:3])
        checkpoint = {"model": copy.deepcopy(first.state_dict()),
                      "opt": copy.deepcopy(opt.state_dict()), "reg": reg.state_dict()}
    resumed = _model(seed=9)  # other weights: all must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    opt = torch.optim.SGD(resumed.parameters(), lr=LR, momentum=0.9)
    opt.load_state_dict(checkpoint["opt"])
    with attach(resumed, opt, [L2SP(ALPHA)]) as reg:
        reg.load_state_dict(checkpoint["reg"])
        steps(resumed, opt, reg, batches[3:])
    _assert_same(resumed, whole)


def test_a_reference_with_other_names_is_refused_before_any_change():
    model = _model()
    before = _weights(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    wrapped = {f"module.{k}": v for k, v in _model(5).state_dict().items()}  # a DDP checkpoint
    with pytest.raises(ValueError, match=r"L2SP: argument 'reference' holds none of the 2 "
                                         r"selected parameters \(its names start with: "
                                         r"module.body.weight"):
        attach(model, opt, [L2SP(ALPHA, reference=wrapped)])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_decoupled_with_a_tensor_learning_rate_never_reads_it_back_to_the_host():
    """A tensor learning rate (``lr=torch.tensor(...)``, as for capturable or compiled
    optimizers) makes the decoupled factor ``1 − lr·alpha`` a tensor: it must reach the
    kernel as a tensor, never as a Python number read back from the device (a host sync per
    step on a GPU), and the weights must be bit for bit those of the same float rate."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ReadBacks(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                self.count += 1
            return func(*args, **(kwargs or {}))

    def train(lr: float | torch.Tensor, plugins: list[L2SP]) -> tuple[nn.Module, int]:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        read_backs = 0
        with attach(model, opt, plugins) as reg:
            for x, y in _batches():
                opt.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
                with ReadBacks() as mode:
                    opt.step()
                read_backs += mode.count
        return model, read_backs

    # torch's SGD reads a tensor rate back itself (non-capturable optimizers do): the
    # plugin's hooks around the step must add no read-back of their own.
    _, sgd_alone = train(torch.tensor(LR), [])
    ours, read_backs = train(torch.tensor(LR), [L2SP(ALPHA, BETA, new="head.*", decoupled=True)])
    assert read_backs == sgd_alone
    # the same values (a float32 rate and factor against float64 ones: float noise)
    plain, _ = train(LR, [L2SP(ALPHA, BETA, new="head.*", decoupled=True)])
    _assert_same(ours, plain, rtol=1e-6, atol=1e-7)

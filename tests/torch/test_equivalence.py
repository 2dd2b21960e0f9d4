"""regplug in a PyTorch loop gives the same weights as the hand-written or built-in way."""

from __future__ import annotations

import copy

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, weights_and_others
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import L1, L2, DecoupledWeightDecay, ElasticNet, MaxNorm, ProximalL1

STEPS = 60
criterion = nn.CrossEntropyLoss()


def train_regplug(model, opt, plugins, data, *, fused=True):
    with attach(model, opt, plugins, fused=fused) as reg:
        for x, y in data:
            opt.zero_grad()
            loss = reg.loss(criterion(model(x), y))
            loss.backward()
            opt.step()
    return model


def train_by_hand(model, opt, data, penalty):
    for x, y in data:
        opt.zero_grad()
        loss = criterion(model(x), y) + penalty(model)
        loss.backward()
        opt.step()
    return model


def sgd(model, **kw):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, **kw)


def l2_by_hand(lam):
    return lambda m: lam * sum(w.pow(2).sum() for w in weights_and_others(m)[0])


def l1_by_hand(lam):
    return lambda m: lam * sum(w.abs().sum() for w in weights_and_others(m)[0])


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
@pytest.mark.parametrize("plugin,by_hand", [
    (lambda: L2(0.01), l2_by_hand(0.01)),
    (lambda: L1(0.003), l1_by_hand(0.003)),
    (lambda: ElasticNet(l1=0.003, l2=0.01), lambda m: l1_by_hand(0.003)(m) + l2_by_hand(0.01)(m)),
], ids=["L2", "L1", "ElasticNet"])
def test_penalty_equals_hand_written_loss_term(plugin, by_hand, fused):
    data = batches(STEPS)
    ours = make_model(norm=True)
    theirs = copy.deepcopy(ours)
    train_regplug(ours, sgd(ours), [plugin()], data, fused=fused)
    train_by_hand(theirs, sgd(theirs), data, by_hand)
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0].weight, make_model(norm=True)[0].weight)


def test_l2_with_plain_sgd_equals_sgd_weight_decay_of_twice_lambda():
    lam, data = 0.02, batches(STEPS)
    ours = make_model(norm=True)
    theirs = copy.deepcopy(ours)
    train_regplug(ours, torch.optim.SGD(ours.parameters(), lr=0.1), [L2(lam)], data)
    weights, others = weights_and_others(theirs)
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 2 * lam},
                           {"params": others, "weight_decay": 0.0}], lr=0.1)
    train_by_hand(theirs, opt, data, lambda m: 0.0)
    assert_same_weights(ours, theirs, rtol=1e-6, atol=1e-7)


def test_decoupled_weight_decay_with_adam_equals_adamw():
    wd, data = 0.1, batches(STEPS)
    ours = make_model(norm=True)
    theirs = copy.deepcopy(ours)
    adam = torch.optim.Adam(ours.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(adam, step_size=20, gamma=0.5)
    with attach(ours, adam, [DecoupledWeightDecay(wd)]) as reg:
        for x, y in data:
            adam.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            adam.step()
            sched.step()
    weights, others = weights_and_others(theirs)
    adamw = torch.optim.AdamW([{"params": weights, "weight_decay": wd},
                               {"params": others, "weight_decay": 0.0}], lr=3e-3)
    sched_w = torch.optim.lr_scheduler.StepLR(adamw, step_size=20, gamma=0.5)
    for x, y in data:
        adamw.zero_grad()
        criterion(theirs(x), y).backward()
        adamw.step()
        sched_w.step()
    assert_same_weights(ours, theirs, rtol=1e-6, atol=1e-7)
    # and the decay mattered: plain Adam ends elsewhere
    plain = copy.deepcopy(make_model(norm=True))
    train_by_hand(plain, torch.optim.Adam(plain.parameters(), lr=3e-3), data, lambda m: 0.0)
    assert not torch.allclose(plain[0].weight, ours[0].weight, atol=1e-4)


def test_decoupled_decay_uses_each_parameter_groups_learning_rate():
    model = make_model()
    w0, w1 = model[0].weight, model[2].weight
    before0, before1 = w0.detach().clone(), w1.detach().clone()
    opt = torch.optim.SGD([{"params": [w0], "lr": 0.1}, {"params": [w1], "lr": 0.01}], lr=0.1)
    with attach(model, opt, [DecoupledWeightDecay(0.5)]) as reg:
        reg.loss(model(torch.zeros(2, 8)).sum() * 0.0).backward()
        opt.step()
    torch.testing.assert_close(w0, before0 * (1 - 0.1 * 0.5))
    torch.testing.assert_close(w1, before1 * (1 - 0.01 * 0.5))


def test_proximal_l1_reaches_exact_zeros_where_loss_added_l1_reaches_none(capsys):
    """Sparse regression: 5 of 100 features matter."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 100, generator=gen)
    true_w = torch.zeros(100)
    true_w[:5] = torch.tensor([2.0, -3.0, 1.5, 4.0, -2.5])
    y = x @ true_w + 0.1 * torch.randn(400, generator=gen)

    def fit(plugin):
        torch.manual_seed(0)
        model = nn.Linear(100, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with attach(model, opt, [plugin]) as reg:
            for _ in range(300):
                opt.zero_grad()
                reg.loss(nn.functional.mse_loss(model(x).squeeze(1), y)).backward()
                opt.step()
        return model.weight.detach().squeeze(0)

    prox, l1 = fit(ProximalL1(0.1)), fit(L1(0.1))
    prox_zeros = (prox[5:] == 0).float().mean().item()
    l1_zeros = (l1[5:] == 0).float().mean().item()
    with capsys.disabled():
        print(f"\n[sparse regression] exact zeros among the 95 irrelevant weights: "
              f"ProximalL1 {prox_zeros:.1%}, loss-added L1 {l1_zeros:.1%}")
    assert prox_zeros >= 0.9
    assert l1_zeros == 0.0
    assert (prox[:5] != 0).all()  # the relevant features survive
    assert l1[5:].abs().max() < 0.05  # L1 did shrink them, just never to exactly 0


def test_defaults_leave_biases_and_normalization_parameters_untouched():
    """With zero data gradient, only the plugins move parameters: biases and norms must not."""
    model = make_model(norm=True)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    plugins = [L2(1.0), L1(0.5), DecoupledWeightDecay(1.0), ProximalL1(1.0), MaxNorm(0.1)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, plugins) as reg:
        for x, _ in batches(5):
            opt.zero_grad()
            reg.loss(model(x).sum() * 0.0).backward()
            opt.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {"0.weight", "3.weight", "6.weight"}


def test_selected_biases_and_norms_are_penalised_when_asked():
    model = make_model(norm=True)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [L2(1.0, kinds="all")]) as reg:
        reg.loss(model(torch.randn(4, 8)).sum() * 0.0).backward()
        opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name] * (1 - 0.1 * 2.0), msg=name)


def test_max_norm_bounds_every_units_incoming_weights():
    model = make_model()
    with torch.no_grad():
        model[0].weight.mul_(10)
    small_row = model[0].weight[0].detach().clone() / model[0].weight[0].norm() * 0.5
    with torch.no_grad():
        model[0].weight[0] = small_row
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with attach(model, opt, [MaxNorm(1.0)]) as reg:
        reg.loss(model(torch.randn(4, 8)).sum()).backward()
        opt.step()
    norms = model[0].weight.norm(dim=1)
    assert torch.all(norms <= 1.0 + 1e-6)
    torch.testing.assert_close(norms[1:], torch.ones(15))
    assert torch.equal(model[0].weight[0], small_row)


@pytest.mark.parametrize("max_norm", [0.75, 1.5, 3.0])
def test_max_norm_fused_kernel_equals_the_general_formula_bit_for_bit(max_norm):
    # float32 weights with a unit axis take one renorm_ kernel; a tensor bound takes the
    # general norm / where / mul path. Both must give the same bits (Keras' formula).
    from regplug.adapters.torch import TorchOps, discover_parameters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 3), nn.Flatten(),
                          nn.Linear(16, 16), nn.Linear(16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)
            p[0].mul_(0.01)  # some units far above the bound, some below
    handles = discover_parameters(model, torch.optim.SGD(model.parameters(), lr=0.1))
    copies = {h.name: h.tensor.detach().clone() for h in handles}
    original = {name: t.clone() for name, t in copies.items()}
    other = [type(h)(h.name, h.kind, copies[h.name], h.layer_type, h.unit_axis, h.shape)
             for h in handles]
    with torch.no_grad():
        TorchOps().clip_unit_norms_(handles, max_norm)
        TorchOps().clip_unit_norms_(other, torch.tensor(max_norm))
    assert {h.name: h.unit_axis for h in handles if h.kind == "weight"} == {
        "0.weight": 0, "1.weight": 1, "3.weight": 0, "4.weight": 0}
    for h in handles:
        assert torch.equal(h.tensor, copies[h.name]), h.name
    clipped = {h.name for h in handles if not torch.equal(h.tensor, original[h.name])}
    assert {"0.weight", "1.weight", "3.weight"} <= clipped  # the scenario clips something

"""optimizer.step(closure): each evaluation of the closure is the penalized objective, and the
update plugins act after the closure's backward pass, as without a closure."""

from __future__ import annotations

import copy

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, snapshot, weights_and_others
from torch import nn

from regplug import UsageError
from regplug.adapters.torch import attach
from regplug.plugins import L2, DecoupledWeightDecay, MaxNorm, ProximalL1

criterion = nn.CrossEntropyLoss()
L2_STRENGTH = 0.01


def l2_by_hand(model):
    return L2_STRENGTH * sum(w.pow(2).sum() for w in weights_and_others(model)[0])


def closure_loop(model, opt, data, make_loss):
    """Train with optimizer.step(closure); return every value the optimizer got from it."""
    values = []

    def record(optimizer, args, kwargs):  # registered last: sees the closure step() calls
        closure = args[1]

        def recorded():
            value = closure()
            values.append(float(value.detach()))
            return value
        return (args[0], recorded), kwargs

    handle = opt.register_step_pre_hook(record)
    for x, y in data:
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = make_loss(criterion(model(x), y))
            loss.backward()
            return loss
        opt.step(closure)
    handle.remove()
    return values


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
], ids=["SGD", "Adam"])
def test_l2_with_a_closure_equals_the_penalty_written_into_the_closure(make_opt, fused):
    data = batches(8)
    ours, theirs = make_model(), make_model()
    opt_ours, opt_theirs = make_opt(ours.parameters()), make_opt(theirs.parameters())
    with attach(ours, opt_ours, [L2(L2_STRENGTH)], fused=fused) as reg:
        ours_values = closure_loop(ours, opt_ours, data, reg.loss)
    their_values = closure_loop(theirs, opt_theirs, data, lambda loss: loss + l2_by_hand(theirs))
    assert reg.run.step == len(data)
    assert_same_weights(ours, theirs)
    # the value the optimizer sees is the penalized objective, also where the penalty is fused
    torch.testing.assert_close(torch.tensor(ours_values), torch.tensor(their_values),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
def test_lbfgs_evaluates_the_penalized_objective_at_every_closure_call(fused):
    """LBFGS calls the closure several times per step and uses its value in the line
    search: every evaluation must be loss + penalty at the point being evaluated."""
    data = batches(3, size=64)
    ours, theirs = make_model(), make_model()

    def lbfgs(model):
        return torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=6,
                                 line_search_fn="strong_wolfe")

    opt_ours, opt_theirs = lbfgs(ours), lbfgs(theirs)
    with attach(ours, opt_ours, [L2(L2_STRENGTH)], fused=fused) as reg:
        ours_values = closure_loop(ours, opt_ours, data, reg.loss)
    their_values = closure_loop(theirs, opt_theirs, data, lambda loss: loss + l2_by_hand(theirs))
    assert len(ours_values) == len(their_values) > 2 * len(data)  # several per step
    torch.testing.assert_close(torch.tensor(ours_values), torch.tensor(their_values),
                               rtol=1e-6, atol=1e-7)
    # the fused gradient is summed in another order than autograd's: LBFGS' curvature
    # estimate carries the last-bit differences (max 8e-7 on weights of order 0.3 here,
    # 3.2e-6 on the CI machine, whose kernels sum in another order again). The tolerance
    # still separates: a strength off by 0.1 % moves these weights by 0.1.
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-5)
    assert reg.run.step == len(data)  # one step per optimizer.step(), however many calls


def test_adam_with_decoupled_weight_decay_and_a_closure_equals_adamw():
    """The decay comes after the closure's backward pass: the gradient is AdamW's."""
    data = batches(12)
    ours, theirs = make_model(), make_model()
    weights, others = weights_and_others(theirs)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_theirs = torch.optim.AdamW([{"params": weights, "weight_decay": 0.1},
                                    {"params": others, "weight_decay": 0.0}], lr=1e-2)
    with attach(ours, opt_ours, [DecoupledWeightDecay(0.1)]) as reg:
        closure_loop(ours, opt_ours, data, reg.loss)
    closure_loop(theirs, opt_theirs, data, lambda loss: loss)
    assert_same_weights(ours, theirs)


def test_update_plugins_with_a_closure_equal_the_projections_written_after_step():
    data = batches(6)
    ours, theirs = make_model(), make_model()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    with attach(ours, opt_ours, [ProximalL1(0.05), MaxNorm(0.5)]) as reg:
        closure_loop(ours, opt_ours, data, reg.loss)
    for x, y in data:
        opt_theirs.zero_grad()
        criterion(theirs(x), y).backward()
        opt_theirs.step()
        with torch.no_grad():
            for w in weights_and_others(theirs)[0]:
                w.copy_(torch.sign(w) * torch.clamp(w.abs() - 0.1 * 0.05, min=0))
                w.renorm_(2, 0, 0.5)
    assert_same_weights(ours, theirs)


def test_loss_handed_over_before_a_closure_that_only_runs_hooks_counts_for_the_step():
    """Lightning's manual optimization: backward first, then step(closure) with a closure
    that does no forward pass of its own."""
    data = batches(5)
    ours, theirs = make_model(), make_model()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    with attach(ours, opt_ours, [L2(L2_STRENGTH)]) as reg:
        for x, y in data:
            opt_ours.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            opt_ours.step(lambda: None)
    for x, y in data:
        opt_theirs.zero_grad()
        (criterion(theirs(x), y) + l2_by_hand(theirs)).backward()
        opt_theirs.step()
    assert_same_weights(ours, theirs)


def test_loss_given_before_zero_grad_inside_the_closure_keeps_its_penalty():
    """Lightning's automatic optimization runs the forward pass, then zero_grad, then the
    backward pass inside the closure: the penalty handed over must survive zero_grad."""
    data = batches(5)
    ours, theirs = make_model(), make_model()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05)
    with attach(ours, opt_ours, [L2(L2_STRENGTH)]) as reg:
        for x, y in data:
            def closure(x=x, y=y):
                loss = reg.loss(criterion(ours(x), y))
                opt_ours.zero_grad()
                loss.backward()
                return loss
            opt_ours.step(closure)
    closure_loop(theirs, opt_theirs, data, lambda loss: loss + l2_by_hand(theirs))
    assert_same_weights(ours, theirs)


def test_a_closure_that_never_calls_reg_loss_is_refused_before_the_weights_change():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y), = batches(1)
    before = snapshot(model)

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    with attach(model, opt, [L2(0.1)]) as reg:
        with pytest.raises(UsageError, match=r"reg\.loss"):
            opt.step(closure)
        assert reg.run.step == 0
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())


def test_closure_passed_by_keyword_works_too():
    data = batches(3)
    ours, theirs = make_model(), copy.deepcopy(make_model())
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05)
    with attach(ours, opt_ours, [L2(L2_STRENGTH)]) as reg:
        for x, y in data:
            def closure(x=x, y=y):
                opt_ours.zero_grad()
                loss = reg.loss(criterion(ours(x), y))
                loss.backward()
                return loss
            opt_ours.step(closure=closure)  # by keyword
    closure_loop(theirs, opt_theirs, data, lambda loss: loss + l2_by_hand(theirs))
    assert_same_weights(ours, theirs)


def test_a_step_after_a_closure_that_raised_works_as_usual():
    data = batches(3)
    ours, theirs = make_model(), make_model()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05)

    def failing():
        raise RuntimeError("data loader broke")

    with attach(ours, opt_ours, [L2(L2_STRENGTH)]) as reg:
        with pytest.raises(RuntimeError, match="data loader broke"):
            opt_ours.step(failing)
        for x, y in data:
            opt_ours.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            opt_ours.step()
    for x, y in data:
        opt_theirs.zero_grad()
        (criterion(theirs(x), y) + l2_by_hand(theirs)).backward()
        opt_theirs.step()
    assert_same_weights(ours, theirs)

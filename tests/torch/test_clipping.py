"""What a fused penalty means when something reads the gradients between backward() and
step() (gradient clipping), and for a parameter without a gradient in a step.

- ``reg.add_penalty_grads()`` before clipping: the penalty written in the loss, exactly.
- fused, without it: torch's own ``weight_decay`` (joins inside ``optimizer.step()``).
- ``fused=False``: the penalty written in the loss (autograd differentiates it).
"""

from __future__ import annotations

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, weights_and_others
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import L2

criterion = nn.CrossEntropyLoss()
LAM, LR, MAX_NORM, STEPS = 0.05, 0.1, 0.5, 12


def clipped_step(model, opt, loss, *, before_clip=lambda: None):
    loss.backward()
    before_clip()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    opt.step()


def penalty_in_the_loss(model):
    return LAM * sum(w.pow(2).sum() for w in weights_and_others(model)[0])


def train_with_penalty_in_the_loss(model, data, **sgd):
    opt = torch.optim.SGD(model.parameters(), lr=LR, **sgd)
    for x, y in data:
        opt.zero_grad()
        clipped_step(model, opt, criterion(model(x), y) + penalty_in_the_loss(model))
    return model


def test_add_penalty_grads_before_clipping_gives_the_penalty_written_in_the_loss():
    data = batches(STEPS)
    ours = make_model()
    opt = torch.optim.SGD(ours.parameters(), lr=LR)
    with attach(ours, opt, [L2(LAM)]) as reg:
        for x, y in data:
            opt.zero_grad()
            clipped_step(ours, opt, reg.loss(criterion(ours(x), y)),
                         before_clip=reg.add_penalty_grads)
    assert_same_weights(ours, train_with_penalty_in_the_loss(make_model(), data))


def test_fused_penalty_without_add_penalty_grads_acts_like_torch_weight_decay_under_clipping():
    data = batches(STEPS)
    ours, theirs = make_model(), make_model()
    opt = torch.optim.SGD(ours.parameters(), lr=LR)
    weights, others = weights_and_others(theirs)
    opt_theirs = torch.optim.SGD([{"params": weights, "weight_decay": 2 * LAM},
                                  {"params": others}], lr=LR)
    with attach(ours, opt, [L2(LAM)]) as reg:
        for x, y in data:
            opt.zero_grad()
            clipped_step(ours, opt, reg.loss(criterion(ours(x), y)))
    for x, y in data:
        opt_theirs.zero_grad()
        clipped_step(theirs, opt_theirs, criterion(theirs(x), y))
    assert_same_weights(ours, theirs)
    # ... which is not the penalty in the loss: clipping did not see the penalty's gradient
    with pytest.raises(AssertionError):
        assert_same_weights(ours, train_with_penalty_in_the_loss(make_model(), data), rtol=1e-3)


def test_autograd_penalty_under_clipping_is_the_penalty_written_in_the_loss():
    data = batches(STEPS)
    ours = make_model()
    opt = torch.optim.SGD(ours.parameters(), lr=LR)
    with attach(ours, opt, [L2(LAM)], fused=False) as reg:
        for x, y in data:
            opt.zero_grad()
            clipped_step(ours, opt, reg.loss(criterion(ours(x), y)))
    assert_same_weights(ours, train_with_penalty_in_the_loss(make_model(), data))


def test_add_penalty_grads_with_grad_scaler_after_unscale_gives_the_penalty_in_the_loss():
    data = batches(6)
    ours, theirs = make_model(), make_model()
    opt, opt_theirs = (torch.optim.SGD(m.parameters(), lr=LR) for m in (ours, theirs))
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) for _ in range(2)]

    def step(model, optimizer, scaler, loss, before_clip=lambda: None):
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        before_clip()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        scaler.step(optimizer)
        scaler.update()

    with attach(ours, opt, [L2(LAM)]) as reg:
        for x, y in data:
            opt.zero_grad()
            step(ours, opt, scalers[0], reg.loss(criterion(ours(x), y)), reg.add_penalty_grads)
    for x, y in data:
        opt_theirs.zero_grad()
        step(theirs, opt_theirs, scalers[1],
             criterion(theirs(x), y) + penalty_in_the_loss(theirs))
    assert_same_weights(ours, theirs)


def test_add_penalty_grads_counts_the_penalty_once_per_step_with_gradient_accumulation():
    data = batches(8, size=16)
    ours, theirs = make_model(), make_model()
    opt, opt_theirs = (torch.optim.SGD(m.parameters(), lr=LR) for m in (ours, theirs))
    with attach(ours, opt, [L2(LAM)]) as reg:
        for i in range(0, len(data), 2):
            opt.zero_grad()
            for x, y in data[i:i + 2]:
                reg.loss(criterion(ours(x), y) / 2).backward()
            reg.add_penalty_grads()
            reg.add_penalty_grads()  # a second call adds nothing
            torch.nn.utils.clip_grad_norm_(ours.parameters(), MAX_NORM)
            opt.step()
    for i in range(0, len(data), 2):
        opt_theirs.zero_grad()
        for j, (x, y) in enumerate(data[i:i + 2]):
            loss = criterion(theirs(x), y) / 2
            (loss + penalty_in_the_loss(theirs) if j == 0 else loss).backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), MAX_NORM)
        opt_theirs.step()
    assert_same_weights(ours, theirs)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x):
        return self.a(torch.tanh(self.trunk(x)))  # head b is never used: no gradient


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
def test_a_parameter_without_a_gradient_fused_like_weight_decay_autograd_like_the_loss(fused):
    ours = TwoHeads()
    unused = ours.b.weight.detach().clone()
    opt = torch.optim.SGD(ours.parameters(), lr=LR)
    with attach(ours, opt, [L2(LAM)], fused=fused) as reg:
        for x, y in batches(3):
            opt.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            opt.step()
    if fused:  # SGD(weight_decay) skips a parameter whose grad is None
        assert torch.equal(ours.b.weight, unused)
    else:  # the penalty in the loss gives it the gradient 2·λ·θ
        torch.testing.assert_close(ours.b.weight.detach(), unused * (1 - LR * 2 * LAM) ** 3)

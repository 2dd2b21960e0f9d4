"""Gradient accumulation with penalties that go through autograd (issue 16, item 19).

k micro-batches per optimizer step, with ``attach(..., fused=False)`` built-in penalties and a
third-party penalty that has no closed-form gradient: the penalties must enter the objective
once per optimizer step (one window), exactly as the same penalties written by hand into the
first micro-batch's loss. Removing the once-per-window guard of
``StepWindow.collect_penalties`` adds them on every micro-batch: these tests notice.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _torch_models import batches, make_model, weights_and_others
from torch import nn

import regplug
from regplug.adapters.torch import attach
from regplug.plugins import L1, L2

criterion = nn.CrossEntropyLoss()
K = 4  # micro-batches per optimizer step
L2_STRENGTH, L1_STRENGTH, SMOOTH_STRENGTH = 0.05, 0.01, 0.3


class SmoothNorm(regplug.Plugin):
    """A third-party penalty without a closed form: ``s·sqrt(1 + Σθ²)`` over the weights,
    built from ``run.ops`` only, so the adapter must differentiate it through autograd."""

    name = "smooth_norm"

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @regplug.hookimpl
    def on_loss(self, run):
        weights = run.parameters()
        return regplug.Penalty(
            "smooth_norm_penalty",
            value=lambda: self.strength * (1.0 + run.ops.sum_squares(weights)) ** 0.5)


def by_hand(model: nn.Module) -> torch.Tensor:
    """The three penalties written the way the adapter's ops compute them (same order)."""
    ws = weights_and_others(model)[0]
    squares = torch.stack([w.float().square().sum() for w in ws]).sum()
    absolute = torch.stack([w.float().abs().sum() for w in ws]).sum()
    return torch.stack([L2_STRENGTH * squares, L1_STRENGTH * absolute,
                        SMOOTH_STRENGTH * (1.0 + squares) ** 0.5]).sum()


def plugins(which: str) -> list[object]:
    if which == "third-party":
        return [SmoothNorm(SMOOTH_STRENGTH)]
    return [L2(L2_STRENGTH), L1(L1_STRENGTH), SmoothNorm(SMOOTH_STRENGTH)]


def hand_penalty(which: str):
    if which == "third-party":
        return lambda m: SMOOTH_STRENGTH * (
            1.0 + torch.stack([w.float().square().sum()
                               for w in weights_and_others(m)[0]]).sum()) ** 0.5
    return by_hand


def accumulate(model: nn.Module, data, penalty=None, reg_plugins=None, *, every=False,
               momentum: float = 0.9) -> None:
    """Train with K micro-batches per step; the penalty by hand in the first micro-batch's
    loss (``every``: in every micro-batch's), or by regplug (``reg_plugins``)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    ctx = attach(model, opt, reg_plugins, fused=False) if reg_plugins is not None else None
    reg = ctx.__enter__() if ctx is not None else None
    try:
        for x, y in data:
            opt.zero_grad()
            for i, (xs, ys) in enumerate(zip(x.chunk(K), y.chunk(K), strict=True)):
                loss = criterion(model(xs), ys) / K
                if reg is not None:
                    loss = reg.loss(loss)
                elif i == 0 or every:
                    loss = loss + penalty(model)
                loss.backward()
            opt.step()
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


@pytest.mark.parametrize("which", ["fused-false-builtins-and-third-party", "third-party"])
def test_autograd_penalties_enter_once_per_accumulation_window(which):
    """fused=False L2 + L1 + a third-party smooth penalty, K=4 micro-batches per step, 10
    steps with momentum: the weights equal those of the same penalties written by hand into
    the first micro-batch of each window, to float rounding (rtol 1e-6, atol 1e-7: the sum
    over the micro-batches is accumulated in the same order; the only difference is
    where the penalty's float32 sum is formed)."""
    data = batches(10, size=32)
    ours = make_model()
    written = copy.deepcopy(ours)
    per_micro_batch = copy.deepcopy(ours)
    accumulate(ours, data, reg_plugins=plugins(which))
    accumulate(written, data, penalty=hand_penalty(which))
    for (name, a), b in zip(ours.state_dict().items(), written.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    # The test can fail: the penalty on every micro-batch (K times per step) ends elsewhere,
    # by far more than the tolerance above.
    accumulate(per_micro_batch, data, penalty=hand_penalty(which), every=True)
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(per_micro_batch.parameters(),
                                                          written.parameters(), strict=True))
    assert diff > 1e-3


def test_on_loss_fires_once_per_window_not_per_micro_batch():
    """One on_loss per window: the step count is the number of optimizer updates, and the
    on_loss hook fires once per update, not once per micro-batch."""
    calls: list[int] = []

    class Counting(SmoothNorm):
        @regplug.hookimpl
        def on_loss(self, run):
            calls.append(run.step)
            return super().on_loss(run)

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(5, size=32)
    with attach(model, opt, [Counting(SMOOTH_STRENGTH)], fused=False) as reg:
        for x, y in data:
            opt.zero_grad()
            for xs, ys in zip(x.chunk(K), y.chunk(K), strict=True):
                reg.loss(criterion(model(xs), ys) / K).backward()
            opt.step()
    assert calls == [0, 1, 2, 3, 4]
    assert reg.run.step == 5

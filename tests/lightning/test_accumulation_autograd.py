"""Lightning, gradient accumulation with penalties that go through autograd (issue 16, item 19).

``Regularize([...], fused=False)`` with L2, L1 and a third-party penalty without a closed
form, ``accumulate_grad_batches=2``: the penalties enter once per optimizer step, as the same
penalties written by hand into ``training_step`` once per window. The adapter's own guard
(``on_before_backward`` returns once the window saw its loss) and the once-per-window guard of
``StepWindow.collect_penalties`` keep them from entering on every micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from _lightning_models import Tiny, fit, max_diff
from _smooth_penalty import SmoothNorm, smooth_norm
from torch import nn

from regplug.adapters.lightning import Regularize
from regplug.plugins import L1, L2

K = 2  # micro-batches per optimizer step: 4 batches an epoch, 2 windows of 2
L2_STRENGTH, L1_STRENGTH, SMOOTH_STRENGTH = 1e-2, 1e-3, 0.3


def penalty(module: nn.Module) -> torch.Tensor:
    """L2 + L1 + the smooth norm over the Linear weights, written by hand."""
    ws = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
    squares = sum(w.square().sum() for w in ws)
    return (L2_STRENGTH * squares + L1_STRENGTH * sum(w.abs().sum() for w in ws)
            + smooth_norm(SMOOTH_STRENGTH, squares))


class OncePerWindow(Tiny):
    """The penalty written into the first micro-batch of each window only, times k: Lightning
    divides every micro-batch's loss by k, so it enters each update once at full strength.
    ``times`` scales it (the wrong answer a per-micro-batch penalty gives)."""

    def __init__(self, times: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.times = times

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if batch_idx % K == 0:
            loss = loss + K * self.times * penalty(self)
        return loss


def test_autograd_penalties_enter_once_per_accumulation_window():
    """Tolerance 1e-6 on the weights (float32; the penalty is summed in another order)."""
    ours = Tiny()
    smooth = SmoothNorm(SMOOTH_STRENGTH)
    reg = Regularize([L2(L2_STRENGTH), L1(L1_STRENGTH), smooth], fused=False)
    fit(ours, callbacks=[reg], accumulate_grad_batches=K)
    written = OncePerWindow()
    fit(written, accumulate_grad_batches=K)
    assert max_diff(ours, written) < 1e-6
    assert reg.run.step == 4  # 4 batches an epoch, K per step, 2 epochs
    assert smooth.calls == [0, 1, 2, 3]  # on_loss once per window, not per micro-batch
    # The test can fail: the penalties on every micro-batch (K times per update) end elsewhere.
    every_micro_batch = OncePerWindow(times=K)
    fit(every_micro_batch, accumulate_grad_batches=K)
    assert max_diff(every_micro_batch, written) > 1e-4


def test_a_third_party_penalty_alone_enters_once_per_window():
    ours = Tiny()
    fit(ours, callbacks=[Regularize([SmoothNorm(SMOOTH_STRENGTH)])], accumulate_grad_batches=K)

    class Written(Tiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            squares = sum(m.weight.square().sum() for m in self.modules()
                          if isinstance(m, nn.Linear))
            return loss + smooth_norm(SMOOTH_STRENGTH, squares)  # each micro-batch: /K

    written = Written()
    fit(written, accumulate_grad_batches=K)
    assert max_diff(ours, written) < 1e-6

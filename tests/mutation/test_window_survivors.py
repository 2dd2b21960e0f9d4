"""Mutants of regplug/window.py that the adapter tests let live (issue 16, item 19).

Each test kills one: the window is reset after every optimizer update (also when the user
zeroes the gradients through the model rather than the optimizer), the window's first loss
opens the epoch when no batch did, and the step hooks get the documented ``step``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import regplug
from regplug.testing import NumpyLoop

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
def test_a_new_window_opens_after_each_step_without_optimizer_zero_grad(fused):
    """Gradients zeroed through ``model.zero_grad()`` (the optimizer's zero_grad, where the
    torch adapter opens a window, is never called): every update still gets its penalty."""
    from _torch_models import batches, make_model, weights_and_others

    from regplug.adapters.torch import attach
    from regplug.plugins import L2

    criterion, lam = torch.nn.CrossEntropyLoss(), 0.05
    data = batches(6)
    ours = make_model()
    theirs = copy.deepcopy(ours)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    with attach(ours, opt, [L2(lam)], fused=fused) as reg:
        for x, y in data:
            ours.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            opt.step()
    assert reg.run.step == len(data)
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x, y in data:
        theirs.zero_grad()
        penalty = lam * sum(w.pow(2).sum() for w in weights_and_others(theirs)[0])
        (criterion(theirs(x), y) + penalty).backward()
        opt2.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class Events(regplug.Plugin):
    def __init__(self) -> None:
        self.events: list[str] = []

    @regplug.hookimpl
    def on_epoch_begin(self, run, epoch):
        self.events.append(f"epoch_begin {epoch}")

    @regplug.hookimpl
    def on_loss(self, run):
        self.events.append("loss")


def test_the_first_loss_of_a_window_opens_the_epoch_when_no_batch_did():
    """An adapter that hands the loss over before (or without) opening a batch still gets
    ``on_epoch_begin`` before ``on_loss`` in every epoch."""
    events = Events()
    loop = NumpyLoop({"w": np.ones((2, 2))}, [events])
    for epoch in range(2):
        loop.run.epoch = epoch
        assert loop.window.collect_penalties(0.0) == []
        loop.window.before_step()
        loop.window.after_step()
        loop.epoch_end()
    loop.close()
    assert events.events == ["epoch_begin 0", "loss", "epoch_begin 1", "loss"]


class Steps(regplug.Plugin):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    @regplug.hookimpl
    def on_before_step(self, run, step):
        self.seen.append(("before_step", step, run.step))

    @regplug.hookimpl
    def on_step(self, run, step):
        self.seen.append(("step", step, run.step))


def test_step_hooks_get_the_index_of_the_update_and_run_step_moves_on_after_it():
    """on_before_step: the update about to happen (== run.step); on_step: the update that just
    happened (run.step is already one more), as regplug/hookspecs.py documents."""
    steps = Steps()
    loop = NumpyLoop({"w": np.ones((2, 2))}, [steps])
    for _ in range(3):
        loop.step({"w": np.zeros((2, 2))})
    loop.close()
    assert steps.seen == [("before_step", 0, 0), ("step", 0, 1), ("before_step", 1, 1),
                          ("step", 1, 2), ("before_step", 2, 2), ("step", 2, 3)]

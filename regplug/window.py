"""The step window: from the first loss of an optimizer step to the update, shared by the
PyTorch adapter and the trainers built on it (Lightning, Hugging Face).

One window per optimizer update, however many micro-batches it accumulates: ``on_loss`` fires
once, at the window's first loss; penalties that know their gradient are kept for the update,
the others are handed to the adapter for autograd; at the update ``on_before_step`` (after
the fused gradients) and ``on_step`` fire, and the clock's step advances. An adapter may add
the fused gradients earlier (:meth:`StepWindow.add_penalty_grads`, e.g. before gradient
clipping) and open a fresh window per evaluation of an optimizer's closure
(:meth:`StepWindow.reset`). The usage checks that keep a penalty from silently going missing
live here too, worded by the adapter (:class:`regplug.clock.Wording`). Keras traces the same
three hooks into its compiled train step instead, through the same dispatch.

Docs: docs/clock-and-window.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .clock import EpochClock
from .errors import UsageError
from .penalty import Penalty, check_penalties

__all__ = ["StepWindow"]


class StepWindow:
    """The per-step hooks of ``clock``'s plugins, one window per optimizer update.

    :param fused: apply penalties that know their gradient (``Penalty.add_grad``) as a fused
        gradient update before the optimizer step; otherwise every penalty goes through the
        loss (``Penalty.value``) and the framework's autograd.
    """

    def __init__(self, clock: EpochClock, *, fused: bool = True) -> None:
        self.clock = clock
        self.run = clock.run
        self.fused = fused
        manager = clock.manager
        # The per-update hooks, built at the window's first call (plugins prepare their hooks
        # for the run once it has begun: see PluginManager.run_caller).
        self._on_loss: Callable[[Any], list[Any]] = self._first_call("on_loss")
        self._on_before_step: Callable[[Any], list[Any]] = self._first_call("on_before_step")
        self._on_step: Callable[[Any], list[Any]] = self._first_call("on_step")
        self._wants_loss = manager.implements("on_loss")
        self._loss_seen = False  # on_loss fired in this window
        self._grads_added = False  # the kept penalties' gradients are in
        self._grad_penalties: list[Penalty] = []
        #: Every penalty returned by the latest ``on_loss`` (for reporting their values).
        self.penalties: list[Penalty] = []

    def _first_call(self, hook_name: str) -> Callable[[Any], list[Any]]:
        """What a hook's caller is until the window's first call: it builds the three callers
        (a plugin's faulty ``prepare_hooks`` is refused then, before anything changed) and
        hands this call to the real one."""
        def first(value: Any) -> list[Any]:
            manager, run = self.clock.manager, self.run
            self._on_loss = manager.run_caller("on_loss", run, "loss")
            self._on_before_step = manager.run_caller("on_before_step", run, "step")
            self._on_step = manager.run_caller("on_step", run, "step")
            return getattr(self, f"_{hook_name}")(value)  # type: ignore[no-any-return]

        return first

    @property
    def loss_seen(self) -> bool:
        """Whether this window's loss has been handed over (``on_loss`` fired)."""
        return self._loss_seen

    def collect_penalties(self, loss: object) -> list[Penalty]:
        """Fire ``on_loss`` once per window; return the penalties to add to the loss.

        Penalties applied through their gradient are kept for :meth:`before_step`; the
        returned ones must be added to the loss by the adapter. Later calls in the same
        window (gradient accumulation) return nothing.
        """
        if self._loss_seen:
            return []
        if not self.clock.epoch_open:
            self.clock.batch_begin()
        self._loss_seen = True
        if not self._wants_loss:
            return []
        # check_penalties' check, in the loop that sorts them (this runs at every step)
        self.penalties = penalties = self._on_loss(loss)
        to_loss, kept = [], []
        fused = self.fused
        for penalty in penalties:
            if type(penalty) is not Penalty:
                check_penalties(penalties)  # raises, naming what a plugin returned instead
            if fused and penalty.add_grad is not None:
                kept.append(penalty)
            else:
                to_loss.append(penalty)
        self._grad_penalties = kept
        return to_loss

    def check_loss(self) -> None:
        """Refuse an update whose window never saw a loss (its penalties would be missing)."""
        if self._wants_loss and not self._loss_seen:
            wording = self.clock.wording
            names = ", ".join(getattr(p, "name", type(p).__name__)
                              for p in self.clock.manager.implementers("on_loss"))
            raise UsageError(
                f"regplug: {wording.step} was called but {wording.loss_call} was not called "
                f"on a training loss (one that requires grad) since the previous step, so the "
                f"penalties of {names} would be missing. {wording.loss_fix}")

    def add_penalty_grads(self) -> None:
        """Add the gradients of the penalties kept for the update, once per window.

        :meth:`before_step` calls it; an adapter calls it earlier where something between
        the backward pass and the update reads the gradients (gradient clipping), so that it
        sees them with the penalty's gradient, as with the penalty written in the loss.
        """
        if self._wants_loss and not self._loss_seen:
            self.check_loss()  # raises
        if self._grads_added:
            return
        self._grads_added = True
        for penalty in self._grad_penalties:
            penalty.add_grad()  # type: ignore[misc]

    def penalty_values(self) -> list[object]:
        """The values of the penalties kept for the update (not in the loss), at the current
        parameters: what an objective re-evaluated by the optimizer (a closure) adds."""
        return [penalty.value() for penalty in self._grad_penalties]

    def before_step(self) -> None:
        """Gradients are final; the optimizer is about to update."""
        self.add_penalty_grads()
        self._on_before_step(self.run.step)

    def after_step(self) -> None:
        """The optimizer has updated the parameters."""
        self.reset()
        self.run.step += 1
        self._on_step(self.run.step - 1)

    def reset(self) -> None:
        """Gradients were zeroed: the next loss opens a new window.

        :meth:`after_step` does this; adapters also call it when gradients are reset without
        a step (e.g. ``GradScaler`` skipped a step with non-finite gradients).
        """
        self._loss_seen = False
        self._grads_added = False
        self._grad_penalties = []

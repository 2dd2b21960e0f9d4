"""The lecture's bug finder: before training, check that the model can overfit one batch.

Docs: docs/plugins/monitors.md
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pluggy

from regplug.errors import RegplugError
from regplug.hookspecs import PROJECT
from regplug.plugin import Plugin
from regplug.run import Run, TrialReport
from regplug.validation import check_bool, check_choice, check_int, check_real

log = logging.getLogger(__name__)
_first = pluggy.HookimplMarker(PROJECT)(tryfirst=True)


class OverfitBatchError(RegplugError, AssertionError):
    """The model could not overfit one batch: something in the setup is broken."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one overfitting check, with its numbers."""

    inputs: str            # "data" or "noise"
    passed: bool
    initial: float
    final: float
    required: float
    steps: int
    hints: tuple[str, ...]

    def __str__(self) -> str:
        status = "passed" if self.passed else "FAILED"
        text = (f"overfit_batch ({self.inputs}): {status}: loss {self.initial:.4g} → "
                f"{self.final:.4g} after {self.steps} steps (needed <= {self.required:.4g})")
        return text + "".join(f"; {hint}" for hint in self.hints)


class OverfitBatch(Plugin):
    """Before training, train on one fixed batch and check that the loss collapses.

    A model that cannot drive the loss of a single batch towards zero has a bug — a
    detached output, a learning rate of 0, frozen parameters, labels that do not match the
    outputs — and regularizing it is pointless. The check trains with the model's own loss
    and optimizer for ``steps`` updates, with every other regplug plugin and every dropout
    layer switched off, then restores model, optimizer and random-number state *exactly*,
    so the real run starts as if the check had never run. (Weight decay built into the
    optimizer and Keras ``kernel_regularizer``\\s stay on: they belong to the model.)

    Passes when the final loss is at most ``target_loss`` or, without one, at most the
    initial loss divided by ``factor``. On failure it raises :class:`OverfitBatchError`
    before the first real step (``on_fail="warn"`` logs a warning instead), with the
    numbers and hints about the likely cause.

    :param x, y: one batch (NumPy arrays or framework tensors), e.g. the first of the loader.
    :param steps: updates to train (``>= 1``, default 100).
    :param factor: required loss reduction without ``target_loss`` (``> 1``, default 10).
    :param target_loss: an absolute loss to reach instead.
    :param noise: also run the check on Gaussian noise inputs of ``x``'s shape with the same
        labels (a network with enough capacity memorizes those too).
    :param on_fail: ``"raise"`` (default) or ``"warn"``.
    :param verbose: print the verdict (default ``True``); it is also in :attr:`verdicts`.
    :param seed: seed of the noise inputs.

    PyTorch: ``attach(..., loss_fn=criterion)`` gives the check its loss.
    Keras: the model's compiled loss is used (``model.train_on_batch``).
    """

    requires = ("trial_training",)

    def __init__(self, x: Any, y: Any, *, steps: int = 100, factor: float = 10.0,
                 target_loss: float | None = None, noise: bool = False,
                 on_fail: str = "raise", verbose: bool = True, seed: int = 0) -> None:
        owner = type(self).__name__
        if x is None or y is None:
            raise TypeError(f"{owner}: arguments 'x' and 'y' must be one batch of inputs "
                            "and targets")
        self.x, self.y = x, y
        self.steps = check_int(owner, "steps", steps, low=1)
        self.factor = check_real(owner, "factor", factor, low=1.0, low_open=True)
        self.target_loss = None if target_loss is None else check_real(
            owner, "target_loss", target_loss, low=-math.inf)
        self.noise = check_bool(owner, "noise", noise)
        self.verbose = check_bool(owner, "verbose", verbose)
        self.on_fail = check_choice(owner, "on_fail", on_fail, ("raise", "warn"))
        self.seed = check_int(owner, "seed", seed)
        self.verdicts: list[Verdict] = []

    @_first
    def on_train_begin(self, run: Run) -> None:
        """Runs before the other plugins' ``on_train_begin`` (``tryfirst``)."""
        trial = run.trial_training
        self.verdicts = [self._check("data", trial.train(self.x, self.y, self.steps))]
        if self.noise:
            shape = tuple(getattr(self.x, "shape", np.shape(self.x)))
            noise = np.random.default_rng(self.seed).standard_normal(shape).astype("float32")
            self.verdicts.append(self._check("noise", trial.train(noise, self.y, self.steps)))
        failed = [v for v in self.verdicts if not v.passed]
        for verdict in self.verdicts:
            # Each verdict shows once: printed (verbose), or raised, or else logged as a
            # warning; the log always has it at INFO level.
            if self.verbose:
                print(verdict, file=sys.stderr)
            quiet = verdict.passed or self.verbose or self.on_fail == "raise"
            (log.info if quiet else log.warning)("%s", verdict)
        if failed and self.on_fail == "raise":
            raise OverfitBatchError("; ".join(str(v) for v in failed))

    @property
    def passed(self) -> bool | None:
        """Whether every check passed (``None`` before training)."""
        return all(v.passed for v in self.verdicts) if self.verdicts else None

    def _check(self, inputs: str, report: TrialReport) -> Verdict:
        losses = report.losses
        initial = losses[0] if losses else math.nan
        final = losses[-1] if losses else math.nan
        required = (self.target_loss if self.target_loss is not None
                    else initial / self.factor)
        passed = report.error is None and math.isfinite(final) and final <= required
        return Verdict(inputs, passed, initial, final, required, self.steps,
                       () if passed else tuple(_hints(report, initial, final)))

    def state_dict(self) -> dict[str, Any]:
        return {"verdicts": [str(v) for v in self.verdicts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # a verdict belongs to the run that made it; a resumed run need not re-check

    def __repr__(self) -> str:
        return f"OverfitBatch(steps={self.steps}, factor={self.factor:g})"


# How the frameworks say that backward found nothing to differentiate (torch; TensorFlow).
_NO_GRADIENT_ERRORS = ("does not require grad", "does not have a grad_fn",
                       "No gradients provided")


def _hints(report: TrialReport, initial: float, final: float) -> list[str]:
    """Likely causes, most specific first."""
    hints = []
    if report.error is not None:
        hints.append(f"training raised: {report.error}")
        if any(marker in report.error for marker in _NO_GRADIENT_ERRORS):
            hints.append("the loss does not depend on any trainable parameter: is the output "
                         "detached from the parameters (detach(), no_grad, stop_gradient), or "
                         "are they all frozen?")
            return hints
        if not report.losses:  # the first forward pass or loss failed: nothing else was seen
            hints.append("the batch did not get through the model and the loss: check the "
                         "shapes and dtypes of x and y against the model's input and the loss")
            return hints
    if report.learning_rates and all(lr == 0 for lr in report.learning_rates):
        hints.append("the learning rate is 0")
    n = report.parameters
    no_gradient = report.no_gradient
    if n == 0 and report.error is None:
        hints.append("the model has no trainable parameters: are they all frozen?")
    elif no_gradient is not None and n and len(no_gradient) == n:
        hints.append(f"none of the {n} parameter tensors got a gradient: is the output "
                     "detached from the parameters (detach(), no_grad, stop_gradient), or "
                     "are they all frozen?")
    elif no_gradient:
        hints.append(f"{len(no_gradient)} of {n} parameter tensors got no gradient "
                     f"(e.g. {', '.join(no_gradient[:3])}): frozen or unused?")
    if n and len(report.unchanged) == n and (no_gradient is None or len(no_gradient) < n):
        hints.append("the optimizer changed no parameter" + (
            ": is the output detached from the parameters (stop_gradient), or are they "
            "frozen?" if no_gradient is None else ""))
    if not math.isfinite(final):
        hints.append("the loss became non-finite: learning rate too high?")
    elif report.error is None and final >= initial:
        hints.append("the loss did not fall at all: check that targets match the outputs "
                     "(labels vs logits, loss reduction) and the learning rate")
    elif report.error is None and not hints:
        hints.append("the loss fell too slowly: more steps, a higher learning rate, or a "
                     "model too small for the batch")
    return hints

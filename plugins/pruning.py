"""Optuna pruning: report a metric to a trial every epoch, stop training when it is pruned.

Docs: docs/plugins/pruning.md
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

from regplug.errors import RegplugWarning, UsageError
from regplug.hookspecs import hookimpl
from regplug.plugin import Plugin
from regplug.run import Run

log = logging.getLogger(__name__)

#: The trial user attribute :class:`OptunaPruning` sets when it prunes a trial: the epoch
#: (from 0). A COMPLETE trial that has it is one whose objective forgot
#: :meth:`~OptunaPruning.raise_if_pruned`.
PRUNED_FLAG = "regplug.pruned_at_epoch"


class TrialLike(Protocol):
    """What :class:`OptunaPruning` needs of a trial: ``optuna.trial.Trial`` (or optuna's
    ``TorchDistributedTrial``, or any object with these two methods)."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class OptunaPruning(Plugin):
    """Report ``monitor`` to an Optuna trial at the end of every epoch; when the study's pruner
    says so, stop training — cleanly — and let the objective raise ``optuna.TrialPruned``.

    At each epoch's end it calls ``trial.report(logs[monitor], step=epoch)`` (epochs count
    from 0, as Optuna's steps do) and ``trial.should_prune()``; a ``True`` is a stop vote,
    ``run.stop(reason)``, with a reason naming the trial, the epoch, the monitor and its value.

    **Where** ``TrialPruned`` **is raised: never inside a hook.** An exception there would
    abort ``fit`` or the trainer in the middle of their epoch-end callbacks, skipping what
    must run at the end of training (``EarlyStopping``'s restore of the best weights, the
    removal of regplug's patches from a Keras model, the trainers' own clean-up). Training
    ends normally by the stop vote, as with early stopping; after ``fit`` / the loop /
    ``trainer.fit`` / ``trainer.train()`` returned, the objective calls
    :meth:`raise_if_pruned`, which raises ``optuna.TrialPruned`` when the trial was pruned.

    **Non-finite values** (NaN, ±inf) are reported as they are (Optuna stores them), and the
    trial is pruned at that epoch without asking the pruner: training does not recover from
    them, and Optuna's pruners disagree about them — ``MedianPruner`` and
    ``PercentilePruner`` prune a NaN only when *every* value so far is NaN (they take the
    best with ``nanmin``), ``WilcoxonPruner`` never prunes such a trial, ``ThresholdPruner``
    and ``SuccessiveHalvingPruner`` do (the latter only at a rung).

    **Epochs already reported** (the same plugin in a later ``fit``, or a run resumed from a
    checkpoint holding this plugin's :meth:`state_dict`) are not reported again — Optuna keeps
    the first value of a step and warns about the second; the new value is logged — but the
    pruner is still asked. A plugin whose trial was pruned keeps voting to stop at every
    epoch's end without consulting the trial again: a pruned trial is over.

    **Distributed training** (DDP, Lightning or the Trainer on several processes): give the
    trial to the process of world rank 0 and ``OptunaPruning(None, monitor=...)`` to the
    others (each process needs the plugin list, in the same order). The logs are averaged over
    the processes before any plugin sees them, so rank 0 reports the mean; its stop vote is
    collective, so every process leaves training after the same epoch. Only rank 0 knows the
    trial was pruned (:attr:`pruned`); the other processes see ``run.should_stop`` / the
    adapter's stop, with "another process voted to stop". ``None`` on rank 0 is refused when
    training begins.

    :param trial: the ``optuna.trial.Trial`` of this objective call (an object with
        ``report`` and ``should_prune``), or ``None`` on processes of world rank > 0.
    :param monitor: the key of the epoch's logs to report, e.g. ``"val_loss"``, the same
        metric the objective returns, so the pruner compares like with like.

    After training: :attr:`pruned`, :attr:`pruned_epoch` (from 0), :attr:`reason`, and
    :attr:`reported` (epoch → value, what this plugin told the trial).

    **Forgetting** :meth:`raise_if_pruned` cannot pass unnoticed: a pruned trial carries the
    user attribute :data:`PRUNED_FLAG` in its study (a COMPLETE trial with it was pruned
    but stored with its truncated value), and a :class:`~regplug.RegplugWarning` names the
    trial when the plugin is discarded without the call.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> class PruneAtStep2:  # a stand-in for optuna.trial.Trial (see the docs for a study)
    ...     number = 7
    ...     def report(self, value, step): self.step = step
    ...     def should_prune(self): return self.step == 2
    >>> pruning = OptunaPruning(PruneAtStep2(), monitor="val_loss")
    >>> loop = NumpyLoop({"w": np.ones(1)}, [pruning])
    >>> [loop.epoch_end({"val_loss": v}) for v in (0.9, 0.8, 0.85)]
    [False, False, True]
    >>> pruning.pruned, pruning.pruned_epoch, pruning.reported
    (True, 2, {0: 0.9, 1: 0.8, 2: 0.85})
    >>> pruning.reason
    'Optuna pruned trial 7 at epoch 3 (step 2): val_loss = 0.85'
    """

    def __init__(self, trial: TrialLike | None, monitor: str) -> None:
        owner = type(self).__name__
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{owner}: argument 'monitor' must be a non-empty log key such as "
                            f"'val_loss', got {monitor!r}")
        if trial is not None and not (callable(getattr(trial, "report", None))
                                      and callable(getattr(trial, "should_prune", None))):
            raise TypeError(f"{owner}: argument 'trial' must be an optuna.trial.Trial (an object "
                            f"with report() and should_prune()), or None on processes of world "
                            f"rank > 0; got {type(trial).__name__}")
        directions = getattr(getattr(trial, "study", None), "directions", None)
        if isinstance(directions, (list, tuple)) and len(directions) > 1:
            raise ValueError(f"{owner}: argument 'trial' belongs to a multi-objective study "
                             f"({len(directions)} directions); Optuna prunes only "
                             "single-objective trials (Trial.report refuses the others)")
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.pruned_epoch: int | None = None
        self.reason: str | None = None
        self.reported: dict[int, float] = {}
        # what the warning about a forgotten raise_if_pruned() needs, without the plugin
        self._unraised: dict[str, Any] = {"trial": self._trial_number(), "epoch": None}
        weakref.finalize(self, _warn_if_unraised, self._unraised)

    # -- hooks ---------------------------------------------------------------------------
    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        if self.trial is None and run.world.rank == 0:
            size = run.world.size
            where = (f"this process is rank 0 of {size}" if size > 1 else
                     "this run is not distributed")
            raise UsageError(
                f"{self.name}: trial=None, but {where}: the process of world rank 0 must "
                "hold the Optuna trial (OptunaPruning(trial, monitor=...)); None is for the "
                "other processes of a distributed run, which follow rank 0's stop vote")

    @hookimpl
    def on_epoch_end(self, run: Run, epoch: int, logs: Mapping[str, float]) -> None:
        if self.pruned:  # a pruned trial is over: stop again, ask nothing more
            run.stop(self.reason or "the trial was pruned", source=self.name)
            return
        if self.trial is None or self.monitor not in logs:
            return  # a missing monitor: the clock warns, naming the keys there are
        reason = self._judge(epoch, float(logs[self.monitor]))
        if reason is not None:
            self.pruned, self.pruned_epoch, self.reason = True, epoch, reason
            log.info("%s: %s", self.name, reason)
            self._flag_pruned(epoch)
            run.stop(reason, source=self.name)

    def _judge(self, epoch: int, value: float) -> str | None:
        """Report ``value`` for ``epoch`` (once) and return why to prune, or ``None``."""
        trial = self.trial
        assert trial is not None
        if epoch in self.reported:
            log.info("%s: epoch %d was already reported to trial %s (%s = %.6g); Optuna keeps "
                     "that value, %.6g is not reported", self.name, epoch + 1,
                     self._trial_number(), self.monitor, self.reported[epoch], value)
        else:
            trial.report(value, step=epoch)
            self.reported[epoch] = value
        at = f"at epoch {epoch + 1} (step {epoch})"
        if not math.isfinite(value):
            return (f"pruned trial {self._trial_number()} {at}: {self.monitor} is {value}, "
                    "a non-finite value (pruned without asking the pruner)")
        if trial.should_prune():
            return f"Optuna pruned trial {self._trial_number()} {at}: {self.monitor} = {value:.6g}"
        return None

    def _flag_pruned(self, epoch: int) -> None:
        """Mark the trial in its study (user attribute :data:`PRUNED_FLAG`: the epoch, from
        0) and arm the warning about a forgotten :meth:`raise_if_pruned`: a trial whose
        objective returns a value instead is stored COMPLETE with its truncated value, and
        the pruner's later decisions compare with it. Only a trial kept in a study (one
        with ``set_user_attr``) is flagged and warned about."""
        set_user_attr = getattr(self.trial, "set_user_attr", None)
        if not callable(set_user_attr):
            return
        set_user_attr(PRUNED_FLAG, epoch)
        self._unraised["epoch"] = epoch

    def _trial_number(self) -> str:
        number = getattr(self.trial, "number", None)
        return "?" if number is None else str(number)

    # -- after training ------------------------------------------------------------------
    def raise_if_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` (with :attr:`reason`) when the trial was pruned.

        Call it in the objective *after* training returned, never from a hook or callback.
        """
        self._unraised["epoch"] = None  # called: nothing was forgotten
        if self.pruned:
            _raise_trial_pruned(self.reason or "the trial was pruned")

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Whether, when and why the trial was pruned, and the values reported per epoch
        (the trial itself is not stored: Optuna's storage holds it)."""
        return {"monitor": self.monitor, "pruned": self.pruned,
                "pruned_epoch": self.pruned_epoch, "reason": self.reason,
                "reported": {int(k): float(v) for k, v in self.reported.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: epochs it reported are not reported again."""
        saved = state.get("monitor", self.monitor)
        if saved != self.monitor:
            raise ValueError(f"{self.name}: the checkpoint was written for monitor={saved!r}, "
                             f"this plugin has monitor={self.monitor!r}")
        reported = {int(k): float(v) for k, v in dict(state.get("reported", {})).items()}
        pruned_epoch = state.get("pruned_epoch")
        reason = state.get("reason")
        self.pruned = bool(state.get("pruned", False))
        self.pruned_epoch = None if pruned_epoch is None else int(pruned_epoch)
        self.reason = None if reason is None else str(reason)
        self.reported = reported
        if self.pruned and callable(getattr(self.trial, "set_user_attr", None)):
            self._unraised["epoch"] = self.pruned_epoch or 0  # still to be raised

    def __repr__(self) -> str:
        trial = "None" if self.trial is None else f"<trial {self._trial_number()}>"
        return f"OptunaPruning({trial}, monitor={self.monitor!r})"


def _warn_if_unraised(unraised: dict[str, Any]) -> None:
    """When an :class:`OptunaPruning` whose trial was pruned is discarded (or the program
    ends) without :meth:`~OptunaPruning.raise_if_pruned` having been called: warn."""
    if unraised["epoch"] is None:
        return
    warnings.warn(
        f"OptunaPruning: trial {unraised['trial']} was pruned at epoch {unraised['epoch'] + 1} "
        "but raise_if_pruned() was never called: an objective that returns a value instead "
        "has Optuna store it COMPLETE with the value of its cut-short training, and the "
        "pruner compares later trials with it; call "
        f"pruning.raise_if_pruned() after training (the study flags such trials with the user "
        f"attribute {PRUNED_FLAG!r})", RegplugWarning, stacklevel=2)


def _raise_trial_pruned(reason: str) -> NoReturn:
    try:
        from optuna import TrialPruned
    except ImportError as err:  # pragma: no cover - a fake trial without optuna installed
        raise ImportError("OptunaPruning.raise_if_pruned needs Optuna: pip install "
                          "'regplug[tune]'") from err
    raise TrialPruned(reason)

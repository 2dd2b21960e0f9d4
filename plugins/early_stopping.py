"""Early stopping: stop when the monitored metric stops improving, keep the best weights.

:class:`EarlyStopping` is the hook layer: it records the monitored metric in a
:class:`~regplug.plugins.MetricHistory`, asks its criteria (``plugins/stopping_criteria.py``:
Keras' patience, Lightning's thresholds, Prechelt's GL/PQ/UP, or your own), keeps and restores
the best epoch's weights, and saves and loads its state for resuming.

Docs: docs/plugins/early-stopping.md
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from regplug.hookspecs import hookimpl
from regplug.plugin import Plugin
from regplug.ranges import IntRange, SearchRange
from regplug.run import Run
from regplug.validation import check_bool, check_choice, check_int, check_real

from ._tracker import MetricTracker
from .stopping_criteria import (
    Criterion,
    DivergenceThreshold,
    GeneralizationLoss,
    MetricHistory,
    NonFinite,
    Patience,
    ProgressQuotient,
    RisingStrips,
    StoppingCriterion,
    StoppingThreshold,
    criterion_name,
    first_stop,
)

log = logging.getLogger(__name__)

CRITERIA: dict[str, str] = {
    "patience": "no improvement for `patience` epochs (Keras' rule)",
    "gl": "generalization loss GL > alpha: validation error alpha percent above its best "
          "(Prechelt's GL_alpha)",
    "pq": "GL / training progress > alpha at the end of a strip of `strip_length` epochs "
          "(Prechelt's PQ_alpha)",
    "up": "validation error higher than a strip earlier at the end of `strips` successive "
          "strips of `strip_length` epochs (Prechelt's UP_s)",
}

# Which criterion each criterion-specific argument belongs to: one given for another
# criterion (or beside criteria=[...]) is refused, since it was meant to matter.
_USED_BY: dict[str, tuple[str, ...]] = {
    "alpha": ("gl", "pq"), "patience": ("patience",), "baseline": ("patience",),
    "strip_length": ("pq", "up"), "strips": ("up",), "train_monitor": ("pq",)}
_CRITERION_CLASSES = ("Patience", "StoppingThreshold", "DivergenceThreshold", "NonFinite",
                      "GeneralizationLoss", "ProgressQuotient", "RisingStrips")


class EarlyStopping(Plugin):
    """Stop training when ``monitor`` stops improving; restore the best epoch's weights.

    Keras' arguments mean what they mean in ``keras.callbacks.EarlyStopping``
    (``monitor``, ``min_delta``, ``patience``, ``mode``, ``baseline``,
    ``restore_best_weights``, ``start_from_epoch``) — with the one difference that
    **restore_best_weights is on by default**. Lightning's ``check_finite``,
    ``stopping_threshold`` and ``divergence_threshold`` are added, and Prechelt's criteria
    (1998) can replace the patience rule (``criterion="gl"|"pq"|"up"``), as can criteria of
    your own (``criteria=[...]``).

    Epochs are counted from 0 in :attr:`best_epoch` and :attr:`stopped_epoch` (as in
    ``run.epoch`` and Keras), from 1 in the messages (as in progress bars).

    :param monitor: metric to watch (a key of the epoch's logs), e.g. ``"val_loss"``.
    :param min_delta: smallest change that counts as an improvement (``>= 0``).
    :param patience: epochs without improvement before stopping (``>= 0``).
    :param mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's name).
    :param baseline: as in Keras: the patience count restarts only on epochs that beat
        both the best value so far and ``baseline``; ``None`` for no baseline.
    :param restore_best_weights: at the end of training — stopped early or not — put back
        the weights (and buffers, e.g. batch-norm statistics) of the best epoch, bit for bit.
    :param start_from_epoch: epochs to ignore at the start (warm-up).
    :param check_finite: stop as soon as the metric is NaN or infinite (such an epoch
        never becomes the best).
    :param stopping_threshold: stop as soon as the metric is better than this value.
    :param divergence_threshold: stop as soon as the metric is worse than this value.
    :param criterion: ``"patience"`` (default), ``"gl"``, ``"pq"`` or ``"up"`` (see
        :data:`CRITERIA`). Prechelt's criteria need a metric to minimize (an error or loss).
    :param alpha: threshold of ``gl`` (percent, default 5) and ``pq`` (default 0.5).
    :param strip_length: epochs per strip (``k``) for ``pq`` and ``up`` (default 5).
    :param strips: successive rising strips that stop ``up`` (``s``, default 3).
    :param train_monitor: the training error ``pq`` measures progress on (default
        ``"loss"``).
    :param criteria: stopping criteria used *instead of* ``criterion`` (and its arguments):
        objects with ``evaluate(history) -> (stop, reason)``, built-in
        (:class:`~regplug.plugins.Patience`, …) or your own; the first that says stop decides.
        ``check_finite`` and the thresholds still apply, before them.
    :param best_weights_on: ``"device"`` (default: one copy beside the model, reused at
        every improvement) or ``"host"`` (in host memory, for models that barely fit).
    :param verbose: ``1`` prints when it stops and when it restores, as Keras' callback does.

    The restore happens at the end of *each* training run: a Keras ``fit`` call, or a
    PyTorch ``with attach(...)`` block. Fitting in chunks (``fit(epochs=2)``, then
    ``fit(initial_epoch=2, ...)``) therefore rewinds to the best epoch between chunks; keep
    one ``fit``, or pass ``restore_best_weights=False`` there. When training ends with an
    exception (an error, Ctrl-C), nothing is restored: the weights stay as the error left them.

    After training, :attr:`stop_reason` says why it stopped (``None`` if it did not), and
    :attr:`best`, :attr:`best_epoch` what it kept; :attr:`history` is what the criteria saw.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> stopper = EarlyStopping(patience=2)
    >>> loop = NumpyLoop({"w": np.ones((1, 1))}, [stopper])
    >>> for val_loss in [0.9, 0.7, 0.8, 0.75, 0.6]:
    ...     if loop.epoch_end({"val_loss": val_loss}):
    ...         break
    >>> stopper.stop_reason
    'patience exhausted at epoch 4: val_loss did not improve for 2 epochs; best 0.7 at epoch 2'
    """

    # Patience 1 stops at the first noisy bump of the validation loss (too eager); 30 outlasts
    # the comparison's runs (no effect). Log: 1 vs 3 matters, 25 vs 27 does not.
    tunable: ClassVar[Mapping[str, SearchRange]] = {"patience": IntRange(1, 30, log=True)}

    def __init__(self, monitor: str = "val_loss", *, min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = True, start_from_epoch: int = 0,
                 check_finite: bool = True, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, criterion: str = "patience",
                 alpha: float | None = None, strip_length: int | None = None,
                 strips: int | None = None, train_monitor: str | None = None,
                 criteria: Sequence[Criterion] | None = None,
                 best_weights_on: str = "device", verbose: int = 0) -> None:
        owner = type(self).__name__
        self.tracker = MetricTracker(owner, monitor, mode, min_delta)
        self.monitor, self.mode, self.min_delta = monitor, self.tracker.mode, self.tracker.min_delta
        self.restore_best_weights = check_bool(owner, "restore_best_weights",
                                                restore_best_weights)
        self.start_from_epoch = check_int(owner, "start_from_epoch", start_from_epoch)
        self.check_finite = check_bool(owner, "check_finite", check_finite)
        unset = type(patience) is int and patience == 0  # Keras' default: not "given"
        given = {"alpha": alpha, "patience": None if unset else patience, "baseline": baseline,
                 "strip_length": strip_length, "strips": strips, "train_monitor": train_monitor}
        with _as_argument_of(owner):
            self.criterion, main = _main_criteria(owner, criterion, criteria, given)
            for each in main:
                check = getattr(each, "check", None)
                if callable(check):
                    check(monitor, self.mode)
            guards = _guards(owner, self.tracker, self.check_finite, stopping_threshold,
                             divergence_threshold)
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.divergence_threshold = (None if divergence_threshold is None
                                     else float(divergence_threshold))
        #: Every criterion asked at the end of an epoch, in order.
        self.criteria: tuple[Criterion, ...] = (*guards, *main)
        self._main = tuple(main)
        self._describe_builtin(main[0] if self.criterion != "custom" else None)
        self.verbose = check_int(owner, "verbose", verbose)
        self.best_weights_on = check_choice(owner, "best_weights_on", best_weights_on,
                                            ("device", "host"))
        self.requires = ("model_state",) if self.restore_best_weights else ()
        self._run: Run | None = None
        self._training = False
        self._loaded_weights: dict[str, Any] | None = None
        self._resumed = False
        self._reset()

    def _describe_builtin(self, main: Criterion | None) -> None:
        """The built-in criterion's arguments as attributes (their defaults when unused)."""
        self.patience = main.patience if isinstance(main, Patience) else 0
        self.baseline = main.baseline if isinstance(main, Patience) else None
        self.alpha = (main.alpha if isinstance(main, (GeneralizationLoss, ProgressQuotient))
                      else 0.0)
        self.strip_length = (main.strip_length if isinstance(main, (ProgressQuotient,
                                                                    RisingStrips)) else 5)
        self.strips = main.strips if isinstance(main, RisingStrips) else 3
        self.train_monitor = main.train_monitor if isinstance(main, ProgressQuotient) else "loss"

    def _reset(self) -> None:
        #: The monitored metric's record this run: what the criteria decide on.
        self.history = MetricHistory(self.monitor, self.mode, self.min_delta)
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None
        self.restored_epoch: int | None = None
        self._best_weights: Any = None

    # -- what the history says ---------------------------------------------------------------
    @property
    def best(self) -> float | None:
        """The best monitored value so far (``None`` before the first finite one)."""
        return self.history.best

    @property
    def best_epoch(self) -> int | None:
        """The epoch of :attr:`best`, counted from 0."""
        return self.history.best_epoch

    @property
    def wait(self) -> int:
        """Keras' patience count: epochs since it last restarted."""
        patience = next((c for c in self._main if isinstance(c, Patience)), None)
        return (patience.wait(self.history) if patience is not None
                else self.history.since_improvement())

    # -- hooks ---------------------------------------------------------------------------
    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self._run = run
        self._training = True
        if self._resumed:  # load_state_dict came first: continue that run
            self._resumed = False
            if self._loaded_weights is not None and self.restore_best_weights:
                self._best_snapshot(run)  # names and shapes checked now, not at the end
            return
        self._reset()

    @hookimpl
    def on_epoch_end(self, run: Run, epoch: int, logs: Mapping[str, float]) -> None:
        current = self.tracker.read(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        history = self.history.append(epoch, current, logs)
        if history.improved and self.restore_best_weights:
            self._keep_weights(run)
        stop, reason = first_stop(self.criteria, history)
        if not (self.check_finite and not math.isfinite(current)):
            self.history = history  # an epoch check_finite stops on is no measurement
        if stop:
            self.stopped_epoch = epoch
            self.stop_reason = reason
            run.stop(str(reason), source=self.name)
            self._say(f"Epoch {epoch + 1}: early stopping: {reason}")

    @hookimpl
    def on_train_end(self, run: Run) -> None:
        self._training = False
        if not self.restore_best_weights or self.best_epoch is None:
            return
        if run.exception is not None:  # keep the weights the error left, for inspection
            log.info("%s: training ended with %s; the best weights (epoch %d) are not "
                     "restored", self.name, type(run.exception).__name__, self.best_epoch + 1)
            return
        snapshot = self._best_snapshot(run)
        if snapshot is not None:
            run.model_state.restore(snapshot)
            self.restored_epoch = self.best_epoch
            self._say(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message)
        log.info("%s: %s", self.name, message)

    # -- best weights ----------------------------------------------------------------------
    def _keep_weights(self, run: Run) -> None:
        self._loaded_weights = None
        self._best_weights = run.model_state.snapshot(
            into=self._best_weights, host=self.best_weights_on == "host")

    def _best_snapshot(self, run: Run) -> Any:
        if self._best_weights is None and self._loaded_weights is not None:
            self._best_weights = run.model_state.from_numpy(self._loaded_weights)
            self._loaded_weights = None
        return self._best_weights

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The history, the counters read from it, and the best weights as NumPy arrays."""
        weights = self._loaded_weights
        if self._best_weights is not None and self._run is not None:
            weights = self._run.model_state.to_numpy(self._best_weights)
        history = self.history
        return {"monitor": self.monitor, "criterion": self.criterion,
                "criteria": [criterion_name(c) for c in self._main], "wait": self.wait,
                "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "stop_reason": self.stop_reason,
                "history": {"epochs": list(history.epochs), "values": list(history.values),
                            "logs": [dict(entry) for entry in history.logs]},
                "best_weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run from :meth:`state_dict` (before or after training begins). Also
        reads the state regplug 0.1.0 wrote (counters and Prechelt's series, no history)."""
        for key, mine in (("monitor", self.monitor), ("mode", self.mode),
                          ("criterion", self.criterion),
                          ("criteria", [criterion_name(c) for c in self._main])):
            theirs = state.get(key, mine)
            if (list(theirs) if key == "criteria" else theirs) != mine:
                raise ValueError(f"{self.name}: the checkpoint was written for {key}="
                                 f"{theirs!r}, this plugin has {key}={mine!r}")
        weights, snapshot = state.get("best_weights"), None
        if weights is not None and self._training and self._run is not None:
            snapshot = self._run.model_state.from_numpy(weights)  # refuses before any change
        wait = int(state["wait"])
        history = (self._history_from(state["history"]) if "history" in state
                   else self._history_from_0_1(state, wait))
        self._reset()
        self.history = history
        self.stopped_epoch = state.get("stopped_epoch")
        self.stop_reason = state.get("stop_reason")
        self._best_weights = snapshot
        self._loaded_weights = weights if snapshot is None else None
        self._resumed = not self._training

    def _history_from(self, saved: Mapping[str, Any]) -> MetricHistory:
        return MetricHistory.of(saved["values"], monitor=self.monitor, mode=self.mode,
                                min_delta=self.min_delta, epochs=saved["epochs"],
                                logs=[{str(k): float(v) for k, v in entry.items()}
                                      for entry in saved["logs"]])

    def _history_from_0_1(self, state: Mapping[str, Any], wait: int) -> MetricHistory:
        """A history that makes the criteria decide as 0.1.0's counters would: Prechelt's
        series as saved; for patience, ``best`` then as many non-improving entries as
        ``wait`` says (best is never beaten by itself)."""
        best = None if state["best"] is None else float(state["best"])
        best_epoch = 0 if state["best_epoch"] is None else int(state["best_epoch"])
        if self.criterion in ("gl", "pq", "up"):
            values = [float(v) for v in state.get("val", [])]
            train = [float(v) for v in state.get("train", [])] or [math.nan] * len(values)
            logs = [{self.train_monitor: t} for t in train]
        else:
            restarts = self.baseline is None or (best is not None and self.tracker.improves(
                best, self.baseline))
            count = (wait + 1 if restarts else max(wait, 1)) if best is not None else wait
            values = [math.nan if best is None else best] * count
            logs = [{} for _ in values]
        probe = MetricHistory.of(values, monitor=self.monitor, mode=self.mode,
                                 min_delta=self.min_delta, logs=logs)
        shift = best_epoch - (probe.best_epoch or 0)
        return MetricHistory.of(values, monitor=self.monitor, mode=self.mode,
                                min_delta=self.min_delta, logs=logs,
                                epochs=[e + shift for e in probe.epochs])

    def __repr__(self) -> str:
        args = [f"monitor={self.monitor!r}"]
        if self.criterion == "patience":
            args.append(f"patience={self.patience}")
        elif self.criterion == "custom":
            args.append(f"criteria={list(self._main)!r}")
        else:
            args.append(f"criterion={self.criterion!r}")
            if self.criterion in ("gl", "pq"):
                args.append(f"alpha={self.alpha:g}")
        for arg in ("min_delta", "baseline", "stopping_threshold", "divergence_threshold"):
            value = getattr(self, arg)
            if value:
                args.append(f"{arg}={value:g}")
        if not self.restore_best_weights:
            args.append("restore_best_weights=False")
        return f"EarlyStopping({', '.join(args)})"


def _builtin(criterion: str, given: Mapping[str, Any]) -> StoppingCriterion:
    """The built-in criterion ``criterion`` names, with the arguments given for it."""
    args = {k: v for k, v in given.items() if v is not None}
    if criterion == "patience":
        return Patience(0 if given["patience"] is None else given["patience"],
                        baseline=given["baseline"])
    if criterion == "gl":
        return GeneralizationLoss(**args)
    if criterion == "pq":
        return ProgressQuotient(**args)
    return RisingStrips(**args)


def _main_criteria(owner: str, criterion: str, criteria: Sequence[Criterion] | None,
                   given: Mapping[str, Any]) -> tuple[str, list[Criterion]]:
    """The criterion's name (``"custom"`` for ``criteria=[...]``) and the main criteria."""
    if criteria is None:
        name = check_choice(owner, "criterion", criterion, tuple(CRITERIA))
        _refuse_unused(owner, name, given)
        return name, [_builtin(name, given)]
    if criterion != "patience":
        raise ValueError(f"{owner}: pass criterion={criterion!r} or criteria=[...], not both")
    _refuse_unused(owner, "custom", given)
    return "custom", _check_criteria(owner, criteria)


def _guards(owner: str, tracker: MetricTracker, check_finite: bool,
            stopping_threshold: float | None,
            divergence_threshold: float | None) -> list[Criterion]:
    """The criteria asked first: the non-finite check and Lightning's thresholds."""
    guards: list[Criterion] = [NonFinite()] if check_finite else []
    if stopping_threshold is not None:
        check_real(owner, "stopping_threshold", stopping_threshold, low=-math.inf)
        guards.append(StoppingThreshold(stopping_threshold))
    if divergence_threshold is not None:
        check_real(owner, "divergence_threshold", divergence_threshold, low=-math.inf)
        guards.append(DivergenceThreshold(divergence_threshold))
    if (stopping_threshold is not None and divergence_threshold is not None
            and not tracker.better(stopping_threshold, divergence_threshold)):
        raise ValueError(
            f"{owner}: stopping_threshold={stopping_threshold:g} must be better than "
            f"divergence_threshold={divergence_threshold:g} in mode={tracker.mode!r}, "
            "or every value would stop training at once")
    return guards


def _refuse_unused(owner: str, criterion: str, given: Mapping[str, Any]) -> None:
    for arg, used_by in _USED_BY.items():
        if given[arg] is not None and criterion not in used_by:
            where = ("with criteria=[...], give it to the criterion in the list"
                     if criterion == "custom" else f"not {criterion!r}")
            raise ValueError(f"{owner}: argument {arg!r} applies to criterion "
                             f"{' or '.join(map(repr, used_by))}, {where}")


def _check_criteria(owner: str, criteria: object) -> list[Criterion]:
    if isinstance(criteria, (str, bytes)) or not isinstance(criteria, Sequence) or not criteria:
        raise TypeError(f"{owner}: argument 'criteria' must be a non-empty list of stopping "
                        f"criteria (objects with evaluate(history) -> (stop, reason)), "
                        f"got {criteria!r}")
    for each in criteria:
        if not callable(getattr(each, "evaluate", None)):
            raise TypeError(f"{owner}: argument 'criteria' holds {each!r}, which has no "
                            "evaluate(history) -> (stop, reason) method")
    return list(criteria)


@contextmanager
def _as_argument_of(owner: str) -> Iterator[None]:
    """A built-in criterion's argument error, named as the plugin's argument it came from."""
    try:
        yield
    except (TypeError, ValueError) as err:
        head, sep, rest = str(err).partition(": ")
        if sep and head in _CRITERION_CLASSES:
            raise type(err)(f"{owner}: {rest}") from None
        raise

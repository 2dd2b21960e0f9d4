"""Early stopping: stop when the monitored metric stops improving, keep the best weights."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from regplug import functional as F
from regplug.hookspecs import hookimpl
from regplug.plugin import Plugin
from regplug.run import Run
from regplug.space import IntRange, SearchRange
from regplug.validation import check_bool, check_choice, check_int, check_real

from ._tracker import MetricTracker

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
_DEFAULT_ALPHA = {"gl": 5.0, "pq": 0.5}


class EarlyStopping(Plugin):
    """Stop training when ``monitor`` stops improving; restore the best epoch's weights.

    Keras' arguments mean what they mean in ``keras.callbacks.EarlyStopping``
    (``monitor``, ``min_delta``, ``patience``, ``mode``, ``baseline``,
    ``restore_best_weights``, ``start_from_epoch``) — with the one difference that
    **restore_best_weights is on by default**. Lightning's ``check_finite``,
    ``stopping_threshold`` and ``divergence_threshold`` are added, and Prechelt's criteria
    (1998) can replace the patience rule (``criterion="gl"|"pq"|"up"``).

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
    :param best_weights_on: ``"device"`` (default: one copy beside the model, reused at
        every improvement) or ``"host"`` (in host memory, for models that barely fit).
    :param verbose: ``1`` prints when it stops and when it restores, as Keras' callback does.

    The restore happens at the end of *each* training run: a Keras ``fit`` call, or a
    PyTorch ``with attach(...)`` block. Fitting in chunks (``fit(epochs=2)``, then
    ``fit(initial_epoch=2, ...)``) therefore rewinds to the best epoch between chunks; keep
    one ``fit``, or pass ``restore_best_weights=False`` there. When training ends with an
    exception (an error, Ctrl-C), nothing is restored: the weights stay as the error left them.

    After training, :attr:`stop_reason` says why it stopped (``None`` if it did not), and
    :attr:`best`, :attr:`best_epoch` what it kept.

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
                 best_weights_on: str = "device", verbose: int = 0) -> None:
        owner = type(self).__name__
        self.tracker = MetricTracker(owner, monitor, mode, min_delta)
        self.monitor, self.mode, self.min_delta = monitor, self.tracker.mode, self.tracker.min_delta
        self.patience = check_int(owner, "patience", patience)
        self.baseline = _optional_real(owner, "baseline", baseline)
        self.restore_best_weights = check_bool(owner, "restore_best_weights",
                                                restore_best_weights)
        self.start_from_epoch = check_int(owner, "start_from_epoch", start_from_epoch)
        self.check_finite = check_bool(owner, "check_finite", check_finite)
        self.stopping_threshold = _optional_real(owner, "stopping_threshold", stopping_threshold)
        self.divergence_threshold = _optional_real(owner, "divergence_threshold",
                                                   divergence_threshold)
        self.criterion = check_choice(owner, "criterion", criterion, tuple(CRITERIA))
        if self.criterion != "patience" and self.mode != "min":
            raise ValueError(
                f"{owner}: criterion={criterion!r} (Prechelt's) measures a validation *error*, "
                f"but {monitor!r} is maximized (mode='max'); monitor a loss or error, or use "
                "criterion='patience'")
        # An argument the chosen criterion would ignore is refused: it was meant to matter.
        for arg, given, used_by in (
                ("alpha", alpha is not None, ("gl", "pq")),
                ("patience", patience != 0, ("patience",)),
                ("baseline", baseline is not None, ("patience",)),
                ("strip_length", strip_length is not None, ("pq", "up")),
                ("strips", strips is not None, ("up",)),
                ("train_monitor", train_monitor is not None, ("pq",))):
            if given and self.criterion not in used_by:
                raise ValueError(
                    f"{owner}: argument {arg!r} applies to criterion "
                    f"{' or '.join(map(repr, used_by))}, not {self.criterion!r}")
        self.alpha = check_real(owner, "alpha", alpha if alpha is not None
                                else _DEFAULT_ALPHA.get(self.criterion, 0.0))
        self.strip_length = check_int(owner, "strip_length",
                                      5 if strip_length is None else strip_length, low=1)
        self.strips = check_int(owner, "strips", 3 if strips is None else strips, low=1)
        train_monitor = "loss" if train_monitor is None else train_monitor
        if not isinstance(train_monitor, str) or not train_monitor:
            raise TypeError(f"{owner}: argument 'train_monitor' must be a metric name, "
                            f"got {train_monitor!r}")
        self.train_monitor = train_monitor
        if (self.stopping_threshold is not None and self.divergence_threshold is not None
                and not self.tracker.better(self.stopping_threshold, self.divergence_threshold)):
            raise ValueError(
                f"{owner}: stopping_threshold={self.stopping_threshold:g} must be better than "
                f"divergence_threshold={self.divergence_threshold:g} in mode={self.mode!r}, "
                "or every value would stop training at once")
        self.verbose = check_int(owner, "verbose", verbose)
        self.best_weights_on = check_choice(owner, "best_weights_on", best_weights_on,
                                            ("device", "host"))
        self.requires = ("model_state",) if self.restore_best_weights else ()
        self._run: Run | None = None
        self._training = False
        self._loaded_weights: dict[str, Any] | None = None
        self._resumed = False
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None
        self.restored_epoch: int | None = None
        self._val: list[float] = []      # monitored values since start_from_epoch
        self._train: list[float] = []    # train_monitor values, same epochs (pq)
        self._rising = 0                 # successive rising strips (up)
        self._best_weights: Any = None

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
        reason = self._update(run, epoch, current, logs)
        if reason is not None:
            self.stopped_epoch = epoch
            self.stop_reason = reason
            run.stop(reason, source=self.name)
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

    # -- the decision ----------------------------------------------------------------------
    def _update(self, run: Run, epoch: int, current: float,
                logs: Mapping[str, float]) -> str | None:
        """Record this epoch; return the reason to stop, or ``None``."""
        at = f"at epoch {epoch + 1}"
        finite = math.isfinite(current)
        if not finite and self.check_finite:
            return f"{self.monitor} is {current} {at}{self._best_text()}"
        tracker = self.tracker
        self.wait += 1
        # A non-finite value (check_finite=False) is never an improvement, as in Keras; it
        # counts toward patience, and Prechelt's series skip it.
        improved = finite and tracker.improves(current, self.best)
        if improved:
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self._keep_weights(run)
            if self.baseline is None or tracker.improves(current, self.baseline):
                self.wait = 0
        if not finite:
            if self.criterion == "patience" and self.wait >= self.patience and epoch > 0:
                return (f"patience exhausted {at}: {self.monitor} did not improve for "
                        f"{self.wait} epoch{'s' if self.wait != 1 else ''} (it is {current})"
                        f"{self._best_text(';')}")
            return None
        if self.stopping_threshold is not None and tracker.better(current,
                                                                  self.stopping_threshold):
            return (f"{self.monitor} = {current:.6g} reached the stopping threshold "
                    f"{self.stopping_threshold:g} {at}")
        if self.divergence_threshold is not None and tracker.better(self.divergence_threshold,
                                                                    current):
            return (f"{self.monitor} = {current:.6g} diverged beyond "
                    f"{self.divergence_threshold:g} {at}{self._best_text()}")
        if self.criterion == "patience":
            if not improved and self.wait >= self.patience and epoch > 0:
                return (f"patience exhausted {at}: {self.monitor} did not improve for "
                        f"{self.wait} epoch{'s' if self.wait != 1 else ''}{self._best_text(';')}")
            return None
        return self._prechelt(current, logs, at)

    def _prechelt(self, current: float, logs: Mapping[str, float], at: str) -> str | None:
        best = self.best if self.best is not None else current
        self._val.append(current)
        if self.criterion == "gl":
            gl = F.generalization_loss(current, best)
            if gl > self.alpha:
                return (f"generalization loss GL = {gl:.3g}% > {self.alpha:g}% {at}: "
                        f"{self.monitor} {current:.6g}{self._best_text(' vs')}")
            return None
        k = self.strip_length
        if self.criterion == "pq":
            train = logs.get(self.train_monitor)
            if train is None:
                raise ValueError(f"{type(self).__name__}: criterion 'pq' needs the training error "
                               f"{self.train_monitor!r} in the logs of every epoch (set "
                               "train_monitor to a key that is there)")
            self._train.append(float(train))
        if len(self._val) % k:
            return None  # Prechelt evaluates pq and up only at the end of a strip
        if self.criterion == "pq":
            pq = F.progress_quotient(current, best, self._train[-k:])
            if pq > self.alpha:
                return (f"progress quotient PQ = {pq:.3g} > {self.alpha:g} {at}: "
                        f"{self.monitor} {current:.6g}{self._best_text(' vs')}")
            return None
        previous = self._val[-k - 1] if len(self._val) > k else None
        self._rising = self._rising + 1 if previous is not None and current > previous else 0
        if self._rising >= self.strips:
            return (f"{self.monitor} rose in {self._rising} successive strips of {k} epochs "
                    f"{at}{self._best_text(';')}")
        return None

    def _best_text(self, sep: str = ",") -> str:
        if self.best is None or self.best_epoch is None:
            return ""
        return f"{sep} best {self.best:.6g} at epoch {self.best_epoch + 1}"

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
        """Counters, best value and epoch, and the best weights as NumPy arrays."""
        weights = self._loaded_weights
        if self._best_weights is not None and self._run is not None:
            weights = self._run.model_state.to_numpy(self._best_weights)
        return {"monitor": self.monitor, "criterion": self.criterion, "wait": self.wait,
                "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "stop_reason": self.stop_reason,
                "val": list(self._val), "train": list(self._train), "rising": self._rising,
                "best_weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run from :meth:`state_dict` (before or after training begins)."""
        for key, mine in (("monitor", self.monitor), ("mode", self.mode),
                          ("criterion", self.criterion)):
            if state.get(key, mine) != mine:
                raise ValueError(f"{self.name}: the checkpoint was written for {key}="
                                 f"{state[key]!r}, this plugin has {key}={mine!r}")
        weights, snapshot = state.get("best_weights"), None
        if weights is not None and self._training and self._run is not None:
            snapshot = self._run.model_state.from_numpy(weights)  # refuses before any change
        self._reset()
        self.wait = int(state["wait"])
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.stopped_epoch = state.get("stopped_epoch")
        self.stop_reason = state.get("stop_reason")
        self._val = [float(v) for v in state.get("val", [])]
        self._train = [float(v) for v in state.get("train", [])]
        self._rising = int(state.get("rising", 0))
        self._best_weights = snapshot
        self._loaded_weights = weights if snapshot is None else None
        self._resumed = not self._training

    def __repr__(self) -> str:
        args = [f"monitor={self.monitor!r}"]
        if self.criterion == "patience":
            args.append(f"patience={self.patience}")
        else:
            args.append(f"criterion={self.criterion!r}")
            if self.criterion in _DEFAULT_ALPHA:
                args.append(f"alpha={self.alpha:g}")
        for arg in ("min_delta", "baseline", "stopping_threshold", "divergence_threshold"):
            value = getattr(self, arg)
            if value:
                args.append(f"{arg}={value:g}")
        if not self.restore_best_weights:
            args.append("restore_best_weights=False")
        return f"EarlyStopping({', '.join(args)})"


def _optional_real(owner: str, arg: str, value: float | None) -> float | None:
    if value is None:
        return None
    return check_real(owner, arg, value, low=-math.inf)


"""Stopping criteria: the pure decisions :class:`~regplug.plugins.EarlyStopping` composes.

A criterion is any object with ``evaluate(history) -> (stop, reason)``: given the
:class:`MetricHistory` of the monitored metric so far, it says whether to stop and why. It keeps
no state of its own, so a run resumed from a checkpoint (which holds the history) decides
exactly as the uninterrupted one. Built in: Keras' patience rule (:class:`Patience`), Lightning's
thresholds (:class:`StoppingThreshold`, :class:`DivergenceThreshold`, :class:`NonFinite`) and
Prechelt's (1998) :class:`GeneralizationLoss` (GL), :class:`ProgressQuotient` (PQ) and
:class:`RisingStrips` (UP). No framework is imported here.

Docs: docs/plugins/early-stopping.md
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

from regplug import functional as F
from regplug.plugin import snake_case
from regplug.validation import check_int, check_real

from ._tracker import improves_like_keras

__all__ = ["Decision", "MetricHistory", "Criterion", "StoppingCriterion", "Patience",
           "StoppingThreshold", "DivergenceThreshold", "NonFinite", "GeneralizationLoss",
           "ProgressQuotient", "RisingStrips", "first_stop"]

#: What a criterion returns: ``(stop, reason)``; the reason says why (``None`` to go on).
Decision: TypeAlias = tuple[bool, str | None]

_GO_ON: Decision = (False, None)


@dataclass(frozen=True, eq=False)
class MetricHistory:
    """The monitored metric's record so far: what every criterion decides on (immutable).

    One entry per *recorded* epoch: an epoch whose logs held ``monitor``, from
    ``start_from_epoch`` on. Values may be NaN or infinite; such a value never improves.

    :param monitor: the metric's name (a key of the epoch's logs), for messages.
    :param mode: ``"min"`` or ``"max"``: which way is better.
    :param min_delta: smallest change that counts as an improvement (Keras' rule, decided
        in float32 as Keras does).
    :param epochs: each entry's epoch, counted from 0 (messages count from 1).
    :param values: each entry's monitored value.
    :param logs: each entry's whole logs (e.g. the training ``loss`` :class:`ProgressQuotient`
        needs); read them, never change them.

    Derived: ``improvements``, the indexes of the entries that set a new best, and
    ``finite_indexes``, those of the finite values (the series Prechelt's criteria measure).
    :meth:`of` builds one from a list of values, :meth:`append` adds an epoch.

    >>> h = MetricHistory.of([0.9, 0.7, 0.8, 0.75])
    >>> h.best, h.best_epoch, h.improvements, h.improved, h.epoch, h.current
    (0.7, 1, (0, 1), False, 3, 0.75)
    """

    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0
    epochs: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    logs: tuple[Mapping[str, float], ...] = ()
    improvements: tuple[int, ...] = field(init=False, default=())
    finite_indexes: tuple[int, ...] = field(init=False, default=())
    _prefix: InitVar[MetricHistory | None] = None

    def __post_init__(self, _prefix: MetricHistory | None) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"MetricHistory: argument 'mode' must be 'min' or 'max', "
                             f"got {self.mode!r}")
        if not len(self.epochs) == len(self.values) == len(self.logs):
            raise ValueError(f"MetricHistory: 'epochs', 'values' and 'logs' must have one entry "
                             f"per epoch each, got {len(self.epochs)}, {len(self.values)} and "
                             f"{len(self.logs)}")
        start, found, finite = ((len(_prefix.values), list(_prefix.improvements),
                                 list(_prefix.finite_indexes)) if _prefix else (0, [], []))
        best = self.values[found[-1]] if found else None
        for index in range(start, len(self.values)):  # only the new entry after append()
            value = self.values[index]
            if math.isfinite(value):
                finite.append(index)
                if self.improves(value, best):
                    best = value
                    found.append(index)
        object.__setattr__(self, "improvements", tuple(found))
        object.__setattr__(self, "finite_indexes", tuple(finite))

    @classmethod
    def of(cls, values: Iterable[float], *, monitor: str = "val_loss", mode: str = "min",
           min_delta: float = 0.0, epochs: Iterable[int] | None = None,
           logs: Iterable[Mapping[str, float]] | None = None) -> MetricHistory:
        """A history from a series of values (epochs 0, 1, … unless given; logs hold only
        the monitored value unless given) — for tests and for trying a criterion out."""
        values = tuple(float(v) for v in values)
        epochs = tuple(range(len(values))) if epochs is None else tuple(int(e) for e in epochs)
        logs = (tuple({monitor: v} for v in values) if logs is None
                else tuple({**dict(entry), monitor: v} for entry, v in zip(logs, values)))
        return cls(monitor, mode, float(min_delta), epochs, values, logs)

    def append(self, epoch: int, value: float,
               logs: Mapping[str, float] | None = None) -> MetricHistory:
        """A new history with one more epoch (this one is left as it is)."""
        entry = dict(logs) if logs is not None else {}
        entry[self.monitor] = float(value)
        return MetricHistory(self.monitor, self.mode, self.min_delta, (*self.epochs, int(epoch)),
                             (*self.values, float(value)), (*self.logs, entry), self)

    # -- the improvement rule -----------------------------------------------------------------
    def improves(self, value: float, reference: float | None) -> bool:
        """Whether ``value`` beats ``reference`` by more than ``min_delta`` (Keras' test, in
        float32); any value improves on ``None``."""
        if reference is None:
            return True
        return improves_like_keras(value, reference, self.min_delta, self.mode)

    def better(self, value: float, reference: float) -> bool:
        """Whether ``value`` is strictly better than ``reference`` (no ``min_delta``)."""
        return value < reference if self.mode == "min" else value > reference

    # -- derived --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.values)

    @property
    def current(self) -> float:
        """This epoch's value (the last entry)."""
        return self.values[-1]

    @property
    def epoch(self) -> int:
        """This epoch, counted from 0."""
        return self.epochs[-1]

    @property
    def epoch_logs(self) -> Mapping[str, float]:
        """This epoch's logs."""
        return self.logs[-1]

    @property
    def best(self) -> float | None:
        """The best value so far (``None`` before the first finite value)."""
        return self.values[self.improvements[-1]] if self.improvements else None

    @property
    def best_epoch(self) -> int | None:
        """The epoch of :attr:`best`, counted from 0."""
        return self.epochs[self.improvements[-1]] if self.improvements else None

    @property
    def improved(self) -> bool:
        """Whether this epoch set a new best."""
        return bool(self.improvements) and self.improvements[-1] == len(self.values) - 1

    def since_improvement(self) -> int:
        """Entries since the last improvement (all of them when there was none)."""
        last = self.improvements[-1] if self.improvements else -1
        return len(self.values) - 1 - last

    def describe_best(self, sep: str = ",") -> str:
        """``", best 0.7 at epoch 2"`` (epochs from 1) for a reason; ``""`` before any."""
        best, epoch = self.best, self.best_epoch
        if best is None or epoch is None:
            return ""
        return f"{sep} best {best:.6g} at epoch {epoch + 1}"


@runtime_checkable
class Criterion(Protocol):
    """What :class:`~regplug.plugins.EarlyStopping` needs of a criterion: one pure method."""

    def evaluate(self, history: MetricHistory) -> Decision:
        """``(True, reason)`` to stop after this epoch, ``(False, None)`` to go on; the
        history holds at least this epoch."""
        ...


class StoppingCriterion:
    """Optional base class of criteria: a ``name`` (for messages and checkpoints), a
    :meth:`check` of the monitor and a ``repr``. Subclasses implement :meth:`evaluate`,
    deciding from the history alone (no state: resuming stays exact)."""

    #: Names the criterion in checkpoints; defaults to the class name in snake case.
    name: str = "criterion"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = snake_case(cls.__name__)

    def evaluate(self, history: MetricHistory) -> Decision:
        """``(True, reason)`` to stop after this epoch, ``(False, None)`` to go on."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(history)")

    def check(self, monitor: str, mode: str) -> None:
        """Refuse, when the plugin is built, a monitor this criterion cannot judge."""

    def _args(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._args().items())
        return f"{type(self).__name__}({args})"


def _epochs(count: int) -> str:
    return f"{count} epoch{'s' if count != 1 else ''}"


class Patience(StoppingCriterion):
    """Keras' rule: stop when ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs; never at epoch 0.

    :param patience: epochs without improvement before stopping (``>= 0``).
    :param baseline: the count restarts only on epochs that beat both the best value so far
        and ``baseline`` (Keras' ``baseline``); ``None`` for no baseline.

    >>> Patience(2).evaluate(MetricHistory.of([0.9, 0.7, 0.8, 0.75]))
    (True, 'patience exhausted at epoch 4: val_loss did not improve for 2 epochs;
    best 0.7 at epoch 2')
    """

    name = "patience"

    def __init__(self, patience: int = 0, *, baseline: float | None = None) -> None:
        owner = type(self).__name__
        self.patience = check_int(owner, "patience", patience)
        self.baseline = (None if baseline is None
                         else check_real(owner, "baseline", baseline, low=-math.inf))

    def wait(self, history: MetricHistory) -> int:
        """Keras' ``wait``: entries since the count last restarted."""
        if self.baseline is None:
            return history.since_improvement()
        for index in reversed(history.improvements):
            if history.improves(history.values[index], self.baseline):
                return len(history) - 1 - index
        return len(history)

    def evaluate(self, history: MetricHistory) -> Decision:
        wait = self.wait(history)
        if history.improved or wait < self.patience or history.epoch <= 0:
            return _GO_ON
        value = history.current
        it_is = "" if math.isfinite(value) else f" (it is {value})"
        return True, (f"patience exhausted at epoch {history.epoch + 1}: {history.monitor} did "
                      f"not improve for {_epochs(wait)}{it_is}{history.describe_best(';')}")

    def _args(self) -> dict[str, Any]:
        return {"patience": self.patience,
                **({"baseline": self.baseline} if self.baseline is not None else {})}


class _Threshold(StoppingCriterion):
    def __init__(self, threshold: float) -> None:
        self.threshold = check_real(type(self).__name__, "threshold", threshold, low=-math.inf)

    def _args(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


class StoppingThreshold(_Threshold):
    """Lightning's ``stopping_threshold``: stop as soon as a finite value is strictly better
    than ``threshold`` (good enough).

    >>> StoppingThreshold(0.25).evaluate(MetricHistory.of([0.5, 0.24]))
    (True, 'val_loss = 0.24 reached the stopping threshold 0.25 at epoch 2')
    """

    name = "stopping_threshold"

    def evaluate(self, history: MetricHistory) -> Decision:
        value = history.current
        if not math.isfinite(value) or not history.better(value, self.threshold):
            return _GO_ON
        return True, (f"{history.monitor} = {value:.6g} reached the stopping threshold "
                      f"{self.threshold:g} at epoch {history.epoch + 1}")


class DivergenceThreshold(_Threshold):
    """Lightning's ``divergence_threshold``: stop as soon as a finite value is strictly worse
    than ``threshold`` (training went astray)."""

    name = "divergence_threshold"

    def evaluate(self, history: MetricHistory) -> Decision:
        value = history.current
        if not math.isfinite(value) or not history.better(self.threshold, value):
            return _GO_ON
        return True, (f"{history.monitor} = {value:.6g} diverged beyond {self.threshold:g} at "
                      f"epoch {history.epoch + 1}{history.describe_best()}")


class NonFinite(StoppingCriterion):
    """Lightning's ``check_finite``: stop as soon as the value is NaN or infinite.

    >>> NonFinite().evaluate(MetricHistory.of([0.5, float("nan")]))
    (True, 'val_loss is nan at epoch 2, best 0.5 at epoch 1')
    """

    name = "non_finite"

    def evaluate(self, history: MetricHistory) -> Decision:
        value = history.current
        if math.isfinite(value):
            return _GO_ON
        return True, (f"{history.monitor} is {value} at epoch {history.epoch + 1}"
                      f"{history.describe_best()}")


class _Prechelt(StoppingCriterion):
    """Prechelt's criteria measure a validation *error*: the monitor must be minimized. They
    skip non-finite values (their series holds the finite ones)."""

    def check(self, monitor: str, mode: str) -> None:
        if mode != "min":
            raise ValueError(
                f"{type(self).__name__}: criterion {self.name!r} (Prechelt's) measures a "
                f"validation *error*, but {monitor!r} is maximized (mode='max'); monitor a "
                "loss or error, or use another criterion")

    @staticmethod
    def _strip_end(history: MetricHistory, k: int) -> bool:
        """Whether this epoch ends a strip of ``k`` finite values."""
        return math.isfinite(history.current) and len(history.finite_indexes) % k == 0

    @staticmethod
    def _best(history: MetricHistory) -> float:
        best = history.best
        return history.current if best is None else best


class GeneralizationLoss(_Prechelt):
    """Prechelt's GL_α: stop when ``GL = 100 · (E_va / E_opt − 1) > alpha``, i.e. the
    validation error is more than ``alpha`` percent above its lowest value so far.

    :param alpha: the threshold, in percent (``>= 0``, default 5).

    >>> GeneralizationLoss(5).evaluate(MetricHistory.of([0.30, 0.20, 0.211]))[1]
    'generalization loss GL = 5.5% > 5% at epoch 3: val_loss 0.211 vs best 0.2 at epoch 2'
    """

    name = "gl"

    def __init__(self, alpha: float = 5.0) -> None:
        self.alpha = check_real(type(self).__name__, "alpha", alpha)

    def evaluate(self, history: MetricHistory) -> Decision:
        value = history.current
        if not math.isfinite(value):
            return _GO_ON
        gl = F.generalization_loss(value, self._best(history))
        if gl <= self.alpha:
            return _GO_ON
        return True, (f"generalization loss GL = {gl:.3g}% > {self.alpha:g}% at epoch "
                      f"{history.epoch + 1}: {history.monitor} {value:.6g}"
                      f"{history.describe_best(' vs')}")

    def _args(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class ProgressQuotient(_Prechelt):
    """Prechelt's PQ_α: at the end of each strip of ``strip_length`` epochs, stop when
    ``PQ = GL / P_k > alpha``, with ``P_k = 1000 · (Σ E_tr / (k · min E_tr) − 1)`` the training
    progress over the strip: generalization lost per unit of training progress.

    :param alpha: the threshold (``>= 0``, default 0.5).
    :param strip_length: ``k``, epochs per strip (``>= 1``, default 5).
    :param train_monitor: the training error in the logs (default ``"loss"``); every epoch's
        logs must hold it.
    """

    name = "pq"

    def __init__(self, alpha: float = 0.5, *, strip_length: int = 5,
                 train_monitor: str = "loss") -> None:
        owner = type(self).__name__
        self.alpha = check_real(owner, "alpha", alpha)
        self.strip_length = check_int(owner, "strip_length", strip_length, low=1)
        if not isinstance(train_monitor, str) or not train_monitor:
            raise TypeError(f"{owner}: argument 'train_monitor' must be a metric name, "
                            f"got {train_monitor!r}")
        self.train_monitor = train_monitor

    def evaluate(self, history: MetricHistory) -> Decision:
        if math.isfinite(history.current) and self.train_monitor not in history.epoch_logs:
            raise ValueError(f"EarlyStopping: criterion 'pq' needs the training error "
                             f"{self.train_monitor!r} in the logs of every epoch (set "
                             "train_monitor to a key that is there)")
        if not self._strip_end(history, self.strip_length):
            return _GO_ON  # Prechelt evaluates PQ only at the end of a strip
        strip = [float(history.logs[i][self.train_monitor])
                 for i in history.finite_indexes[-self.strip_length:]]
        value = history.current
        pq = F.progress_quotient(value, self._best(history), strip)
        if pq <= self.alpha:
            return _GO_ON
        return True, (f"progress quotient PQ = {pq:.3g} > {self.alpha:g} at epoch "
                      f"{history.epoch + 1}: {history.monitor} {value:.6g}"
                      f"{history.describe_best(' vs')}")

    def _args(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "strip_length": self.strip_length,
                "train_monitor": self.train_monitor}


class RisingStrips(_Prechelt):
    """Prechelt's UP_s: stop when the validation error, measured at the end of each strip of
    ``strip_length`` epochs, was higher than a strip earlier at ``strips`` successive strip ends.

    :param strips: ``s``, successive rising strips that stop (``>= 1``, default 3).
    :param strip_length: ``k``, epochs per strip (``>= 1``, default 5).

    >>> RisingStrips(2, strip_length=1).evaluate(MetricHistory.of([0.3, 0.2, 0.25, 0.3]))[1]
    'val_loss rose in 2 successive strips of 1 epochs at epoch 4; best 0.2 at epoch 2'
    """

    name = "up"

    def __init__(self, strips: int = 3, *, strip_length: int = 5) -> None:
        owner = type(self).__name__
        self.strips = check_int(owner, "strips", strips, low=1)
        self.strip_length = check_int(owner, "strip_length", strip_length, low=1)

    def rising(self, history: MetricHistory) -> int:
        """Successive strip ends, up to this epoch, whose value rose over the one before."""
        k, finite, values = self.strip_length, history.finite_indexes, history.values
        end = len(finite) // k * k - 1  # the last strip end, in the finite series
        count = 0
        while end - k >= 0 and values[finite[end]] > values[finite[end - k]]:
            count, end = count + 1, end - k
        return count

    def evaluate(self, history: MetricHistory) -> Decision:
        if not self._strip_end(history, self.strip_length):
            return _GO_ON
        rising = self.rising(history)
        if rising < self.strips:
            return _GO_ON
        return True, (f"{history.monitor} rose in {rising} successive strips of "
                      f"{self.strip_length} epochs at epoch {history.epoch + 1}"
                      f"{history.describe_best(';')}")

    def _args(self) -> dict[str, Any]:
        return {"strips": self.strips, "strip_length": self.strip_length}


def criterion_name(criterion: object) -> str:
    """A criterion's ``name``, else its class name in snake case."""
    name = getattr(criterion, "name", None)
    return name if isinstance(name, str) and name else snake_case(type(criterion).__name__)


def first_stop(criteria: Sequence[Criterion], history: MetricHistory) -> Decision:
    """Ask each criterion in order; the first that says stop decides, with its reason (the
    later ones are not asked). A reason left out becomes "<name> at epoch N"."""
    for criterion in criteria:
        decision = criterion.evaluate(history)
        if (not isinstance(decision, tuple) or len(decision) != 2
                or not isinstance(decision[1], (str, type(None)))):
            raise TypeError(f"EarlyStopping: criterion {criterion_name(criterion)!r}: "
                            "evaluate(history) must return (stop, reason) with reason a str "
                            f"or None, got {decision!r}")
        stop, reason = decision
        if stop:
            return True, reason or (f"{criterion_name(criterion)} at epoch "
                                    f"{history.epoch + 1}")
    return _GO_ON

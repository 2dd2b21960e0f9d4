"""Weight averaging: an exponential moving average (EMA) of the parameters after every
optimizer update, and stochastic weight averaging (SWA) of the weights at epoch ends.

The averages live beside the model, on its device (copies made by ``run.ops.clone``); the
model trains on its own weights, is validated on the averages when asked, and holds the
average when training ends.

Docs: docs/plugins/fine-tuning.md
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Generator, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from regplug.errors import RegplugWarning, UsageError
from regplug.hookspecs import hookimpl
from regplug.plugin import Plugin
from regplug.ranges import Choice, SearchRange
from regplug.run import ParamHandle, Run, ScheduledValue
from regplug.schedules import Schedule
from regplug.selection import Selection
from regplug.validation import check_bool, check_int

__all__ = ["EMA", "SWA", "ema_momentum", "swa_momentum"]

log = logging.getLogger(__name__)


def ema_momentum(decay: float, *, first: bool) -> float:
    """The momentum of an EMA update, ``a ← m·a + (1 − m)·θ``: ``decay``, except 0 at the
    first update, which copies the weights (``AveragedModel``'s and Keras' ``use_ema`` rule).

    >>> ema_momentum(0.99, first=True), ema_momentum(0.99, first=False)
    (0.0, 0.99)
    """
    return 0.0 if first else decay


def swa_momentum(averaged: int) -> float:
    """The momentum that folds one more value into the equal-weight mean of ``averaged``
    values: ``n/(n+1)`` (0 for the first, which is copied).

    >>> swa_momentum(0), swa_momentum(3)
    (0.0, 0.75)
    """
    return averaged / (averaged + 1)


class _EmaMomentum(Schedule):
    """``decay`` at every update except the one at step ``first_step`` (0: it copies θ)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.first_step: int | None = None

    def __call__(self, step: int, epoch: int) -> float:
        return ema_momentum(self.decay, first=step == self.first_step)

    def bounds(self) -> tuple[float, float]:
        return (0.0, self.decay)


def _check_decay(decay: object) -> float:
    fix = "e.g. decay=0.999 keeps 99.9 % of the average at each update"
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise TypeError(f"EMA: argument 'decay' must be a number in (0, 1), got {decay!r} of "
                        f"type {type(decay).__name__} ({fix})")
    value = float(decay)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"EMA: argument 'decay' must be in (0, 1), exclusive, got {decay!r} "
                         f"({fix}; 0 would copy the weights, 1 never move)")
    return value


class _WeightAverage(Plugin):
    """What EMA and SWA share: the copies, the swap around validation, the final write-back
    and the checkpoint state. Subclasses decide when and how the average moves."""

    def __init__(self, *, evaluate_on_average: bool, keep_raw: bool,
                 kinds: str | Iterable[str] | None, include: str | Iterable[str] | None,
                 exclude: str | Iterable[str] | None) -> None:
        owner = type(self).__name__
        self.evaluate_on_average = check_bool(owner, "evaluate_on_average", evaluate_on_average)
        self.keep_raw = check_bool(owner, "keep_raw", keep_raw)
        self.selection = Selection.build(owner, kinds="all" if kinds is None else kinds,
                                         include=include, exclude=exclude)
        self._run: Run | None = None
        self._params: list[ParamHandle] = []
        self._averages: list[ParamHandle] = []  # handles over the copies, names as params
        self._raw: list[Any] = []  # the raw weights while the averages are swapped in
        self._swapped = False
        self._late_warned = False
        self._pending: dict[str, Any] | None = None  # a checkpoint loaded before training

    # -- binding --------------------------------------------------------------------------
    def _bind(self, run: Run) -> None:
        self._run = run
        self._params = list(run.parameters(self.selection))
        copies = run.ops.clone(self._params)
        self._averages = [ParamHandle(p.name, p.kind, c, p.layer_type, p.unit_axis, p.shape,
                                      p.native_name) for p, c in zip(self._params, copies)]
        self._raw = run.ops.clone(self._params) if self.evaluate_on_average else []
        self._swapped = False
        self._late_warned = False

    def _check_late(self, run: Run) -> None:
        """Parameters that joined the optimizer after the averages were taken (a parameter
        group added during training) are not averaged: say so once, with the fix."""
        live = run.parameters(self.selection)
        if len(live) == len(self._params) or self._late_warned:
            return
        known = {id(p) for p in self._params}
        late = [p.name for p in live if id(p) not in known]
        self._late_warned = True
        if late:
            warnings.warn(
                f"{type(self).__name__}: {len(late)} parameter(s) joined the optimizer after "
                f"training began (a parameter group added after the start, e.g. {late[0]!r}); "
                "the averages were taken at the start, so these keep their trained values. "
                "Give every parameter to the optimizer up front (Freeze keeps them still "
                "until they should train).", RegplugWarning, stacklevel=3)

    def _check_unchanged(self, where: str) -> None:
        """Refuse to mix the averages with parameters whose shapes changed since they
        were taken (the model was altered mid-training)."""
        for p in self._params:
            now = tuple(int(d) for d in p.tensor.shape)
            if now != tuple(p.shape):
                raise UsageError(
                    f"{type(self).__name__}: parameter {p.name!r} changed shape from "
                    f"{tuple(p.shape)} to {now} during training ({where}), so its average "
                    "no longer fits; change the model before training starts, or end this run "
                    "and start a new one (a new plugin) after changing it")

    # -- validation on the averages ---------------------------------------------------------
    def _has_average(self) -> bool:
        raise NotImplementedError

    @hookimpl
    def on_validation_begin(self, run: Run) -> None:
        if not self.evaluate_on_average or self._swapped or not self._has_average():
            return
        self._check_unchanged("validation")
        run.ops.copy_into_(self._raw, self._params)
        run.ops.copy_from_(self._params, [a.tensor for a in self._averages])
        self._swapped = True

    @hookimpl
    def on_validation_end(self, run: Run) -> None:
        self._swap_back(run)

    def _swap_back(self, run: Run) -> None:
        if self._swapped:
            self._swapped = False
            run.ops.copy_from_(self._params, self._raw)

    # -- the end ---------------------------------------------------------------------------
    # Last of all plugins: an early stopping that restores its best (raw) weights does so
    # first, and the model ends with the average, as documented.
    @hookimpl(trylast=True)
    def on_train_end(self, run: Run) -> None:
        self._swap_back(run)  # a validation that never ended (an exception inside it)
        if run.exception is not None or self.keep_raw:
            return
        if not self._has_average():
            warnings.warn(self._nothing_averaged(), RegplugWarning, stacklevel=2)
            return
        self._check_unchanged("at the end of training")
        run.ops.copy_from_(self._params, [a.tensor for a in self._averages])

    def _nothing_averaged(self) -> str:
        return f"{type(self).__name__}: nothing was averaged; the model keeps its weights"

    # -- checkpoints ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _counters(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_counters(self, state: Mapping[str, Any]) -> None:
        """Refuse counters that are not what :meth:`state_dict` writes."""
        raise NotImplementedError

    def _set_counters(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def averages(self) -> dict[str, np.ndarray]:
        """The averaged weights as NumPy arrays keyed by parameter name (empty before the
        first run starts); with ``keep_raw=True``, how to get the average after training."""
        if not self._averages:
            return {} if self._pending is None else dict(self._pending["averages"])
        assert self._run is not None
        return dict(zip((a.name for a in self._averages),
                        self._run.ops.to_numpy(self._averages)))

    def state_dict(self) -> dict[str, Any]:
        """The configuration, the counters and the averages (NumPy arrays by name)."""
        if self._pending is not None and not self._averages:
            return dict(self._pending)
        return {"config": self.config(), **self._counters(), "averages": self.averages()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the averages and counters of :meth:`state_dict`; applied at once during
        a run, else when the next run starts. Refuses a state of another configuration or
        of other parameters (names, shapes) before changing anything."""
        name = type(self).__name__
        saved = state.get("config")
        if saved is not None and saved != self.config():
            raise ValueError(f"{name}: the checkpoint was written by a plugin configured "
                             f"differently: {saved}")
        arrays = {str(k): np.asarray(v) for k, v in dict(state["averages"]).items()}
        state = {**state, "averages": arrays}
        self._check_counters(state)
        if not self._averages:
            self._pending = state  # applied when the next run starts
            return
        self._apply(state)

    def _apply(self, state: Mapping[str, Any]) -> None:
        assert self._run is not None
        arrays = state["averages"]
        names = [a.name for a in self._averages]
        if sorted(arrays) != sorted(names):
            missing = [n for n in names if n not in arrays][:3]
            extra = [n for n in arrays if n not in names][:3]
            raise ValueError(f"{type(self).__name__}: the checkpoint's averages are of other "
                             f"parameters (missing {missing}, unknown {extra}); load it into "
                             "the model and selection it was saved from")
        wrong = [f"{a.name}: saved {arrays[a.name].shape}, model {tuple(a.shape)}"
                 for a in self._averages if tuple(arrays[a.name].shape) != tuple(a.shape)]
        if wrong:
            raise ValueError(f"{type(self).__name__}: the checkpoint's averages do not fit the "
                             f"model's parameters ({'; '.join(wrong[:3])})")
        self._set_counters(state)
        self._run.ops.load_copies_(self._averages, [arrays[n] for n in names])

    def _start(self, run: Run) -> None:
        """Bind to ``run``; apply a checkpoint loaded before it started."""
        if self._swapped and self._run is not None:
            # The last run ended inside a validation without telling (an exception where the
            # loop calls no callback: Hugging Face, Keras): its averages are still swapped in.
            self._swap_back(self._run)
        self._bind(run)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._apply(pending)

    def _selection_repr(self) -> str:
        parts = []
        if self.selection != Selection.build(type(self).__name__, kinds="all"):
            parts.append(self.selection.describe())
        if self.evaluate_on_average:
            parts.append("evaluate_on_average=True")
        if self.keep_raw:
            parts.append("keep_raw=True")
        return "".join(", " + p for p in parts)

    def _selection_config(self) -> dict[str, Any]:
        return {"selection": {"kinds": list(self.selection.kinds),
                              "include": list(self.selection.include),
                              "exclude": list(self.selection.exclude)}}


class EMA(_WeightAverage):
    """An exponential moving average of the weights: ``a ← decay·a + (1 − decay)·θ`` after
    every optimizer update; the first update copies ``θ``.

    The rule of ``torch.optim.swa_utils.AveragedModel(model,
    multi_avg_fn=get_ema_multi_avg_fn(decay))`` and of Keras' ``use_ema=True`` with
    ``ema_momentum=decay``: the same averages to float noise, in every loop. Batch-norm
    statistics are not averaged: validation on the averages uses the model's current running
    statistics (``AveragedModel``'s ``use_buffers=False``, Keras' rule).

    :param decay: in (0, 1); the average's memory is about ``1/(1 − decay)`` updates.
    :param evaluate_on_average: validate on the averaged weights (every validation metric,
        the one early stopping monitors included, comes from them); the weights go back for
        training.
    :param keep_raw: leave the trained weights in the model at the end (default: the model
        holds the average; :meth:`averages` gives it either way).
    :param kinds, include, exclude: which parameters to average (default: all of them).

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.zeros(1)}, [EMA(decay=0.5)], lr=1.0)
    >>> for _ in range(3):
    ...     loop.step({"w": -np.ones(1)})   # w: 1, 2, 3; average: 1, 1.5, 2.25
    >>> loop.close(); float(loop.params["w"][0])
    2.25
    """

    # What matters is the memory 1/(1 − decay), from 10 to 10,000 updates (short fine-tuning
    # runs want the low end, long runs the high one). A range over decay itself would put
    # nearly all its samples below 0.999, so the search picks among the decades' values.
    tunable: ClassVar[Mapping[str, SearchRange]] = {
        "decay": Choice((0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999))}

    def __init__(self, decay: float = 0.999, *, evaluate_on_average: bool = False,
                 keep_raw: bool = False, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        self.decay = _check_decay(decay)
        super().__init__(evaluate_on_average=evaluate_on_average, keep_raw=keep_raw,
                         kinds=kinds, include=include, exclude=exclude)
        self._schedule = _EmaMomentum(self.decay)
        self._momentum: ScheduledValue | None = None

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay!r}{self._selection_repr()})"

    def config(self) -> dict[str, Any]:
        return {"decay": self.decay, **self._selection_config()}

    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self._schedule.first_step = run.step  # the first update copies θ
        self._start(run)
        # Read inside the compiled step (Keras); every adapter brings scheduled values to each
        # update's step before it (the PyTorch loop at reg.loss, or at optimizer.step() in a
        # loop that never calls it), so no on_batch_begin is needed: in the PyTorch loop that
        # hook would cost a module pre-hook on every forward pass.
        self._momentum = run.scalar(self._schedule)

    # Around every other plugin's on_step: the average takes the weights as the step leaves
    # them, after every projection, scaling and Freeze's put-back in Keras (trylast: a later
    # listed plugin's trylast would still run after it).
    @hookimpl(wrapper=True)
    def on_step(self, run: Run) -> Generator[None, list[Any], list[Any]]:
        results = yield
        assert self._momentum is not None
        run.ops.moving_average_(self._averages, self._params, self._momentum.value)
        return results

    @hookimpl
    def on_epoch_end(self, run: Run) -> None:
        self._check_unchanged(f"epoch {run.epoch}")
        self._check_late(run)

    def _has_average(self) -> bool:
        # Before the first update the copy equals the weights: swapping it in changes nothing.
        return bool(self._averages)

    def _started(self) -> bool:
        """Whether the average holds an update (the next one must not copy the weights)."""
        first = self._schedule.first_step
        return first is None or (self._run is not None and self._run.step > first)

    def _counters(self) -> dict[str, Any]:
        return {"started": self._started()}

    def _check_counters(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state.get("started"), (bool, np.bool_)):
            raise ValueError(f"EMA: the checkpoint's 'started' must be a bool, got "
                             f"{state.get('started')!r}")

    def _set_counters(self, state: Mapping[str, Any]) -> None:
        if state["started"]:
            self._schedule.first_step = None  # the average is under way: never copy again


class SWA(_WeightAverage):
    """Stochastic weight averaging (Izmailov et al., 2018): the equal-weight mean of the
    weights at the end of every epoch from epoch ``start`` (counted from 0) on.

    The average of ``torch.optim.swa_utils.AveragedModel(model)`` updated once per epoch from
    ``start``: the same to float noise. The weights are folded in at the first of the epoch's
    validation (before it, so validating on the average includes this epoch) and its end.
    Batch-norm statistics are not recomputed (regplug sees no data loader in any loop): after
    training call ``torch.optim.swa_utils.update_bn(train_loader, model)`` (see the docs).

    :param start: epochs trained before averaging begins, ``>= 0``.
    :param evaluate_on_average: validate on the average once there is one.
    :param keep_raw: leave the trained weights in the model at the end.
    :param kinds, include, exclude: which parameters to average (default: all of them).

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.zeros(1)}, [SWA(start=1)], lr=1.0)
    >>> for epoch in range(3):
    ...     loop.step({"w": -np.ones(1)}); stop = loop.epoch_end({})  # w: 1, 2, 3
    >>> loop.close(); float(loop.params["w"][0])   # mean of epochs 1 and 2
    2.5
    """

    def __init__(self, start: int = 0, *, evaluate_on_average: bool = False,
                 keep_raw: bool = False, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        self.start = check_int("SWA", "start", start, low=0)
        super().__init__(evaluate_on_average=evaluate_on_average, keep_raw=keep_raw,
                         kinds=kinds, include=include, exclude=exclude)
        #: How many epochs' weights the average holds.
        self.averaged = 0
        self._folded_epoch = -1

    def __repr__(self) -> str:
        return f"SWA(start={self.start!r}{self._selection_repr()})"

    def config(self) -> dict[str, Any]:
        return {"start": self.start, **self._selection_config()}

    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self.averaged, self._folded_epoch = 0, -1
        self._start(run)

    def _fold(self, run: Run) -> None:
        """Fold this epoch's weights into the average, once per epoch from ``start``."""
        if run.epoch < self.start or self._folded_epoch == run.epoch:
            return
        self._check_unchanged(f"epoch {run.epoch}")
        run.ops.moving_average_(self._averages, self._params, swa_momentum(self.averaged))
        self.averaged += 1
        self._folded_epoch = run.epoch

    @hookimpl
    def on_validation_begin(self, run: Run) -> None:
        self._fold(run)
        super().on_validation_begin(run)

    @hookimpl
    def on_epoch_end(self, run: Run) -> None:
        self._fold(run)
        self._check_late(run)

    def _has_average(self) -> bool:
        return self.averaged > 0

    def _counters(self) -> dict[str, Any]:
        return {"averaged": self.averaged, "folded_epoch": self._folded_epoch}

    def _check_counters(self, state: Mapping[str, Any]) -> None:
        check_int("SWA", "averaged (checkpoint)", state.get("averaged"), low=0)
        int(state.get("folded_epoch", -1))

    def _set_counters(self, state: Mapping[str, Any]) -> None:
        self.averaged = int(state["averaged"])
        self._folded_epoch = int(state.get("folded_epoch", -1))

    def _nothing_averaged(self) -> str:
        return (f"SWA: training ended before epoch start={self.start} was averaged; the model "
                "keeps its weights")


"""The epoch clock: when the run-, epoch- and batch-level hooks fire, shared by every adapter.

An adapter observes its framework (a ``with`` block and module hooks in PyTorch, callback
methods in Keras and in the trainers) and tells the clock what happened; the clock advances
the run's epoch, calls the hooks in the order the plugins were listed, and decides — the same
way in every framework — whether training stops. The per-step hooks belong to the step
window (:mod:`regplug.window`).

Docs: docs/clock-and-window.md.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np

from .errors import RegplugWarning, UsageError
from .manager import PluginManager, plugin_label
from .run import Run

__all__ = ["Wording", "EpochClock", "check_logs", "check_monitors", "is_stateful"]


@dataclass(frozen=True)
class Wording:
    """How an adapter's messages name what the user wrote: each adapter supplies its own,
    so an error points at the line to change in *that* framework.

    >>> Wording.for_torch().step
    'optimizer.step()'
    """

    #: The adapter, as messages name it ("Regularize", "attach").
    adapter: str
    #: The call that performs an optimizer update.
    step: str = "optimizer.step()"
    #: The call that hands the loss to regplug, and the fix when it was missing.
    loss_call: str = "reg.loss(loss)"
    loss_fix: str = "Write `loss = reg.loss(loss)` before `loss.backward()` in every step."
    #: Where validation metrics come from, for a monitor that finds none.
    validation_hint: str = "pass validation metrics to reg.epoch_end"
    #: How a run is ended before a new one begins.
    close_hint: str = "close it first"
    #: The call that hands an epoch's metrics to regplug, for messages about bad logs
    #: (empty: "<adapter>'s epoch logs").
    logs_call: str = ""

    @classmethod
    def for_torch(cls) -> Wording:
        return cls(adapter="attach", logs_call="reg.epoch_end")


class EpochClock:
    """Fires ``on_train_begin``, ``on_epoch_begin``, ``on_batch_begin``, ``on_epoch_end`` and
    ``on_train_end`` of ``manager``'s plugins on ``run`` at the right moments.

    :param wording: how messages name the adapter's calls (:class:`Wording`).
    """

    def __init__(self, run: Run, manager: PluginManager, wording: Wording) -> None:
        self.run = run
        self.manager = manager
        self.wording = wording
        self._train_begin = manager.caller("on_train_begin")
        self._epoch_begin = manager.caller("on_epoch_begin")
        self._epoch_end = manager.caller("on_epoch_end")
        self._train_end = manager.caller("on_train_end")
        self._batch_begin = (manager.caller("on_batch_begin")
                             if manager.implements("on_batch_begin") else None)
        #: Whether an epoch is open (its ``on_epoch_begin`` fired, its end not yet): read it,
        #: the clock sets it. A plain attribute, as the step window reads it at every step.
        self.epoch_open = False
        self._monitors_checked = False
        #: Whether a run is between :meth:`train_begin` and :meth:`train_end`.
        self.active = False
        #: Set by an adapter that can tell whether the training driving this run still runs
        #: (a trainer whose exceptions skip every callback): when it returns False, the run
        #: ended without ``on_train_end`` and another run may take its plugins (the run is
        #: abandoned then).
        self.alive: Callable[[], bool] | None = None

    # -- run boundaries ----------------------------------------------------------------
    def train_begin(self) -> None:
        """Start the run and fire ``on_train_begin``. If a plugin raises there, the run is
        not started (nothing to end) and the error propagates."""
        if self.active:
            raise UsageError(f"{self.wording.adapter}: training already began for this run; "
                             f"{self.wording.close_hint}")
        _bind(self)  # refuses a stateful plugin another running run holds
        self.run.stop_requests.clear()
        self.run.exception = None
        self.active = True
        try:
            self._train_begin(run=self.run)
        except BaseException:
            self.active = False
            _unbind(self)
            raise

    def abandon(self) -> None:
        """End the run without ``on_train_end`` (the adapter could not finish starting it)."""
        self.active = False
        self.epoch_open = False
        _unbind(self)

    def train_end(self) -> None:
        """Fire ``on_train_end`` once; later calls do nothing."""
        if not self.active:
            return
        self.active = False
        self.epoch_open = False
        try:
            self._train_end(run=self.run)
        finally:
            _unbind(self)

    # -- epochs and batches -------------------------------------------------------------
    def epoch_begin(self) -> None:
        """Open the epoch (``on_epoch_begin``) if it is not open yet; bring values to the clock."""
        if not self.epoch_open:
            self.epoch_open = True
            self._epoch_begin(run=self.run, epoch=self.run.epoch)
        self.run.update_scalars()

    def batch_begin(self) -> None:
        """A training batch is starting (before its forward pass)."""
        if self.epoch_open:  # epoch_begin() without its call: this runs at every batch
            self.run.update_scalars()
        else:
            self.epoch_begin()
        if self._batch_begin is not None:
            self._batch_begin(run=self.run, step=self.run.step)

    def epoch_end(self, logs: dict[str, float]) -> bool:
        """Record the epoch, fire ``on_epoch_end``; return whether training should stop.

        ``logs`` is updated in place with the keys plugins added. Monitors (a plugin's
        ``monitor`` attribute) are checked against the logs *after* every plugin had its turn,
        once per run, so a key one plugin adds for another (``GeneralizationGap``'s ``gap``)
        counts.
        """
        run = self.run
        where = self.wording.logs_call or f"{self.wording.adapter}'s epoch logs"
        logs.update(check_logs(logs, where=where))  # before any hook: a bad log changes nothing
        if not self.epoch_open:
            self._epoch_begin(run=run, epoch=run.epoch)
        if run.world.size > 1 and logs and hasattr(run.world, "mean"):
            # Every process decides on the same numbers, so stops, best epochs and restored
            # weights agree across the replicas.
            keys = sorted(logs)
            logs.update(zip(keys, run.world.mean(keys, [logs[k] for k in keys])))
        before = set(logs)
        run.record(logs)
        self._epoch_end(run=run, epoch=run.epoch, logs=logs)
        run.record({k: v for k, v in logs.items() if k not in before})  # plugins' additions
        if not self._monitors_checked:
            self._monitors_checked = True
            check_monitors(self.manager.plugins, logs, validation_hint=self.wording.validation_hint)
        stop = run.world.any(run.should_stop)
        if stop and not run.stop_requests:
            run.stop("another process voted to stop", source=f"rank {run.world.rank}")
        run.epoch += 1
        self.epoch_open = False
        return stop


# -- one run per stateful plugin ---------------------------------------------------------------
# A plugin that keeps state (early stopping's best weights and counters, a monitor's records)
# serves one run at a time: shared by two concurrent runs, each would overwrite the other's
# state and, at the end, restore one model with the other's weights. Every clock binds its
# plugins at train_begin and unbinds them at train_end/abandon, or when it is garbage-
# collected without either (a run dropped without closing it). Keys are the plugins' ids,
# valid while the registry holds the plugin; one lock makes check-and-bind atomic across
# threads.
_BOUND: dict[int, tuple[object, weakref.ref[EpochClock]]] = {}
_BOUND_LOCK = threading.RLock()  # re-entrant: a weakref callback may run inside


def is_stateful(plugin: object) -> bool:
    """Whether ``plugin`` holds something of the run it serves (best weights, counters,
    records, the run's dropout layers), so that a second concurrent run would disturb it.

    Every plugin does, unless it declares ``shareable = True``: it keeps nothing of a run
    between calls, or re-derives it for whichever run calls (the built-in parameter plugins —
    ``L1``, ``L2``, ``ElasticNet``, ``DecoupledWeightDecay``, ``ProximalL1``, ``MaxNorm`` —
    rebind to the calling run). A checkpoint state is no guide: ``DropoutSchedule`` stores
    only its config, yet holds the layers of the run it schedules.

    >>> from regplug.plugins import L2, DropoutSchedule, EarlyStopping
    >>> is_stateful(L2(0.1)), is_stateful(EarlyStopping()), is_stateful(DropoutSchedule(0.1))
    (False, True, True)
    """
    return getattr(plugin, "shareable", False) is not True


def _bind(clock: EpochClock) -> None:
    stateful = [p for p in clock.manager.plugins if is_stateful(p)]
    with _BOUND_LOCK:
        for plugin in stateful:
            entry = _BOUND.get(id(plugin))
            owner = entry[1]() if entry is not None else None
            if (owner is not None and owner is not clock and owner.active
                    and owner.alive is not None and not owner.alive()):
                owner.abandon()  # its training is gone (an exception skipped train_end)
            if owner is not None and owner is not clock and owner.active:
                raise UsageError(
                    f"{plugin_label(plugin)}: this plugin object is already in use by another "
                    f"run that has not ended ({owner.wording.adapter}); a plugin that keeps "
                    "state (best weights, counters, records) serves one run at a time, or the "
                    "runs would overwrite each other's state. Create one instance per run, "
                    f"e.g. build the plugin list inside the function that starts each run; "
                    f"{clock.wording.close_hint} if that run is over.")
        ref = weakref.ref(clock, _forget_dead_clock)
        for plugin in stateful:
            _BOUND[id(plugin)] = (plugin, ref)


def _unbind(clock: EpochClock) -> None:
    with _BOUND_LOCK:
        for key in [k for k, (_, ref) in _BOUND.items() if ref() is clock]:
            del _BOUND[key]


def _forget_dead_clock(ref: weakref.ref[EpochClock]) -> None:
    with _BOUND_LOCK:
        for key in [k for k, (_, r) in _BOUND.items() if r is ref]:
            del _BOUND[key]


def frame_running(frame: FrameType) -> bool:
    """Whether ``frame`` is still executing, on this thread's call stack or another's (how
    an adapter tells a training that is running from one an exception ended unseen)."""
    current: FrameType | None = sys._getframe(1)
    while current is not None:  # the common case (a call from inside that training): cheap
        if current is frame:
            return True
        current = current.f_back
    for top in sys._current_frames().values():
        current = top
        while current is not None:
            if current is frame:
                return True
            current = current.f_back
    return False


def check_logs(logs: object, *, where: str) -> dict[str, float]:
    """An epoch's metrics as floats, or an error naming the key, the value and what is allowed.

    Keys must be non-empty strings; values real numbers (finite or not: NaN and inf are for
    the plugins to judge) given as a Python number, a NumPy scalar or an array/tensor holding
    one element, of any shape (Lightning's metrics may come as ``(1, 1, 1)``; Keras' as
    ``(1,)``) — anything ``float()`` converts, except ``bool`` (a flag, not a metric), strings
    and ``None``. The one check of every adapter's logs.

    >>> check_logs({"val_loss": np.float32(0.5), "loss": float("nan")}, where="reg.epoch_end")
    {'val_loss': 0.5, 'loss': nan}
    >>> check_logs({"val_loss": np.full((1, 1, 1), 0.25)}, where="reg.epoch_end")
    {'val_loss': 0.25}
    >>> check_logs({"val_loss": "abc"}, where="reg.epoch_end")
    Traceback (most recent call last):
    TypeError: reg.epoch_end: logs['val_loss'] must be a real number (a float, an int, a NumPy
    scalar or a one-element array or tensor; NaN and inf are allowed), got 'abc' of type str
    """
    if not isinstance(logs, Mapping):
        raise TypeError(f"{where}: 'logs' must be a mapping of metric names to values, e.g. "
                        f"{{'val_loss': 0.31}}; got {type(logs).__name__}")
    allowed = "a real number (a float, an int, a NumPy scalar or a one-element array or " \
              "tensor; NaN and inf are allowed)"
    clean: dict[str, float] = {}
    for key, value in logs.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{where}: every key of logs must be a non-empty metric name "
                            f"(a str), got {key!r} of type {type(key).__name__} (value "
                            f"{value!r})")
        shape = _shape(value)
        if shape and all(isinstance(d, int) for d in shape) and math.prod(shape) == 1:
            # one element, e.g. (1, 1, 1): that number
            value, shape = _one_element(value), ()
        if isinstance(value, (bool, np.bool_, str, bytes)) or value is None or shape:
            got = (f"an array of shape {shape}; reduce it to one number first" if shape else
                   f"{value!r} of type {type(value).__name__}")
            raise TypeError(f"{where}: logs[{key!r}] must be {allowed}, got {got}")
        try:
            clean[key] = float(value)
        except (TypeError, ValueError, OverflowError) as err:
            raise TypeError(f"{where}: logs[{key!r}] must be {allowed}, got {value!r} of type "
                            f"{type(value).__name__} ({err})") from None
    return clean


def _one_element(value: Any) -> object:
    """The one element of a one-element array or tensor, as a 0-d one (``float()`` of an
    array with dimensions is deprecated in NumPy)."""
    reshape = getattr(value, "reshape", None)
    if callable(reshape):
        try:
            return reshape(())
        except (TypeError, ValueError, RuntimeError):
            pass
    try:
        return np.asarray(value).reshape(())
    except (TypeError, ValueError, RuntimeError):
        return value


def _shape(value: object) -> tuple[int, ...]:
    """The shape of an array-like value, ``()`` for scalars and anything without one."""
    try:
        return tuple(getattr(value, "shape", ()) or ())
    except (TypeError, ValueError):  # an unknown shape: let float() decide
        return ()


#: A validation metric's key: Keras/torch ``val_``, Hugging Face ``eval_``, and the
#: ``val/loss``, ``valid_loss``, ``validation-loss`` spellings of other loops.
_VALIDATION_KEY = re.compile(r"^(val|valid|validation|eval|evaluation)[_/.\-]", re.IGNORECASE)


def check_monitors(plugins: Sequence[object], logs: dict[str, Any], *,
                   validation_hint: str = "pass validation metrics to the adapter"
                   ) -> list[str]:
    """Warn for each plugin whose ``monitor`` attribute (a key, or a tuple of keys) names
    a key missing from ``logs``.

    Returns the labels of the plugins warned about. The message lists the available keys
    (and says when validation metrics are missing altogether).
    """
    warned = []
    for plugin in plugins:
        monitors = getattr(plugin, "monitor", None)
        if isinstance(monitors, str):
            monitors = (monitors,)
        if not isinstance(monitors, (tuple, list)):
            continue
        missing = [m for m in monitors if isinstance(m, str) and m not in logs]
        if not missing:
            continue
        monitor = missing[0]
        label = plugin_label(plugin)
        keys = ", ".join(sorted(logs)) or "(none)"
        close = difflib.get_close_matches(monitor, list(logs), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if _VALIDATION_KEY.match(monitor):
            validation = sorted(k for k in logs if _VALIDATION_KEY.match(k))
            if not validation:
                hint += f" There are no validation metrics: {validation_hint}."
            elif not close or close[0] not in validation:
                nearest = difflib.get_close_matches(monitor, validation, n=1, cutoff=0.0)
                hint += (f" The validation metrics are {', '.join(validation)}; the closest "
                         f"is {nearest[0]!r}.")
        warnings.warn(f"{label}: monitor {monitor!r} is not in the logs of this epoch, so "
                      f"the plugin cannot act on it. Available keys: {keys}.{hint}",
                      RegplugWarning, stacklevel=4)
        warned.append(label)
    return warned

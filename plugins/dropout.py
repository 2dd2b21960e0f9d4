"""Dropout-rate schedules: the rate of the model's dropout layers as a function of the clock.

The math is :mod:`regplug.schedules` (each value a pure function of ``(step, epoch)``) and
:func:`select_dropout_layers` (which layers); :class:`DropoutSchedule` only wires them to the
adapter's dropout handles, whose rate the framework's compiled step honours from the next
batch on (``module.p`` in PyTorch, a variable read inside the traced step in Keras, also for
layers built with rate 0).

Docs: docs/plugins/dropout.md
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from regplug.errors import RegplugWarning
from regplug.ranges import FloatRange, SearchRange
from regplug.run import DropoutHandle, Run
from regplug.schedules import Constant, Schedule, as_schedule
from regplug.selection import _patterns

from ._base import ConfiguredPlugin

__all__ = ["DropoutSchedule", "select_dropout_layers", "STOCHASTIC_DEPTH_LAYERS"]

#: The ``layer_type`` of the stochastic-depth handles adapters give out (torchvision's
#: ``StochasticDepth``, timm's ``DropPath``): scheduled only when ``layers`` names them.
STOCHASTIC_DEPTH_LAYERS: frozenset[str] = frozenset({"StochasticDepth", "DropPath"})

Rate = float | Schedule | dict[str, Any]

_SHOWN_LAYERS = 12  # how many layers a warning lists before "…"


def select_dropout_layers(handles: Iterable[DropoutHandle], *, layers: Sequence[str] = (),
                          include: Sequence[str] = (), exclude: Sequence[str] = ()
                          ) -> list[DropoutHandle]:
    """The handles whose layer type matches ``layers`` and whose name matches ``include``
    and not ``exclude`` (shell-style globs, matched against the whole type or name; an
    empty ``include`` means every one, an empty ``layers`` every dropout layer but the
    stochastic-depth ones, :data:`STOCHASTIC_DEPTH_LAYERS`).

    >>> from regplug import DropoutHandle
    >>> found = [DropoutHandle(n, t, 0.1, print) for n, t in
    ...          [("enc.drop", "Dropout"), ("enc.drop2d", "Dropout2d"), ("head.drop", "Dropout")]]
    >>> [h.name for h in select_dropout_layers(found, layers=["Dropout"], exclude=["head.*"])]
    ['enc.drop']
    """
    return [h for h in handles
            if (any(fnmatch.fnmatchcase(h.layer_type, p) for p in layers) if layers
                else h.layer_type not in STOCHASTIC_DEPTH_LAYERS)
            and (not include or any(fnmatch.fnmatchcase(h.name, p) for p in include))
            and not any(fnmatch.fnmatchcase(h.name, p) for p in exclude)]


class DropoutSchedule(ConfiguredPlugin):
    """Drive the rate of dropout layers by a schedule, in a PyTorch loop or ``model.fit``.

    :param rate: a number or a schedule (:mod:`regplug.schedules`, or its config table
        ``{"schedule": "linear", "start": 0.0, "end": 0.3, "span": 10, "per": "epoch"}``);
        every value it can take must lie in ``[0, 1)``.
    :param layers: layer type names (or globs) to act on, e.g. ``"Dropout"`` or
        ``["Dropout2d", "SpatialDropout2D"]``. Default: every dropout layer the adapter hands
        out — PyTorch ``Dropout``, ``Dropout1d/2d/3d`` (and their subclasses); Keras
        ``Dropout``, ``SpatialDropout1D/2D/3D``. A spatial dropout layer drops whole channels
        with the scheduled probability. Alpha and Gaussian dropout, whose rate means another
        formula, are never rescheduled. Stochastic depth (PyTorch only) is scheduled when
        named here: ``layers=["StochasticDepth", "DropPath"]`` drives torchvision's
        ``StochasticDepth.p`` and timm's ``DropPath.drop_prob`` (and copies of timm's class),
        read at every forward pass like a dropout module's ``p``.
    :param include, exclude: layer name patterns (globs on the qualified module name in
        PyTorch, ``"encoder.*"``; on the layer name in Keras, ``"dropout_*"``), as for
        the parameter plugins' selections.

    When the value changes: a schedule with ``per="epoch"`` is applied at the start of each
    epoch (before its first batch), one with ``per="step"`` before every training batch,
    and a constant once, when training starts. Layers are left untouched between changes.
    With Keras' ``steps_per_execution=k`` a per-step schedule advances once per k updates
    (callbacks run once per execution). Under ``torch.compile`` a module's rate is a constant
    of the compiled graph: every new value recompiles it, and after
    ``torch._dynamo.config.recompile_limit`` (8) distinct values the model runs uncompiled —
    prefer ``per="epoch"`` or a :class:`~regplug.Piecewise` with few values there.

    At the end of training (``on_train_end``: leaving the ``attach`` block, or the end of
    ``fit``) every layer gets back the rate it had when training started, so the model is
    left as it was built and a later run starts from the same place.

    Layers built with rate 0 are included: ``DropoutSchedule(LateDropout(0.1, cutoff=5,
    per="epoch"))`` switches on a ``Dropout(0.0)``, in Keras too. A selection that matches
    no layer emits a :class:`~regplug.RegplugWarning` listing the dropout layers found.

    >>> from regplug import Linear
    >>> plugin = DropoutSchedule(Linear(0.0, 0.3, span=3, per="epoch"), layers="Dropout")
    >>> plugin
    DropoutSchedule(rate=Linear(start=0.0, end=0.3, span=3, per='epoch'), layers=['Dropout'])
    >>> [round(plugin.rate(step=0, epoch=e), 2) for e in range(5)]
    [0.0, 0.1, 0.2, 0.3, 0.3]
    >>> plugin.hooks()  # per epoch: no per-batch work
    ('on_train_begin', 'on_epoch_begin', 'on_train_end')
    """

    requires = ("dropout_layers",)
    # What ``regplug tune`` searches: the rate a ramp ends at (``end`` of a ``linear`` or
    # ``cosine`` schedule table, as the built-in ``dropout_schedule`` strategy uses), from 0
    # (no dropout) to 0.8 (four in five of the notebook MLP's 128 hidden units dropped at every
    # step, well past the usual 0.5); the ramp's start, length and clock stay as configured.
    # A constant rate is not a table: tune it with ``rate = {low = 0.0, high = 0.8}`` under
    # ``[tune.dropout_schedule]`` (an early/late dropout's ``"rate.value"`` likewise);
    # apply_value refuses ``rate.end`` there.
    tunable: ClassVar[Mapping[str, SearchRange]] = {"rate.end": FloatRange(0.0, 0.8)}
    #: Hooks an instance implements depending on its configuration (see ``__init__``), and
    #: on what: ``regplug plugins`` lists them as "on_epoch_begin or on_batch_begin (...)".
    configured_hooks = ("on_epoch_begin", "on_batch_begin")
    configured_hooks_note = "from the schedule's per"

    def __init__(self, rate: Rate, *, layers: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        owner = type(self).__name__
        self.schedule = as_schedule(rate, owner=owner, arg="rate", low=0.0, high=1.0,
                                    high_open=True)
        self.layers = _patterns(owner, "layers", layers)
        self.include = _patterns(owner, "include", include)
        self.exclude = _patterns(owner, "exclude", exclude)
        self._handles: list[DropoutHandle] = []
        self._current: float | None = None
        # Implement only the hook the schedule needs: in PyTorch a plugin acting at epoch or
        # batch begin costs a module pre-hook on every forward pass, and on_batch_begin is a
        # call at every step. pluggy finds these instance attributes like methods.
        per = self.schedule.varies_per
        if per == "epoch":
            self.on_epoch_begin = self._follow_epoch
        elif per is not None:
            self.on_batch_begin = self._follow_step

    def rate(self, step: int, epoch: int) -> float:
        """The rate the selected layers get during step ``step`` of epoch ``epoch``."""
        return self.schedule(step, epoch)

    # -- hooks ----------------------------------------------------------------------------
    def on_train_begin(self, run: Run) -> None:
        found = run.dropout_layers()
        self._handles = select_dropout_layers(found, layers=self.layers, include=self.include,
                                              exclude=self.exclude)
        self._current = None
        if not self._handles:
            warnings.warn(self._nothing_matches(found, run.framework), RegplugWarning,
                          stacklevel=2)
        self._set(self.schedule(run.step, run.epoch))

    def _follow_epoch(self, run: Run, epoch: int) -> None:
        self._set(self.schedule(run.step, epoch))

    def _follow_step(self, run: Run, step: int) -> None:
        self._set(self.schedule(step, run.epoch))

    def on_train_end(self, run: Run) -> None:
        for handle in self._handles:
            handle.rate = handle.initial_rate
        self._handles = []  # drop references to the model's layers
        self._current = None

    def _set(self, value: float) -> None:
        if value != self._current:
            for handle in self._handles:
                handle.rate = value
            self._current = value

    def _nothing_matches(self, found: Sequence[DropoutHandle], framework: str) -> str:
        head = (f"{type(self).__name__}: the selection ({self._describe_selection() or 'all'}) "
                "matches none of the model's dropout layers, so it changes nothing.")
        if not found:
            return f"{head} The model has no dropout layer the {framework} adapter can schedule."
        shown = ", ".join(f"{h.name!r} ({h.layer_type}, rate {h.initial_rate:g})"
                          for h in found[:_SHOWN_LAYERS])
        more = f", … ({len(found)} in all)" if len(found) > _SHOWN_LAYERS else ""
        return f"{head} Dropout layers found: {shown}{more}."

    # -- description and checkpoints -----------------------------------------------------------
    def _describe_selection(self) -> str:
        return ", ".join(f"{arg}={list(patterns)}" for arg, patterns in
                         (("layers", self.layers), ("include", self.include),
                          ("exclude", self.exclude)) if patterns)

    def __repr__(self) -> str:
        shown = self.schedule.value if type(self.schedule) is Constant else self.schedule
        selection = self._describe_selection()
        return f"{type(self).__name__}(rate={shown!r}{', ' + selection if selection else ''})"

    def config(self) -> dict[str, Any]:
        """The arguments the plugin was built with, as plain values (a config table). It is
        the plugin's whole checkpoint state: the rates are a function of the run's clock,
        which the adapter's checkpoint holds."""
        return {"rate": self.schedule.to_config(), "layers": list(self.layers),
                "include": list(self.include), "exclude": list(self.exclude)}

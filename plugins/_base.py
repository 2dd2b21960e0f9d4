"""What the parameter plugins share: a validated selection and scheduled strengths.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from regplug.penalty import Penalty
from regplug.plugin import Plugin
from regplug.run import ParamHandle, Run, ScheduledValue
from regplug.schedules import Schedule, as_schedule
from regplug.selection import Selection

if TYPE_CHECKING:
    from regplug.schedules import Constant

Strength = float | Schedule | dict[str, Any]


@dataclass(eq=False)
class Binding:
    """What a plugin holds for the run it serves: built once at the start, reused per step."""

    run: Run
    params: list[ParamHandle]
    values: dict[str, ScheduledValue]
    penalty: Penalty | None = None
    #: The plugin's per-update hooks prepared for this run (:meth:`ParameterPlugin.prepare_hooks`).
    prepared: dict[str, Callable[[], object]] | None = None


class ConfiguredPlugin(Plugin):
    """A plugin whose behaviour is fixed by its arguments: its checkpoint state is its
    :meth:`config`, stored to detect a checkpoint written by a plugin configured differently."""

    def config(self) -> dict[str, Any]:
        """The arguments the plugin was built with, as plain values."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """No state changes during training; the config is stored to detect mismatches."""
        return {"config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        if saved is not None and saved != self.config():
            raise ValueError(f"{self!r}: the checkpoint was written by a plugin configured "
                             f"differently: {saved}")


class ParameterPlugin(ConfiguredPlugin):
    """A plugin acting on a selection of parameters with one or more scheduled strengths.

    Subclasses call :meth:`_strength` in ``__init__`` for each strength argument, and
    :meth:`_bind` at the start of a run to get their parameters and scheduled values. Nothing
    run-specific is kept on the plugin between runs except through ``_bind``, so one plugin
    object can serve several runs (and several models) one after the other.
    """

    #: Also at the same time: ``_bind`` rebinds to whichever run calls, so two concurrent
    #: runs may share one object (see :func:`regplug.clock.is_stateful`).
    shareable = True

    def __init__(self, *, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        self.selection = Selection.build(type(self).__name__, kinds=kinds, include=include,
                                         exclude=exclude)
        self._schedules: dict[str, Schedule] = {}
        self._bound: Binding | None = None

    def _strength(self, arg: str, value: Strength, *, low: float = 0.0,
                  high: float = math.inf, low_open: bool = False,
                  high_open: bool = False) -> Schedule:
        schedule = as_schedule(value, owner=type(self).__name__, arg=arg, low=low, high=high,
                               low_open=low_open, high_open=high_open)
        self._schedules[arg] = schedule
        return schedule

    def _bind(self, run: Run) -> Binding:
        """The selected parameters and the strengths' live values for ``run``: built at the
        first call for ``run`` (``on_train_begin``), reused until another run calls."""
        bound = self._bound
        if bound is None or bound.run is not run:
            params = run.parameters(self.selection)
            values = {arg: run.scalar(s) for arg, s in self._schedules.items()}
            bound = self._bound = Binding(run, params, values)
        return bound

    def prepare_hooks(self, run: Run) -> dict[str, Callable[[], object]]:
        """This plugin's per-update hooks for ``run``, as functions of no argument built once
        (see :class:`regplug.Plugin`); the hooks themselves call them, so the two agree. A
        subclass that overrides one of these hooks gets that hook dispatched instead (its
        override would be skipped otherwise)."""
        owner = next(c for c in type(self).__mro__ if "_prepare" in c.__dict__)
        return {name: function for name, function in self._prepared(run).items()
                if getattr(type(self), name) is getattr(owner, name)}

    def _prepared(self, run: Run) -> dict[str, Callable[[], object]]:
        """:meth:`_prepare`'s functions for ``run``, built once per binding (what the hooks
        call)."""
        bound = self._bind(run)
        if bound.prepared is None:
            bound.prepared = self._prepare(bound)
        return bound.prepared

    def _prepare(self, bound: Binding) -> dict[str, Callable[[], object]]:
        """The functions :meth:`prepare_hooks` returns, by hook name: none by default."""
        return {}

    def on_train_begin(self, run: Run) -> None:
        self._bound = None
        self._bind(run)

    def on_train_end(self, run: Run) -> None:
        self._bound = None  # drop references to the model's tensors

    # -- description -----------------------------------------------------------------
    def _args(self) -> str:
        parts = []
        for arg, schedule in self._schedules.items():
            shown = (cast("Constant", schedule).value if type(schedule).__name__ == "Constant"
                     else schedule)
            parts.append(f"{arg}={shown!r}")
        if self.selection != Selection():
            parts.append(self.selection.describe())
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._args()})"

    def config(self) -> dict[str, Any]:
        """The arguments the plugin was built with, as plain values."""
        out: dict[str, Any] = {}
        for arg, schedule in self._schedules.items():
            out[arg] = schedule.to_config()
        out["selection"] = {"kinds": list(self.selection.kinds),
                            "include": list(self.selection.include),
                            "exclude": list(self.selection.exclude)}
        return out

"""What ``regplug tune`` searches for one strategy: its tunable plugin arguments and, for a
strategy with a dropout layer, that layer's rate — each a named range.

The ranges come from the plugins' ``tunable`` declarations (:mod:`regplug.ranges`), replaced
or extended by a config's ``[tune.<plugin name>]`` tables; the strategy's own dropout rate is
searched over :data:`DEFAULT_DROPOUT_RANGE` unless ``[tune.model]`` says otherwise. Nothing
here imports Optuna or a framework, so every mistake is found before any training.

>>> from regplug.experiment.strategies import BUILTIN_STRATEGIES as B
>>> space = strategy_space(B["batch_norm_dropout"])
>>> [(p.name, p.space.describe()) for p in space.parameters]
[('model.dropout', '0.0 .. 0.7')]

Docs: docs/tune.md
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configfile import ConfigError, describe_value, read_toml
from ..experiment.strategies import Strategy, plugin_factory, strategies_from_tables
from ..ranges import (
    Choice,
    FloatRange,
    IntRange,
    SearchRange,
    SpaceError,
    apply_value,
    grid_values,
    parse_overrides,
    parse_range,
    tunable_arguments,
)
from ..registry import available_plugins

__all__ = ["Parameter", "StrategySpace", "TuneConfig", "DEFAULT_DROPOUT_RANGE", "MODEL_TABLE",
           "strategy_space", "load_tune_config", "untunable_error", "probe_values"]

#: The table of a config's ``[tune]`` section that holds the model's own ranges.
MODEL_TABLE = "model"
#: The range of a strategy's dropout layer rate: from none to most units dropped.
DEFAULT_DROPOUT_RANGE = FloatRange(0.0, 0.7)


@dataclass(frozen=True)
class Parameter:
    """One searched value of a strategy.

    :param name: the name the tuner and the outputs use: ``"<plugin>.<key>"`` (``"l2.l2"``,
        ``"dropout_schedule.rate.end"``; ``"<plugin>[i].<key>"`` when a strategy lists the
        same plugin twice), or ``"model.dropout"`` for the strategy's dropout layer.
    :param plugin: the index of the plugin in the strategy's list, ``None`` for the model.
    :param key: the plugin argument (dotted into a table argument), or ``"dropout"``.
    :param space: the range searched.
    """

    name: str
    plugin: int | None
    key: str
    space: SearchRange

    def describe(self) -> str:
        return f"{self.name} in {self.space.describe()}"


@dataclass(frozen=True)
class StrategySpace:
    """A strategy and the parameters searched for it."""

    strategy: Strategy
    parameters: tuple[Parameter, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def apply(self, values: Mapping[str, Any]) -> Strategy:
        """The strategy with each parameter set to ``values[parameter.name]`` (the others as
        the strategy has them); its name and description are kept."""
        plugins = [dict(p) for p in self.strategy.plugins]
        dropout = self.strategy.dropout
        for parameter in self.parameters:
            if parameter.name not in values:
                continue
            value = values[parameter.name]
            if parameter.plugin is None:
                dropout = float(value)
            else:
                plugins[parameter.plugin] = apply_value(plugins[parameter.plugin],
                                                        parameter.key, value)
        return dataclasses.replace(self.strategy, plugins=tuple(plugins), dropout=dropout,
                                   builtin=False)

    def grid(self, points: int) -> dict[str, list[Any]]:
        """Every parameter's grid values (``points`` per range, a choice's options)."""
        return {p.name: grid_values(p.space, points) for p in self.parameters}

    def grid_size(self, points: int) -> int:
        """How many settings a grid of ``points`` per range holds (their product)."""
        return math.prod(len(v) for v in self.grid(points).values())


@dataclass(frozen=True)
class TuneConfig:
    """What a ``regplug tune --config`` file holds: custom strategies (as ``regplug compare``
    reads them) and ranges per plugin registry name (``[tune.l2]``) and for the model
    (``[tune.model]``)."""

    strategies: dict[str, Strategy]
    ranges: dict[str, dict[str, SearchRange]]
    model: dict[str, SearchRange]


def _factory(name: str, *, where: str) -> Any:
    plugins = available_plugins()
    if name not in plugins:
        close = difflib.get_close_matches(name, [*plugins, MODEL_TABLE], n=1, cutoff=0.5)
        raise SpaceError(f"{where}: no plugin is called {name!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; name a plugin ({', '.join(sorted(plugins))}) or "
                           f"{MODEL_TABLE!r} for the model's dropout rate")
    return plugins[name].load()


def _model_ranges(table: object, *, where: str) -> dict[str, SearchRange]:
    if not isinstance(table, Mapping):
        raise SpaceError(f"{where}: expected a table, e.g. dropout = {{low = 0.0, high = 0.5}}, "
                         f"got {describe_value(table)}")
    unknown = [k for k in table if k != "dropout"]
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; the model "
                         "has one tunable value, 'dropout' (the rate of the strategy's dropout "
                         "layer)")
    found: dict[str, SearchRange] = {}
    if "dropout" in table:
        found["dropout"] = _check_dropout(parse_range(table["dropout"],
                                                      where=f"{where}.dropout"),
                                          where=f"{where}.dropout")
    return found


def _check_dropout(space: SearchRange, *, where: str) -> SearchRange:
    values = list(space.options) if isinstance(space, Choice) else [space.low, space.high]
    if isinstance(space, IntRange) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0
            for v in values):
        raise SpaceError(f"{where}: a dropout rate must be a number in [0, 1), got "
                         f"{space.describe()}")
    return space


def load_tune_config(path: str | Path) -> TuneConfig:
    """Read ``[[strategies]]`` (optional) and ``[tune.<name>]`` tables from a TOML file.

    ::

        [[strategies]]
        name = "l2_maxnorm"
        plugins = [{name = "l2", l2 = 1e-4}, {name = "max_norm", max_value = 3.0}]

        [tune.l2]
        l2 = {low = 1e-5, high = 1e-2, log = true}

        [tune.model]
        dropout = {low = 0.0, high = 0.6}

    Every mistake is a :class:`~regplug.configfile.ConfigError` naming the file and the key.
    """
    label = f"--config {str(path)!r}"
    data = read_toml(path, what="--config")
    others = sorted(set(data) - {"strategies", "tune"})
    if others or not data:
        raise ConfigError(f"{label}: expected [[strategies]] tables and/or [tune.<plugin>] "
                          f"range tables; found {', '.join(map(repr, others)) or 'nothing'}")
    strategies = strategies_from_tables(data.get("strategies", []), label=label)
    tune = data.get("tune", {})
    if not isinstance(tune, Mapping):
        raise SpaceError(f"{label}: 'tune' must hold tables [tune.<plugin name>], got "
                         f"{describe_value(tune)}")
    ranges: dict[str, dict[str, SearchRange]] = {}
    model: dict[str, SearchRange] = {}
    for name, table in tune.items():
        where = f"{label}: tune.{name}"
        if name == MODEL_TABLE:
            model = _model_ranges(table, where=where)
        else:
            ranges[name] = parse_overrides(_factory(name, where=where), table, where=where,
                                           name=name)
    return TuneConfig(strategies, ranges, model)


def strategy_space(strategy: Strategy,
                   ranges: Mapping[str, Mapping[str, SearchRange]] | None = None,
                   model: Mapping[str, SearchRange] | None = None) -> StrategySpace:
    """The parameters searched for ``strategy``: each plugin's tunable arguments (``ranges``
    of its registry name where a config gives them, else the plugin's ``tunable``), and the
    dropout layer's rate when the strategy has one (``model["dropout"]``, else
    :data:`DEFAULT_DROPOUT_RANGE`)."""
    ranges, model = ranges or {}, model or {}
    plugins = available_plugins()
    counts: dict[str, int] = {}
    for spec in strategy.plugins:
        counts[spec["name"]] = counts.get(spec["name"], 0) + 1
    parameters: list[Parameter] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(strategy.plugins):
        name = str(spec["name"])
        occurrence = seen.get(name, 0)
        seen[name] = occurrence + 1
        prefix = name if counts[name] == 1 else f"{name}[{occurrence}]"
        if name in ranges:
            found = dict(ranges[name])
        else:
            factory = (plugins[name].load() if name in plugins
                       else plugin_factory(name, where=f"strategy {strategy.name!r}"))
            found = tunable_arguments(factory, name=name)
        parameters.extend(Parameter(f"{prefix}.{key}", index, key, space)
                          for key, space in found.items())
    if strategy.dropout is not None:
        parameters.append(Parameter(f"{MODEL_TABLE}.dropout", None, "dropout",
                                    model.get("dropout", DEFAULT_DROPOUT_RANGE)))
    space = StrategySpace(strategy, tuple(parameters))
    _probe(space)
    return space


def probe_values(space: SearchRange) -> list[Any]:
    """The values a range is checked at before any training: both ends, or every option.

    >>> probe_values(FloatRange(1e-6, 0.1, log=True)), probe_values(Choice(["a", "b"]))
    ([1e-06, 0.1], ['a', 'b'])
    """
    if isinstance(space, Choice):
        return list(space.options)
    return [space.low, space.high]


def _probe(space: StrategySpace) -> None:
    """Build the strategy's plugins with each parameter at each probe value: a range a plugin
    refuses (``l2 = {low = -1, ...}``) is an error now, not a failed trial an hour in."""
    for parameter in space.parameters:
        if parameter.plugin is None:
            _check_dropout(parameter.space, where=f"strategy {space.strategy.name!r}: "
                                                  f"{parameter.name}")
            continue
        for value in probe_values(parameter.space):
            try:
                space.apply({parameter.name: value}).build_plugins()
            except (ConfigError, TypeError, ValueError) as err:
                # described only here: a choice of thousands of options is long to describe
                raise SpaceError(f"strategy {space.strategy.name!r}: {parameter.name} = "
                                 f"{value!r} (from its range {parameter.space.describe()}) is "
                                 f"refused: {err}") from None


def untunable_error(untunable: Sequence[str], tunable: Sequence[str]) -> SpaceError:
    """The error for strategies with nothing to search, naming them and the tunable ones.

    >>> print(untunable_error(["none"], ["l2", "dropout"]))
    strategy 'none' has nothing to tune (no plugin declares a tunable argument, no dropout layer); tunable strategies: l2, dropout; a config's [tune.<plugin>] table can give a plugin ranges
    """  # noqa: E501
    names = ", ".join(map(repr, untunable))
    plural = "strategies" if len(untunable) > 1 else "strategy"
    verb = "have" if len(untunable) > 1 else "has"
    return SpaceError(f"{plural} {names} {verb} nothing to tune (no plugin declares a tunable "
                      "argument, no dropout layer); tunable strategies: "
                      f"{', '.join(tunable) or '(none)'}; a config's [tune.<plugin>] table can "
                      "give a plugin ranges")

"""Tunable ranges: which arguments of a plugin are worth tuning, and over what range.

A plugin declares them in a class attribute ``tunable``, a mapping from a constructor argument
to a range — :class:`FloatRange` (``log=True`` for strengths that span decades),
:class:`IntRange` or :class:`Choice`, all frozen and checked when built. Any object can carry
it, so a third-party plugin is as tunable as a built-in one. Nothing here knows about a tuner:
``regplug tune`` turns the ranges into Optuna's suggestions, a TOML file may replace them
(:func:`parse_range`), and a dotted key (``"rate.end"``) addresses an entry of a table
argument (:func:`apply_value`).

Docs: docs/plugin-guide.md, docs/tune.md
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .configfile import ConfigError, describe_value

__all__ = ["FloatRange", "IntRange", "Choice", "SearchRange", "ChoiceValue", "SpaceError",
           "tunable_arguments", "parse_range", "parse_overrides", "grid_values",
           "apply_value", "range_keys", "describe_space"]

#: The values a :class:`Choice` may offer (what TOML and every tuner can represent).
ChoiceValue = str | int | float | bool


class SpaceError(ConfigError):
    """A ``tunable`` declaration, a range in a config or a dotted key that cannot be used;
    the message names the plugin or the config key path, the key and what is allowed."""


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    """Whether a real number is finite; integers always are (``float()`` of a huge one
    overflows, which does not make it infinite)."""
    return _is_int(value) or math.isfinite(value)  # type: ignore[arg-type]


def _check_bounds(kind: str, low: object, high: object, log: object,
                  is_number: Callable[[object], bool], what: str) -> None:
    """The checks :class:`FloatRange` and :class:`IntRange` share; ``ValueError`` naming the
    bound (``low``, ``high``, ``log``) and what it must be."""
    for arg, value in (("low", low), ("high", high)):
        if not is_number(value):
            raise ValueError(f"{kind}: {arg!r} must be {what}, got {describe_value(value)}")
        if not _finite(value):
            raise ValueError(f"{kind}: {arg!r} must be finite, got {value!r}")
    if not isinstance(log, bool):
        raise ValueError(f"{kind}: 'log' must be True or False, got {describe_value(log)}")
    if not low < high:  # type: ignore[operator]
        raise ValueError(f"{kind}: 'low' must be < 'high', got low={low!r}, high={high!r}; "
                         "for a fixed value use Choice([value])")
    if log and not low > 0:  # type: ignore[operator]
        raise ValueError(f"{kind}: a log range needs 'low' > 0, got low={low!r}; "
                         "use log=False to include 0 or negative values")


@dataclass(frozen=True)
class FloatRange:
    """A real number in ``[low, high]``, searched on a log scale when ``log``.

    Bounds are stored as floats, so ``to_config`` writes ``1.0`` for ``1`` and the table
    reads back as a float range.

    >>> r = FloatRange(1e-6, 0.1, log=True)
    >>> r.describe(), r.contains(1e-3), r.contains(0.0)
    ('1e-06 .. 0.1, log', True, False)
    >>> r.to_config()
    {'low': 1e-06, 'high': 0.1, 'log': True}
    >>> FloatRange(0.0, 1.0, log=True)
    Traceback (most recent call last):
    ValueError: FloatRange: a log range needs 'low' > 0, got low=0.0; use log=False to include
    0 or negative values
    """

    low: float
    high: float
    log: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_bounds("FloatRange", self.low, self.high, self.log, _is_real, "a real number")
        try:
            low, high = float(self.low), float(self.high)
        except OverflowError:  # an integer bound beyond the largest float
            raise ValueError(f"FloatRange: bounds must be within ±{sys.float_info.max:g}, got "
                             f"low={describe_value(self.low)}, "
                             f"high={describe_value(self.high)}") from None
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def describe(self) -> str:
        """``"1e-06 .. 0.1, log"``: the bounds as Python writes them, and the scale."""
        return f"{self.low!r} .. {self.high!r}" + (", log" if self.log else "")

    def contains(self, value: object) -> bool:
        """Whether ``value`` is a real number (not a bool) in ``[low, high]``."""
        return _is_real(value) and self.low <= value <= self.high  # type: ignore[operator]

    def to_config(self) -> dict[str, Any]:
        """The TOML / dict form :func:`parse_range` reads back (``log`` only when true)."""
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]``, searched on a log scale when ``log``.

    >>> r = IntRange(1, 30, log=True)
    >>> r.describe(), r.contains(5), r.contains(5.0), r.to_config()
    ('1 .. 30, log', True, False, {'low': 1, 'high': 30, 'log': True})
    """

    low: int
    high: int
    log: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_bounds("IntRange", self.low, self.high, self.log, _is_int, "an integer")
        object.__setattr__(self, "low", int(self.low))
        object.__setattr__(self, "high", int(self.high))

    def describe(self) -> str:
        """``"1 .. 30, log"``."""
        return f"{self.low} .. {self.high}" + (", log" if self.log else "")

    def contains(self, value: object) -> bool:
        """Whether ``value`` is an integer (not a bool, not a float) in ``[low, high]``."""
        return _is_int(value) and self.low <= int(value) <= self.high  # type: ignore[call-overload]

    def to_config(self) -> dict[str, Any]:
        """The TOML / dict form :func:`parse_range` reads back (``log`` only when true)."""
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


def _choice_key(value: ChoiceValue) -> tuple[str, object]:
    """Options that are the same value: ``1`` and ``1.0`` are, ``True`` and ``1`` are not."""
    kind = "bool" if isinstance(value, bool) else "str" if isinstance(value, str) else "number"
    return kind, value


@dataclass(frozen=True)
class Choice:
    """One of ``options``: strings, integers, floats or booleans, no duplicates.

    >>> c = Choice(["patience", "gap"])
    >>> c, c.describe(), c.contains("gap")
    (Choice(options=('patience', 'gap')), "one of 'patience', 'gap'", True)
    >>> c.to_config()
    {'choices': ['patience', 'gap']}
    >>> Choice([1, 1.0])
    Traceback (most recent call last):
    ValueError: Choice: 'options' must not repeat a value, got 1.0 twice
    """

    options: tuple[ChoiceValue, ...]

    def __post_init__(self) -> None:
        options = self.options
        if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
            raise ValueError(f"Choice: 'options' must be a list of values, got "
                             f"{describe_value(options)}; for one value write [value]")
        if not options:
            raise ValueError("Choice: 'options' must hold at least one value, got none")
        seen: set[tuple[str, object]] = set()
        for option in options:
            if not isinstance(option, (str, int, float, bool)):
                raise ValueError(f"Choice: each option must be a string, an integer, a float or "
                                 f"a bool, got {describe_value(option)}")
            if isinstance(option, float) and not math.isfinite(option):
                raise ValueError(f"Choice: float options must be finite, got {option!r}")
            key = _choice_key(option)
            if key in seen:
                raise ValueError(f"Choice: 'options' must not repeat a value, got {option!r} "
                                 "twice")
            seen.add(key)
        object.__setattr__(self, "options", tuple(options))

    def describe(self) -> str:
        """``"one of 'a', 'b'"``."""
        return "one of " + ", ".join(map(repr, self.options))

    def contains(self, value: object) -> bool:
        """Whether ``value`` is one of the options (``True`` is not ``1``)."""
        if not isinstance(value, (str, int, float, bool)):
            return False
        return any(_choice_key(value) == _choice_key(o) for o in self.options)

    def to_config(self) -> dict[str, Any]:
        """``{"choices": [...]}``, which :func:`parse_range` reads back."""
        return {"choices": list(self.options)}


#: Any range a ``tunable`` declaration or a config may give.
SearchRange = FloatRange | IntRange | Choice

#: The keys of a range table in a config, as :func:`parse_range` reads them.
RANGE_KEYS = ("low", "high", "log", "choices")


def range_keys() -> tuple[str, ...]:
    """The keys that make a config table a range (``low``, ``high``, ``log``, ``choices``)."""
    return RANGE_KEYS


def parse_range(value: object, *, where: str) -> SearchRange:
    """The range a config table describes; a :class:`SpaceError` naming ``where`` otherwise.

    ``{low = 1e-6, high = 1e-2, log = true}`` is a :class:`FloatRange` when either bound is a
    float and an :class:`IntRange` when both are integers; ``{choices = [...]}`` is a
    :class:`Choice`. A bare value is a fixed setting, not a range.

    >>> parse_range({"low": 1e-6, "high": 1e-2, "log": True}, where="tune.l2.l2")
    FloatRange(low=1e-06, high=0.01, log=True)
    >>> parse_range({"low": 1, "high": 30}, where="tune.early_stopping.patience")
    IntRange(low=1, high=30, log=False)
    >>> parse_range(1e-4, where="tune.l2.l2")
    Traceback (most recent call last):
    regplug.ranges.SpaceError: tune.l2.l2: expected a range table {low = ..., high = ...} or
    {choices = [...]}, got 0.0001; to fix the value write {choices = [0.0001]}
    """
    if not isinstance(value, Mapping):
        fixed = (f"; to fix the value write {{choices = [{_toml(value)}]}}"
                 if isinstance(value, (str, int, float)) else "")
        raise SpaceError(f"{where}: expected a range table {{low = ..., high = ...}} or "
                         f"{{choices = [...]}}, got {describe_value(value)}{fixed}")
    unknown = [k for k in value if k not in RANGE_KEYS]
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} in a range "
                         "table; allowed: low, high, log (a range) or choices (a list)")
    try:
        if "choices" in value:
            if len(value) != 1:
                others = ", ".join(repr(k) for k in value if k != "choices")
                raise ValueError(f"'choices' cannot be combined with {others}")
            choices = value["choices"]
            if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
                raise ValueError(f"'choices' must be a list, got {describe_value(choices)}")
            if not choices:
                raise ValueError("'choices' must hold at least one value, e.g. "
                                 "{choices = [0.1, 0.2]}")
            return Choice(tuple(choices))
        missing = [k for k in ("low", "high") if k not in value]
        if missing:
            raise ValueError(f"a range needs 'low' and 'high'; {' and '.join(missing)} missing")
        low, high, log = value["low"], value["high"], value.get("log", False)
        if (isinstance(low, (int, float)) and isinstance(high, (int, float))
                and not isinstance(low, bool) and not isinstance(high, bool)
                and _finite(low) and _finite(high) and not low < high):
            raise ValueError(f"'low' must be < 'high', got low = {_toml(low)}, high = "
                             f"{_toml(high)}; to fix the value write {{choices = "
                             f"[{_toml(low)}]}}")
        if _is_int(low) and _is_int(high):
            return IntRange(low, high, log=log)
        return FloatRange(low, high, log=log)
    except ValueError as err:
        # the classes' own messages name them (``FloatRange: 'log' must be ...``): a config
        # speaks of keys, not of classes
        message = re.sub(r"^(FloatRange|IntRange|Choice): ", "", str(err))
        raise SpaceError(f"{where}: {message}") from None


def _toml(value: object) -> str:
    """A scalar as TOML writes it (strings in double quotes, booleans lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _factory(obj: object) -> Any:
    """What builds ``obj``: the object itself when it is a class or a factory function, else
    the class of an instance."""
    if inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, functools.partial):
        return obj
    return type(obj)


def _plugin_label(obj: object, name: str | None) -> str:
    factory = _factory(obj)
    qualname = getattr(factory, "__qualname__", type(factory).__name__)
    target = f"{getattr(factory, '__module__', '?')}.{qualname}"
    return f"plugin {name!r} ({target})" if name else f"plugin {target}"


def _accepted(factory: Any) -> tuple[list[str], bool] | None:
    """The keyword arguments ``factory`` accepts and whether it takes ``**kwargs``; None when
    its signature cannot be read (a builtin): nothing can be checked then."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_key(obj: object, key: object, *, label: str) -> str:
    """``key`` after checking it names an argument the constructor of ``obj`` accepts (its
    first dotted part, for a key into a config table); a :class:`SpaceError` otherwise."""
    if not isinstance(key, str):
        raise SpaceError(f"{label}: tunable keys must be argument names (strings), got "
                         f"{describe_value(key)}")
    parts = key.split(".")
    if not parts[0].isidentifier() or not all(parts):
        raise SpaceError(f"{label}: tunable key {key!r} must be an argument name, or a dotted "
                         "path into a table argument ('rate.end')")
    accepted = _accepted(_factory(obj))
    if accepted is not None:
        names, any_keyword = accepted
        if parts[0] not in names and not any_keyword:
            inner = f" (the first part of {key!r})" if len(parts) > 1 else ""
            raise SpaceError(f"{label}: tunable key {parts[0]!r}{inner} is not an argument of "
                             f"its constructor; it accepts {', '.join(names) or 'none'}")
    return key


def tunable_arguments(plugin: object, *, name: str | None = None) -> dict[str, SearchRange]:
    """The arguments ``plugin`` (a class, a factory or an instance) declares worth tuning, from
    its ``tunable`` attribute; ``{}`` when it declares none.

    Every key must be a keyword argument of the constructor (or, dotted, a path into a table
    argument) and every value a :class:`FloatRange`, :class:`IntRange` or :class:`Choice`;
    otherwise a :class:`SpaceError` names the plugin (``name`` when given), the key and what
    is allowed.

    >>> from regplug.plugins import L2
    >>> tunable_arguments(L2)
    {'l2': FloatRange(low=1e-06, high=0.1, log=True)}
    >>> class Bad:
    ...     tunable = {"strength": FloatRange(0.0, 1.0)}
    ...     def __init__(self, l2=0.0): ...
    >>> tunable_arguments(Bad, name="bad")
    Traceback (most recent call last):
    regplug.ranges.SpaceError: plugin 'bad' (regplug.ranges.Bad): tunable key 'strength' is not an
    argument of its constructor; it accepts l2
    """
    declared = getattr(plugin, "tunable", None)
    if declared is None:
        return {}
    label = _plugin_label(plugin, name)
    if not isinstance(declared, Mapping):
        raise SpaceError(f"{label}: 'tunable' must be a mapping from argument name to a range "
                         f"(FloatRange, IntRange or Choice), got {describe_value(declared)}")
    found: dict[str, SearchRange] = {}
    for key, value in declared.items():
        check_key(plugin, key, label=label)
        if not isinstance(value, (FloatRange, IntRange, Choice)):
            raise SpaceError(f"{label}: tunable[{key!r}] must be a FloatRange, IntRange or "
                             f"Choice, got {describe_value(value)}")
        found[key] = value
    return found


def describe_space(space: Mapping[str, SearchRange]) -> str:
    """A one-line account of a search space, as ``regplug plugins`` can list it.

    >>> describe_space({"l1": FloatRange(1e-6, 1e-2, log=True), "mode": Choice(["a", "b"])})
    "l1: 1e-06 .. 0.01, log; mode: one of 'a', 'b'"
    >>> describe_space({})
    ''
    """
    return "; ".join(f"{key}: {value.describe()}" for key, value in space.items())


def parse_overrides(plugin: object, table: object, *, where: str,
                    name: str | None = None) -> dict[str, SearchRange]:
    """The search space of ``plugin`` with the ranges a config table (``[tune.<name>]``)
    gives: its declared ``tunable`` arguments, each replaced or added by the table.

    A key may be written dotted and quoted (``"rate.end" = {low = 0.0, high = 0.5}``) or as
    TOML's nested tables (``rate.end = {...}`` unquoted, or ``[tune.x.rate]`` ``end = ...``):
    a table without ``low``, ``high`` or ``choices`` is read as a level of keys. Errors name
    ``where`` and the key path.

    >>> from regplug.plugins import L2
    >>> parse_overrides(L2, {"l2": {"low": 1e-5, "high": 1e-3, "log": True}}, where="tune.l2")
    {'l2': FloatRange(low=1e-05, high=0.001, log=True)}
    >>> parse_overrides(L2, {"l3": {"low": 0.0, "high": 1.0}}, where="tune.l2")
    Traceback (most recent call last):
    regplug.ranges.SpaceError: tune.l2: tunable key 'l3' is not an argument of its constructor; it
    accepts l2, kinds, include, exclude
    """
    if not isinstance(table, Mapping):
        raise SpaceError(f"{where}: expected a table of argument = range, got "
                         f"{describe_value(table)}")
    space = tunable_arguments(plugin, name=name)
    for key, value in _flatten(table, ""):
        check_key(plugin, key, label=where)
        space[key] = parse_range(value, where=f"{where}.{key}")
    return space


def _flatten(table: Mapping[Any, Any], prefix: str) -> list[tuple[str, object]]:
    """``{"rate": {"end": {"low": 0}}}`` → ``[("rate.end", {"low": 0})]``: nested tables that
    are not ranges become dotted keys."""
    out: list[tuple[str, object]] = []
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value and not any(k in value for k in
                                                             ("low", "high", "choices")):
            out.extend(_flatten(value, path))
        else:
            out.append((path, value))
    return out


def grid_values(space: SearchRange, points: int) -> list[Any]:
    """``points`` values of a range, sorted, both ends included, for a grid search.

    Evenly spaced, geometrically for a log range; an :class:`IntRange`'s values are rounded
    and deduplicated (so there may be fewer than ``points``); a :class:`Choice` gives its
    options, whatever ``points``.

    >>> grid_values(FloatRange(0.0, 0.5), 3)
    [0.0, 0.25, 0.5]
    >>> grid_values(IntRange(1, 30, log=True), 5)
    [1, 2, 5, 13, 30]
    >>> grid_values(IntRange(0, 2), 5)
    [0, 1, 2]
    """
    if isinstance(space, Choice):
        return list(space.options)
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"grid_values: 'points' must be an integer >= 2 (a grid includes both "
                         f"ends of {space.describe()}), got {points!r}")
    fractions = [i / (points - 1) for i in range(points)]
    if isinstance(space, IntRange):
        if space.log:
            ratio = math.log(space.high) - math.log(space.low)
            raw = [_round_int(math.log(space.low) + t * ratio, space) for t in fractions]
        else:
            span, steps = space.high - space.low, points - 1
            # exact integer rounding (half up), no float error for large bounds
            raw = [space.low + (2 * span * i + steps) // (2 * steps) for i in range(points)]
        return sorted(set(raw) | {space.low, space.high})
    low, high = space.low, space.high
    if space.log:
        ratio = math.log(high) - math.log(low)
        values = [math.exp(math.log(low) + t * ratio) for t in fractions]
    elif math.isinf(high - low):  # the bounds are finite but their difference overflows
        values = [2.0 * (low / 2 + t * (high / 2 - low / 2)) for t in fractions]
    else:
        values = [low + t * (high - low) for t in fractions]
    # Inner points to 12 significant digits: 1e-05, not 1.0000000000000016e-05 (the error of
    # exp and log); the ends exactly as given.
    inner = {min(max(float(f"{v:.12g}"), low), high) for v in values[1:-1]}
    return sorted(inner | {low, high})


def _round_int(log_value: float, space: IntRange) -> int:
    """``e^log_value`` rounded to an integer of ``space`` (its top, where that overflows)."""
    try:
        value = math.exp(log_value)
    except OverflowError:
        return space.high
    return min(max(round(value), space.low), space.high)


def apply_value(config: Mapping[str, Any], key: str, value: object) -> dict[str, Any]:
    """A copy of the plugin config ``config`` with the argument ``key`` set to ``value``.

    A dotted key sets an entry of a nested table (copied, never changed in place; missing
    tables are created); an intermediate value that is not a table is a :class:`SpaceError`.

    >>> base = {"name": "dropout_schedule", "rate": {"schedule": "linear", "end": 0.5}}
    >>> apply_value(base, "rate.end", 0.3)
    {'name': 'dropout_schedule', 'rate': {'schedule': 'linear', 'end': 0.3}}
    >>> base["rate"]["end"]
    0.5
    >>> apply_value({"name": "dropout_schedule", "rate": 0.2}, "rate.end", 0.3)
    Traceback (most recent call last):
    regplug.ranges.SpaceError: plugin config 'dropout_schedule': cannot set 'rate.end': 'rate' is
    0.2, not a table
    """
    parts = key.split(".")
    if not all(parts):
        raise SpaceError(f"apply_value: key {key!r} has an empty part")
    result = dict(config)
    table = result
    for depth, part in enumerate(parts[:-1]):
        inner = table.get(part, {})
        if not isinstance(inner, Mapping):
            label = config.get("name", "?")
            at = ".".join(parts[:depth + 1])
            raise SpaceError(f"plugin config {label!r}: cannot set {key!r}: {at!r} is "
                             f"{describe_value(inner)}, not a table")
        copied = dict(inner)
        table[part] = copied
        table = copied
    table[parts[-1]] = value
    return result

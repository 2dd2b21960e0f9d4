"""Argument checks shared by the built-in plugins.

Errors are raised when a plugin is *constructed*, never in the middle of training, and say
which plugin, which argument, what range is allowed and what was given.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

import math
import numbers


def check_real(owner: str, arg: str, value: object, *, low: float = 0.0,
               high: float = math.inf, low_open: bool = False,
               high_open: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number in range.

    >>> check_real("L2", "l2", 0.01)
    0.01
    """
    allowed = _describe_range(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: argument {arg!r} must be a real number {allowed}, "
                        f"got {value!r} of type {type(value).__name__}")
    number = float(value)
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if not math.isfinite(number) or below or above:
        raise ValueError(f"{owner}: argument {arg!r} must be a finite number {allowed}, "
                         f"got {value!r}")
    return number


def check_int(owner: str, arg: str, value: object, *, low: int = 0) -> int:
    """Return ``value`` after checking it is an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: argument {arg!r} must be an integer >= {low}, "
                        f"got {value!r} of type {type(value).__name__}")
    if value < low:
        raise ValueError(f"{owner}: argument {arg!r} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_bool(owner: str, arg: str, value: object) -> bool:
    """Return ``value`` after checking it is ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: argument {arg!r} must be True or False, got {value!r}")
    return value


def check_choice(owner: str, arg: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: argument {arg!r} must be one of "
                         f"{', '.join(map(repr, choices))}; got {value!r}")
    return value


def _describe_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    lo = f"{'>' if low_open else '>='} {low:g}"
    if math.isinf(high):
        return lo
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"



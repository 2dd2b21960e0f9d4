"""Deprecated: the tunable ranges moved to :mod:`regplug.ranges` (the same names).

Import them from :mod:`regplug.ranges`, or ``FloatRange``, ``IntRange``, ``Choice``,
``SearchRange``, ``SpaceError`` and ``tunable_arguments`` from :mod:`regplug` itself.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

import warnings

from .ranges import (
    Choice,
    ChoiceValue,
    FloatRange,
    IntRange,
    SearchRange,
    SpaceError,
    apply_value,
    describe_space,
    grid_values,
    parse_overrides,
    parse_range,
    range_keys,
    tunable_arguments,
)

__all__ = ["FloatRange", "IntRange", "Choice", "SearchRange", "ChoiceValue", "SpaceError",
           "tunable_arguments", "parse_range", "parse_overrides", "grid_values",
           "apply_value", "range_keys", "describe_space"]

warnings.warn("regplug.space is deprecated: import from regplug.ranges (the same names)",
              DeprecationWarning, stacklevel=2)

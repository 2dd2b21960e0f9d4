"""``regplug compare``: train one model under several regularization strategies, side by side.

The command on top of :mod:`regplug.experiment` (strategies, data, models, the frameworks'
runners, output folders): its command line (:mod:`.cli`), the comparison itself
(:mod:`.comparison`), the results table, CSV/JSON and seed statistics (:mod:`.results`,
:mod:`.stats`), the progress line (:mod:`.progress`), the figures (:mod:`.plots`) and
``report.html`` (:mod:`.report`).

Docs: docs/compare.md
"""

from __future__ import annotations

# The experiment layer's names this package exported before they moved to regplug.experiment
# (0.1.0): `from regplug.compare import ModelSpec` in a --model factory keeps working.
from ..experiment import (
    BUILTIN_MODELS,
    BUILTIN_STRATEGIES,
    DEFAULT_STRATEGIES,
    FrameworkRunner,
    FrameworkUnavailable,
    ModelChoice,
    ModelSpec,
    Splits,
    Strategy,
    TrainOutcome,
    TrainSettings,
    WeightArray,
    framework_names,
    get_runner,
    load_strategies,
    register_runner,
    resolve_data,
    resolve_model,
    select_strategies,
    split_validation,
)
from .comparison import run_compare
from .progress import Progress
from .results import StrategyResult, format_table

__all__ = [
    "run_compare", "StrategyResult", "format_table", "Progress",
    # from regplug.experiment, where they live
    "Strategy", "BUILTIN_STRATEGIES", "DEFAULT_STRATEGIES", "load_strategies",
    "select_strategies", "ModelSpec", "ModelChoice", "BUILTIN_MODELS", "resolve_model",
    "Splits", "resolve_data", "split_validation", "TrainSettings",
    "FrameworkRunner", "FrameworkUnavailable", "framework_names", "get_runner", "register_runner",
    "TrainOutcome", "WeightArray",
]

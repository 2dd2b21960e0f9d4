"""``regplug compare``: train one model under several regularization strategies, side by side.

The framework-neutral part of the command: strategies (built-in and from a TOML config),
data and model resolution, the results table, CSV/JSON, figures and report, the progress
bar and all-at-once output. The training itself happens in the frameworks' runners
(:class:`FrameworkRunner`, found by name in the registry of :mod:`.frameworks`; regplug's own
are ``regplug.adapters.torch.compare`` and ``regplug.adapters.keras.compare``), loaded only
when their framework is asked for.

>>> from regplug.compare import select_strategies
>>> [s.name for s in select_strategies("none,l2,proximal_l1")]
['none', 'l2', 'proximal_l1']
"""

from __future__ import annotations

from .datasets import Splits, resolve_data, split_validation
from .frameworks import (
    FrameworkRunner,
    FrameworkUnavailable,
    TrainSettings,
    framework_names,
    get_runner,
    register_runner,
)
from .models import BUILTIN_MODELS, ModelChoice, ModelSpec, resolve_model
from .progress import Progress
from .results import StrategyResult, TrainOutcome, WeightArray, format_table
from .runner import run_compare
from .strategies import (
    BUILTIN_STRATEGIES,
    DEFAULT_STRATEGIES,
    Strategy,
    load_strategies,
    select_strategies,
)

__all__ = [
    "Strategy", "BUILTIN_STRATEGIES", "DEFAULT_STRATEGIES", "load_strategies",
    "select_strategies", "ModelSpec", "ModelChoice", "BUILTIN_MODELS", "resolve_model",
    "Splits", "resolve_data", "split_validation", "TrainSettings", "run_compare",
    "FrameworkRunner", "FrameworkUnavailable", "framework_names", "get_runner", "register_runner",
    "StrategyResult", "TrainOutcome", "WeightArray", "format_table", "Progress",
]

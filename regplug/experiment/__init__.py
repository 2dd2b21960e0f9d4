"""The experiment layer that ``regplug compare`` and ``regplug tune`` both stand on.

An experiment trains one model under regularization strategies: the strategies
(:mod:`.strategies`), the data (:mod:`.loaders`, :mod:`.datasets`), the model
(:mod:`.models`), the frameworks' runners behind one protocol (:mod:`.frameworks`), the
training of one strategy (:mod:`.training`), the shared command-line options
(:mod:`.arguments`) and the output written all at once (:mod:`.output`, :mod:`.reporting`).
Nothing here imports a framework: the runners live with their adapters, loaded by name.

>>> from regplug.experiment import select_strategies
>>> [s.name for s in select_strategies("none,l2,proximal_l1")]
['none', 'l2', 'proximal_l1']

Docs: docs/compare.md, docs/tune.md
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
from .strategies import (
    BUILTIN_STRATEGIES,
    DEFAULT_STRATEGIES,
    Strategy,
    load_strategies,
    select_strategies,
)
from .training import TrainOutcome, WeightArray, restored_epoch, train_strategy

__all__ = [
    "Strategy", "BUILTIN_STRATEGIES", "DEFAULT_STRATEGIES", "load_strategies",
    "select_strategies", "ModelSpec", "ModelChoice", "BUILTIN_MODELS", "resolve_model",
    "Splits", "resolve_data", "split_validation", "TrainSettings",
    "FrameworkRunner", "FrameworkUnavailable", "framework_names", "get_runner", "register_runner",
    "TrainOutcome", "WeightArray", "train_strategy", "restored_epoch",
]

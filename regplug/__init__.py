"""regplug: regularization plugins for existing training loops.

The core is framework-neutral: hook specifications (:mod:`regplug.hookspecs`), a plugin
manager on pluggy, the :class:`Run` that plugins see, the ops protocol, and the epoch clock
and step window that decide when hooks fire. Built-in plugins live in :mod:`regplug.plugins`.
The adapters wire the same plugin objects into four loops: a plain PyTorch loop
(:mod:`regplug.adapters.torch`), Keras ``model.fit`` (:mod:`regplug.adapters.keras`), the
Lightning ``Trainer`` (:mod:`regplug.adapters.lightning`) and the Hugging Face ``Trainer``
(:mod:`regplug.adapters.transformers`).

Docs: docs/index.md (the API reference: docs/api/core.md).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .depth import DepthError, depth_groups, resolve_depths
from .doctor.diagnosis import diagnose
from .errors import (
    PluginLoadError,
    PluginValidationError,
    RegplugError,
    RegplugWarning,
    UnknownPluginError,
    UnsupportedPluginError,
    UsageError,
)
from .hookspecs import HOOK_NAMES, hookimpl, hookspec
from .manager import PluginManager
from .ops import Ops
from .penalty import Penalty
from .plugin import CAPABILITIES, Plugin
from .ranges import Choice, FloatRange, IntRange, SearchRange, SpaceError, tunable_arguments
from .registry import available_plugins, build_plugins, create_plugin, load_config
from .run import DropoutHandle, LocalWorld, ParamHandle, Run, ScheduledValue, StopRequest
from .schedules import (
    Constant,
    Cosine,
    EarlyDropout,
    ExponentialRamp,
    LateDropout,
    Linear,
    LinearWarmup,
    Piecewise,
    Schedule,
    Step,
)
from .selection import DEFAULT_KINDS, PARAM_KINDS, Selection
from .uncertainty import MCPrediction

__version__ = "0.1.0"

__all__ = [
    "HOOK_NAMES", "DEFAULT_KINDS", "PARAM_KINDS", "CAPABILITIES", "DropoutHandle",
    "hookimpl", "hookspec", "Plugin", "PluginManager", "Run", "ParamHandle", "Penalty",
    "Ops", "Selection", "ScheduledValue", "StopRequest", "LocalWorld",
    "Schedule", "Constant", "LinearWarmup", "Linear", "Cosine", "Step", "Piecewise",
    "ExponentialRamp", "EarlyDropout", "LateDropout",
    "available_plugins", "build_plugins", "create_plugin", "load_config", "MCPrediction",
    "FloatRange", "IntRange", "Choice", "SearchRange", "SpaceError", "tunable_arguments",
    "RegplugError", "PluginValidationError", "UnknownPluginError", "PluginLoadError",
    "UsageError", "UnsupportedPluginError", "RegplugWarning",
    "resolve_depths", "depth_groups", "DepthError",
    "plugins", "diagnose",
]


def __getattr__(name: str) -> Any:
    # `regplug.plugins` without importing it eagerly: the core stays importable on its own.
    if name == "plugins":
        return import_module(".plugins", __name__)
    raise AttributeError(f"module 'regplug' has no attribute {name!r}")

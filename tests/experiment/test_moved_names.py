"""Names that moved into regplug.experiment / regplug.ranges stay importable where 0.1.0 had
them: the same objects, the old modules warning that they are deprecated."""

from __future__ import annotations

import importlib
import sys

import pytest

import regplug.compare
import regplug.experiment
import regplug.experiment.loaders
import regplug.ranges

# regplug.compare.__all__ of 0.1.0, less what stayed in regplug.compare itself
MOVED_FROM_COMPARE = [
    "Strategy", "BUILTIN_STRATEGIES", "DEFAULT_STRATEGIES", "load_strategies",
    "select_strategies", "ModelSpec", "ModelChoice", "BUILTIN_MODELS", "resolve_model",
    "Splits", "resolve_data", "split_validation", "TrainSettings",
    "FrameworkRunner", "FrameworkUnavailable", "framework_names", "get_runner", "register_runner",
    "TrainOutcome", "WeightArray",
]


@pytest.mark.parametrize("name", MOVED_FROM_COMPARE)
def test_regplug_compare_still_exports_what_it_exported(name):
    assert name in regplug.compare.__all__
    assert getattr(regplug.compare, name) is getattr(regplug.experiment, name)


def _fresh_import(module: str):
    sys.modules.pop(module, None)
    with pytest.warns(DeprecationWarning, match=rf"{module} is deprecated"):
        return importlib.import_module(module)


def test_regplug_data_is_the_loaders_under_a_warning():
    data = _fresh_import("regplug.data")
    for name in ("Dataset", "load_digits", "load_mnist", "load_npz", "from_arrays"):
        assert getattr(data, name) is getattr(regplug.experiment.loaders, name)


def test_regplug_space_is_the_ranges_under_a_warning():
    space = _fresh_import("regplug.space")
    for name in space.__all__:
        assert getattr(space, name) is getattr(regplug.ranges, name)

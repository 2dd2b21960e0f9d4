"""Bad input: every invalid argument raises at construction, naming plugin, argument, range."""

from __future__ import annotations

import math

import numpy as np
import pytest

import regplug
from regplug.plugins import L1, L2, DecoupledWeightDecay, ElasticNet, MaxNorm, ProximalL1
from regplug.testing import NumpyLoop

STRENGTHS = [(L1, "l1"), (L2, "l2"), (ElasticNet, "l1"), (ElasticNet, "l2"),
             (DecoupledWeightDecay, "weight_decay"), (ProximalL1, "l1"), (MaxNorm, "max_value")]


def _expected_range(cls):
    return "> 0" if cls is MaxNorm else ">= 0"


@pytest.mark.parametrize("cls,arg", STRENGTHS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_invalid_strength_raises_value_error_naming_plugin_argument_and_range(cls, arg, bad):
    with pytest.raises(ValueError) as err:
        cls(**{arg: bad})
    message = str(err.value)
    assert message.startswith(f"{cls.__name__}: argument {arg!r} must be a finite number "
                              f"{_expected_range(cls)}, got {bad!r}")


@pytest.mark.parametrize("cls,arg", STRENGTHS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("bad", ["0.1", True, None, [0.1]])
def test_non_numeric_strength_raises_type_error(cls, arg, bad):
    with pytest.raises(TypeError, match=rf"{cls.__name__}: argument '{arg}' must be a real number"):
        cls(**{arg: bad})


def test_max_norm_zero_is_refused():
    with pytest.raises(ValueError, match=r"MaxNorm: argument 'max_value' must be a finite number > 0, got 0"):
        MaxNorm(0)


@pytest.mark.parametrize("cls", [L1, L2, ElasticNet, DecoupledWeightDecay, ProximalL1, MaxNorm])
def test_unknown_kind_lists_the_allowed_kinds(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: argument 'kinds' must be 'all' or a non-empty list drawn from 'weight', 'bias', 'normalization', 'embedding'; got 'weights'"):
        cls(kinds="weights")


def test_empty_kind_list_is_refused():
    with pytest.raises(ValueError, match="argument 'kinds'"):
        L2(kinds=[])


def test_schedule_that_goes_negative_is_refused():
    with pytest.raises(ValueError, match=r"L2: argument 'l2' must be a finite number >= 0, got -0.1 \(a value of the schedule LinearWarmup"):
        L2(regplug.LinearWarmup(0.01, warmup_steps=10, start=-0.1))


def test_schedule_config_with_unknown_name_is_refused():
    with pytest.raises(ValueError, match=r"L2: argument 'l2.schedule' must be one of 'constant', 'linear_warmup', 'linear', .*, 'late_dropout'; got 'cosine_restarts'"):
        L2({"schedule": "cosine_restarts", "value": 0.1})


def test_linear_warmup_needs_exactly_one_length():
    with pytest.raises(ValueError, match="exactly one of 'warmup_steps' and 'warmup_epochs'"):
        regplug.LinearWarmup(0.1)
    with pytest.raises(ValueError, match="'warmup_steps' must be an integer >= 1, got 0"):
        regplug.LinearWarmup(0.1, warmup_steps=0)


def test_a_selection_matching_nothing_warns_naming_the_plugin():
    with pytest.warns(regplug.RegplugWarning, match=r"L2: the selection \(kinds=\['weight'\], include=\['encoder.\*'\]\) matches none of the model's 2 parameters, so it acts on nothing. Kinds present: \{'weight': 1, 'bias': 1\}"):
        NumpyLoop({"fc.weight": np.ones((2, 2)), "fc.bias": np.ones(2)},
                  [L2(0.1, include="encoder.*")])


def test_a_user_written_plugin_selecting_nothing_is_warned_about_too():
    class ShrinkHead(regplug.Plugin):
        def __init__(self):
            self.selection = regplug.Selection.build("ShrinkHead", include="head.*")

        def on_step(self, run, step):
            run.ops.scale_(run.parameters(self.selection), 0.5)

    loop = NumpyLoop({"0.weight": np.ones((2, 2))}, [ShrinkHead()])
    with pytest.warns(regplug.RegplugWarning, match="ShrinkHead: the selection .* names start with: 0.weight"):
        loop.step({"0.weight": np.zeros((2, 2))})


@pytest.mark.parametrize("bad", [3, [3], 2.5])
def test_patterns_that_are_not_strings_are_refused(bad):
    with pytest.raises(TypeError, match="L2: argument 'include' must be a name pattern"):
        L2(include=bad)


def test_schedule_config_errors_name_plugin_and_argument():
    with pytest.raises(ValueError, match=r"L2: argument 'l2': LinearWarmup: give exactly one of"):
        L2({"schedule": "linear_warmup", "value": 0.1})


def test_penalty_value_must_be_a_callable():
    with pytest.raises(TypeError, match=r"Penalty 'mine': 'value' must be a function of no arguments returning the term \(e.g. value=lambda: ...\), got float"):
        regplug.Penalty("mine", value=0.5)
    with pytest.raises(TypeError, match="Penalty 'mine': 'add_grad' must be None or a function"):
        regplug.Penalty("mine", value=lambda: 0.0, add_grad=1.0)


def test_a_single_plugin_instead_of_a_list_is_refused_with_a_hint():
    with pytest.raises(TypeError, match=r"plugins must be a list of plugin objects, e.g. \[L2\(l2=0.01\)\]; got one L2"):
        regplug.PluginManager(L2())

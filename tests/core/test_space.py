"""Search spaces: ranges checked when built, read back from configs, gridded; every built-in
plugin declares arguments it accepts, over ranges it builds at and its defaults lie in."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import tomllib
from hypothesis import given
from hypothesis import strategies as st

from regplug.configfile import ConfigError
from regplug.experiment.finetune import FINETUNE_STRATEGIES
from regplug.experiment.strategies import BUILTIN_STRATEGIES
from regplug.ranges import (
    Choice,
    FloatRange,
    IntRange,
    SpaceError,
    apply_value,
    describe_space,
    grid_values,
    parse_overrides,
    parse_range,
    tunable_arguments,
)
from regplug.registry import available_plugins, build_plugins

finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-300, max_value=1e300)


@st.composite
def float_ranges(draw: st.DrawFn) -> FloatRange:
    log = draw(st.booleans())
    low, high = sorted(draw(st.lists(positive if log else finite, min_size=2, max_size=2,
                                     unique=True)))
    return FloatRange(low, high, log=log)


@st.composite
def int_ranges(draw: st.DrawFn) -> IntRange:
    log = draw(st.booleans())
    values = st.integers(1, 10**12) if log else st.integers(-10**12, 10**12)
    low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
    return IntRange(low, high, log=log)


# -- ranges ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("build", "message"), [
    (lambda: FloatRange(1.0, 1.0), "FloatRange: 'low' must be < 'high', got low=1.0, high=1.0"),
    (lambda: FloatRange(2, 1), "FloatRange: 'low' must be < 'high', got low=2, high=1; for a "
                               "fixed value use Choice([value])"),
    (lambda: FloatRange(0.0, math.inf), "FloatRange: 'high' must be finite, got inf"),
    (lambda: FloatRange(math.nan, 1.0), "FloatRange: 'low' must be finite, got nan"),
    (lambda: FloatRange(True, 2.0), "FloatRange: 'low' must be a real number, got True"),
    (lambda: FloatRange("0", 1.0), "FloatRange: 'low' must be a real number, got the string"),
    (lambda: FloatRange(0.0, 1.0, log=True), "FloatRange: a log range needs 'low' > 0, got "
                                             "low=0.0; use log=False to include 0"),
    (lambda: FloatRange(-1.0, 1.0, log=True), "FloatRange: a log range needs 'low' > 0"),
    (lambda: FloatRange(0.1, 1.0, log=1), "FloatRange: 'log' must be True or False, got 1"),
    (lambda: IntRange(1, 2.5), "IntRange: 'high' must be an integer, got 2.5"),
    (lambda: IntRange(0, 10, log=True), "IntRange: a log range needs 'low' > 0, got low=0"),
    (lambda: IntRange(3, 3), "IntRange: 'low' must be < 'high', got low=3, high=3"),
    (lambda: Choice([]), "Choice: 'options' must hold at least one value"),
    (lambda: Choice("ab"), "Choice: 'options' must be a list of values, got the string 'ab'"),
    (lambda: Choice([1, 1.0]), "Choice: 'options' must not repeat a value, got 1.0 twice"),
    (lambda: Choice(["a", None]), "Choice: each option must be a string, an integer, a float "
                                  "or a bool, got None"),
    (lambda: Choice([math.inf]), "Choice: float options must be finite, got inf"),
])
def test_ranges_refuse_bad_bounds_naming_the_parameter(build, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        build()


def test_choice_tells_booleans_from_numbers():
    assert Choice([True, 1, "1"]).options == (True, 1, "1")
    assert not Choice([1, 2]).contains(True)
    assert Choice([1, 2]).contains(1.0)
    assert not Choice([True]).contains(1)


def test_describe_contains_and_to_config():
    r = FloatRange(1e-6, 0.1, log=True)
    assert r.describe() == "1e-06 .. 0.1, log"
    assert [r.contains(v) for v in (1e-6, 0.1, 0.05, 1e-7, 0.11, True, "0.05")] == [
        True, True, True, False, False, False, False]
    assert FloatRange(0, 1).describe() == "0.0 .. 1.0"
    assert FloatRange(0, 1).to_config() == {"low": 0.0, "high": 1.0}
    assert IntRange(1, 30, log=True).to_config() == {"low": 1, "high": 30, "log": True}
    assert [IntRange(1, 5).contains(v) for v in (1, 5, 3.0, 0, 6, True)] == [
        True, True, False, False, False, False]
    assert Choice(["gl", "pq"]).describe() == "one of 'gl', 'pq'"
    assert describe_space({"l2": r, "p": IntRange(1, 3)}) == "l2: 1e-06 .. 0.1, log; p: 1 .. 3"


@given(float_ranges())
def test_any_float_range_round_trips_through_its_config(r):
    assert parse_range(r.to_config(), where="x") == r
    text = f"r = {{low = {r.low!r}, high = {r.high!r}, log = {str(r.log).lower()}}}"
    assert parse_range(tomllib.loads(text)["r"], where="x") == r  # as TOML writes it


@given(int_ranges())
def test_any_int_range_round_trips_through_its_config(r):
    assert parse_range(r.to_config(), where="x") == r


@given(st.lists(st.one_of(st.text(max_size=5), st.integers(), finite, st.booleans()),
                min_size=1, max_size=6, unique_by=lambda v: (type(v) is bool, type(v) is str, v)))
def test_any_choice_round_trips_through_its_config(options):
    if len({(isinstance(o, bool), o) for o in options}) < len(options):
        return  # 1 and 1.0: one value, refused as a duplicate (tested above)
    c = Choice(options)
    assert parse_range(c.to_config(), where="x") == c
    assert all(c.contains(o) for o in options)


# -- grids ------------------------------------------------------------------------------------
@given(float_ranges(), st.integers(2, 12))
def test_float_grids_are_sorted_inside_the_range_with_both_ends(r, points):
    values = grid_values(r, points)
    assert values[0] == r.low and values[-1] == r.high
    assert values == sorted(set(values)) and len(values) <= points
    assert all(r.contains(v) for v in values)


@given(int_ranges(), st.integers(2, 12))
def test_int_grids_are_sorted_deduplicated_integers_with_both_ends(r, points):
    values = grid_values(r, points)
    assert values[0] == r.low and values[-1] == r.high
    assert values == sorted(set(values)) and len(values) <= points
    assert all(type(v) is int and r.contains(v) for v in values)


@pytest.mark.parametrize(("r", "points", "reference"), [
    (FloatRange(1e-6, 1e-1, log=True), 6, np.geomspace(1e-6, 1e-1, 6)),
    (FloatRange(0.1, 10.0, log=True), 5, np.geomspace(0.1, 10.0, 5)),
    (FloatRange(-1.0, 3.0), 9, np.linspace(-1.0, 3.0, 9)),
    (FloatRange(0.0, 0.8), 7, np.linspace(0.0, 0.8, 7)),
])
def test_float_grids_match_numpy_linspace_and_geomspace(r, points, reference):
    values = grid_values(r, points)
    assert len(values) == points
    np.testing.assert_allclose(values, reference, rtol=1e-11, atol=1e-15)


def test_int_grids_round_and_deduplicate():
    assert grid_values(IntRange(1, 30, log=True), 5) == [1, 2, 5, 13, 30]
    assert grid_values(IntRange(0, 10), 5) == [0, 3, 5, 8, 10]  # 2.5 and 7.5 round up
    assert grid_values(IntRange(0, 2), 9) == [0, 1, 2]
    assert grid_values(IntRange(1, 4, log=True), 20) == [1, 2, 3, 4]
    big = 10**30
    assert grid_values(IntRange(0, big), 3) == [0, big // 2, big]  # exact, no float rounding
    huge = 10**400  # beyond any float: the log grid still ends exactly at the top
    values = grid_values(IntRange(1, huge, log=True), 3)
    assert values[0] == 1 and values[-1] == huge and math.isclose(values[1], 1e200, rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"^FloatRange: bounds must be within ±1.79769e\+308"):
        FloatRange(0, huge)
    assert not FloatRange(0, 1).contains(huge)


def test_choice_grid_is_its_options_and_ranges_need_two_points():
    assert grid_values(Choice(["a", "b", "c"]), 2) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="'points' must be an integer >= 2 .* 0.0 .. 1.0"):
        grid_values(FloatRange(0, 1), 1)


# -- configs ---------------------------------------------------------------------------------
WHERE = "config 'tune.toml': tune.l2.l2"


@pytest.mark.parametrize(("value", "message"), [
    (1e-4, "expected a range table {low = ..., high = ...} or {choices = [...]}, got 0.0001; "
           "to fix the value write {choices = [0.0001]}"),
    ("gl", 'got the string \'gl\'; to fix the value write {choices = ["gl"]}'),
    ([1, 2], "got [1, 2]"),
    ({"low": 1e-6, "hi": 1e-2}, "unknown key(s) 'hi' in a range table; allowed: low, high, log"),
    ({"low": 1e-6}, "a range needs 'low' and 'high'; high missing"),
    ({"low": 1e-2, "high": 1e-6}, "'low' must be < 'high', got low = 0.01, high = 1e-06; to fix "
                                  "the value write {choices = [0.01]}"),
    ({"low": 3, "high": 3}, "'low' must be < 'high', got low = 3, high = 3; to fix the value "
                            "write {choices = [3]}"),
    ({"low": 0.0, "high": 1.0, "log": True}, "a log range needs 'low' > 0"),
    ({"low": 1, "high": 10, "log": "yes"}, "'log' must be True or False"),
    ({"choices": []}, "'choices' must hold at least one value, e.g. {choices = [0.1, 0.2]}"),
    ({"choices": "gl"}, "'choices' must be a list, got the string 'gl'"),
    ({"choices": [1], "low": 0}, "'choices' cannot be combined with 'low'"),
])
def test_parse_range_errors_name_the_key_path(value, message):
    with pytest.raises(SpaceError) as caught:
        parse_range(value, where=WHERE)
    assert str(caught.value).startswith(f"{WHERE}: ")
    assert message in str(caught.value)
    # a config's mistakes speak of its keys, never of the Python classes behind them
    assert not re.search(r"FloatRange|IntRange|Choice", str(caught.value))


def test_parse_range_kinds_follow_the_bounds():
    assert parse_range({"low": 1, "high": 10}, where="x") == IntRange(1, 10)
    assert parse_range({"low": 1, "high": 10.0}, where="x") == FloatRange(1.0, 10.0)
    assert isinstance(parse_range({"low": 0.5, "high": 2}, where="x"), FloatRange)
    assert parse_range({"choices": ["gl", "up"]}, where="x") == Choice(("gl", "up"))
    assert isinstance(SpaceError("x"), ConfigError) and isinstance(SpaceError("x"), ValueError)


def test_overrides_replace_and_add_ranges_in_quoted_or_nested_toml():
    from regplug.plugins import DropoutSchedule, ElasticNet
    table = tomllib.loads("""
        [tune.elastic_net]
        l1 = {low = 1e-5, high = 1e-3, log = true}
        [tune.dropout_schedule]
        "rate.start" = {low = 0.0, high = 0.2}
        rate.end = {choices = [0.3, 0.5]}
    """)["tune"]
    space = parse_overrides(ElasticNet, table["elastic_net"], where="tune.elastic_net")
    assert space == {"l1": FloatRange(1e-5, 1e-3, log=True), "l2": FloatRange(1e-6, 0.1, log=True)}
    space = parse_overrides(DropoutSchedule, table["dropout_schedule"], where="t.d")
    assert space == {"rate.end": Choice((0.3, 0.5)), "rate.start": FloatRange(0.0, 0.2)}


def test_override_errors_name_the_table_and_key():
    from regplug.plugins import EarlyStopping
    with pytest.raises(SpaceError, match=r"^t\.early_stopping\.patience: expected a range table"):
        parse_overrides(EarlyStopping, {"patience": 5}, where="t.early_stopping")
    with pytest.raises(SpaceError, match=r"^t\.e: tunable key 'patients' is not an argument .*"
                                         r"accepts monitor, min_delta, patience"):
        parse_overrides(EarlyStopping, {"patients": {"low": 1, "high": 5}}, where="t.e")
    with pytest.raises(SpaceError, match=r"^t\.e: expected a table of argument = range"):
        parse_overrides(EarlyStopping, [1], where="t.e")


# -- declarations ------------------------------------------------------------------------------
class Plain:
    """A third-party plugin that is no regplug.Plugin: only the attribute matters."""

    tunable: ClassVar[Mapping[str, object]] = {
        "strength": FloatRange(1e-4, 1.0, log=True), "rate.end": FloatRange(0.0, 0.5),
        "mode": Choice(["a", "b"])}

    def __init__(self, strength: float = 0.1, *, rate: object = 0.0, mode: str = "a") -> None:
        self.strength = strength


def make_plain(strength: float = 0.1) -> Plain:
    return Plain(strength)


make_plain.tunable = {"strength": IntRange(1, 3)}  # type: ignore[attr-defined]


def test_tunable_arguments_of_a_class_an_instance_and_a_factory_function():
    assert tunable_arguments(Plain) == Plain.tunable
    assert tunable_arguments(Plain()) == Plain.tunable
    assert tunable_arguments(make_plain) == {"strength": IntRange(1, 3)}
    assert tunable_arguments(functools.partial(Plain, mode="b")) == {}  # nothing declared
    assert tunable_arguments(object()) == {}


@pytest.mark.parametrize(("declared", "message"), [
    ({"strenght": FloatRange(0, 1)},
     "tunable key 'strenght' is not an argument of its constructor; it accepts strength, "
     "rate, mode"),
    ({"rates.end": FloatRange(0, 1)}, "tunable key 'rates' (the first part of 'rates.end')"),
    ({"rate.": FloatRange(0, 1)}, "tunable key 'rate.' must be an argument name, or a dotted"),
    ({3: FloatRange(0, 1)}, "tunable keys must be argument names (strings), got 3"),
    ({"strength": (0.0, 1.0)}, "tunable['strength'] must be a FloatRange, IntRange or Choice, "
                               "got (0.0, 1.0)"),
    ([("strength", FloatRange(0, 1))], "'tunable' must be a mapping from argument name"),
])
def test_bad_declarations_name_the_plugin_the_key_and_what_is_allowed(declared, message):
    bad = type("Bad", (Plain,), {"tunable": declared})
    with pytest.raises(SpaceError, match="^" + re.escape(
            f"plugin 'bad' ({__name__}.Bad): {message}")):
        tunable_arguments(bad, name="bad")


def test_a_constructor_taking_any_keyword_accepts_any_key():
    class Open:
        tunable: ClassVar[Mapping[str, object]] = {"anything.deep": FloatRange(0, 1)}

        def __init__(self, **kwargs: object) -> None: ...

    assert tunable_arguments(Open) == {"anything.deep": FloatRange(0, 1)}


def test_apply_value_sets_nested_tables_on_copies():
    base = {"name": "dropout_schedule",
            "rate": {"schedule": "linear", "start": 0.0, "end": 0.5, "span": 10}}
    changed = apply_value(base, "rate.end", 0.3)
    assert changed == {"name": "dropout_schedule",
                       "rate": {"schedule": "linear", "start": 0.0, "end": 0.3, "span": 10}}
    assert base["rate"]["end"] == 0.5 and changed["rate"] is not base["rate"]
    assert apply_value({"name": "x"}, "a.b.c", 1) == {"name": "x", "a": {"b": {"c": 1}}}
    assert apply_value({"name": "l2", "l2": 1e-3}, "l2", 1e-5) == {"name": "l2", "l2": 1e-5}
    with pytest.raises(SpaceError, match=r"^plugin config 'x': cannot set 'a\.b\.c': 'a\.b' is "
                                         r"the string 's', not a table"):
        apply_value({"name": "x", "a": {"b": "s"}}, "a.b.c", 1)
    with pytest.raises(SpaceError, match="key 'a..b' has an empty part"):
        apply_value({"name": "x"}, "a..b", 1)


# -- the built-in plugins ----------------------------------------------------------------------
BUILTIN = {name: info for name, info in available_plugins().items() if info.builtin}
DECLARING = {name: info.tunable() for name, info in BUILTIN.items() if info.tunable()}
#: The configs the built-in comparison runs, by plugin name.
STRATEGY_CONFIGS = {dict(p)["name"]: dict(p)
                    for s in (*BUILTIN_STRATEGIES.values(), *FINETUNE_STRATEGIES.values())
                    for p in s.plugins}


def test_the_regularizing_builtins_declare_what_to_tune():
    assert {name: sorted(space) for name, space in DECLARING.items()} == {
        "l1": ["l1"], "l2": ["l2"], "elastic_net": ["l1", "l2"],
        "decoupled_weight_decay": ["weight_decay"], "proximal_l1": ["l1"],
        "max_norm": ["max_value"], "early_stopping": ["patience"],
        "dropout_schedule": ["rate.end"], "l2sp": ["alpha"], "layerwise_lr": ["decay"],
        "ema": ["decay"]}
    strengths = [r for name, space in DECLARING.items() for key, r in space.items()
                 if name not in ("dropout_schedule", "early_stopping", "layerwise_lr", "ema")]
    assert all(isinstance(r, FloatRange) and r.log for r in strengths)
    assert isinstance(DECLARING["early_stopping"]["patience"], IntRange)
    # a multiplicative decay per layer lives in (0, 1]; an average's decay near 1 is a choice
    assert isinstance(DECLARING["layerwise_lr"]["decay"], FloatRange)
    assert 0 < DECLARING["layerwise_lr"]["decay"].low < DECLARING["layerwise_lr"]["decay"].high <= 1
    assert isinstance(DECLARING["ema"]["decay"], Choice)
    assert all(0 < v < 1 for v in DECLARING["ema"]["decay"].options)


@pytest.mark.parametrize("name", sorted(DECLARING))
def test_builtin_strategy_defaults_lie_inside_the_declared_ranges(name):
    config = STRATEGY_CONFIGS[name]
    for key, r in DECLARING[name].items():
        value = config
        for part in key.split("."):
            value = value[part]
        assert r.contains(value), f"{name}: {key}={value!r} outside {r.describe()}"


@pytest.mark.parametrize("name", sorted(DECLARING))
def test_builtins_build_at_the_low_middle_and_high_values(name):
    for key, r in DECLARING[name].items():
        for value in grid_values(r, 3):
            config = apply_value(STRATEGY_CONFIGS[name], key, value)
            (plugin,) = build_plugins([config], where=f"{name} {key}={value!r}")
            assert _built_value(plugin, key) == value


def _built_value(plugin: object, key: str) -> object:
    """The value of ``key`` the plugin was built with, read back from the plugin."""
    if hasattr(plugin, "config"):
        value = plugin.config()
        parts = key.split(".")
        value = value[parts[0]]
        if len(parts) == 1 and isinstance(value, dict) and value.get("schedule") == "constant":
            return value["value"]
        for part in parts[1:]:
            value = value[part]
        return value
    return getattr(plugin, key)


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugin-guide.md"


def test_the_guides_tune_overrides_read_as_the_ranges_they_show():
    (block,) = re.findall(r"```toml tune\n(.*?)```", GUIDE.read_text(), re.S)
    tables = tomllib.loads(block)["tune"]
    plugins = available_plugins()
    spaces = {name: parse_overrides(plugins[name].load(), table, where=f"tune.{name}")
              for name, table in tables.items()}
    assert spaces == {
        "l2": {"l2": FloatRange(1e-5, 1e-2, log=True)},
        "early_stopping": {"patience": IntRange(2, 10)},
        "dropout_schedule": {"rate.end": FloatRange(0.1, 0.6)},
    }

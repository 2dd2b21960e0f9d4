"""What ``regplug tune`` searches per strategy: the plugins' declared ranges, a config's
``[tune.<plugin>]`` / ``[tune.model]`` overrides, and every mistake named before training."""

from __future__ import annotations

import textwrap

import pytest

from regplug.configfile import ConfigError
from regplug.experiment.strategies import BUILTIN_STRATEGIES, Strategy
from regplug.plugins import L2, EarlyStopping
from regplug.ranges import FloatRange, IntRange, SpaceError, grid_values
from regplug.tune.strategy_space import (
    DEFAULT_DROPOUT_RANGE,
    load_tune_config,
    strategy_space,
)


def write(tmp_path, text: str):
    path = tmp_path / "tune.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_builtin_strategy_searches_what_its_plugins_declare():
    space = strategy_space(BUILTIN_STRATEGIES["l2"])
    assert [(p.name, p.plugin, p.key, p.space) for p in space.parameters] == [
        ("l2.l2", 0, "l2", L2.tunable["l2"])]
    space = strategy_space(BUILTIN_STRATEGIES["early_stopping"])
    assert [(p.name, p.space) for p in space.parameters] == [
        ("early_stopping.patience", EarlyStopping.tunable["patience"])]


def test_a_strategy_with_a_dropout_layer_searches_its_rate_too():
    space = strategy_space(BUILTIN_STRATEGIES["batch_norm_dropout"])
    assert [(p.name, p.plugin, p.space) for p in space.parameters] == [
        ("model.dropout", None, DEFAULT_DROPOUT_RANGE)]
    assert FloatRange(0.0, 0.7) == DEFAULT_DROPOUT_RANGE
    tuned = space.apply({"model.dropout": 0.55})
    assert (tuned.dropout, tuned.batch_norm, tuned.name) == (0.55, True, "batch_norm_dropout")


@pytest.mark.parametrize("name", ["none", "batch_norm"])
def test_strategies_without_plugins_or_dropout_have_nothing_to_search(name):
    assert strategy_space(BUILTIN_STRATEGIES[name]).parameters == ()


def test_apply_sets_each_value_in_a_copy_and_leaves_the_strategy_alone():
    strategy = Strategy("two", plugins=({"name": "l2", "l2": 1e-4}, {"name": "l2", "l2": 2e-4},
                                        {"name": "max_norm", "max_value": 3.0}), dropout=0.1)
    space = strategy_space(strategy)
    assert space.names[:2] == ["l2[0].l2", "l2[1].l2"]  # the same plugin twice: indexed
    tuned = space.apply({"l2[1].l2": 0.05, "model.dropout": 0.4})
    assert [dict(p) for p in tuned.plugins][:2] == [{"name": "l2", "l2": 1e-4},
                                                    {"name": "l2", "l2": 0.05}]
    assert tuned.dropout == 0.4
    assert strategy.plugins[1] == {"name": "l2", "l2": 2e-4} and strategy.dropout == 0.1
    assert repr(tuned.build_plugins()[1]) == "L2(l2=0.05)"


def test_a_dotted_key_reaches_into_a_schedule_table():
    space = strategy_space(BUILTIN_STRATEGIES["dropout_schedule"])
    assert space.names == ["dropout_schedule.rate.end"]
    tuned = space.apply({"dropout_schedule.rate.end": 0.25})
    assert tuned.plugins[0]["rate"]["end"] == 0.25
    assert tuned.plugins[0]["rate"]["schedule"] == "linear"
    assert BUILTIN_STRATEGIES["dropout_schedule"].plugins[0]["rate"]["end"] == 0.5


def test_the_grid_is_the_product_of_each_parameters_values():
    strategy = Strategy("x", plugins=({"name": "l2", "l2": 1e-4},), dropout=0.1)
    space = strategy_space(strategy)
    grid = space.grid(4)
    assert grid == {"l2.l2": grid_values(L2.tunable["l2"], 4),
                    "model.dropout": grid_values(DEFAULT_DROPOUT_RANGE, 4)}
    assert space.grid_size(4) == 16
    assert grid["model.dropout"] == pytest.approx([0.0, 0.7 / 3, 1.4 / 3, 0.7])


# -- a config's ranges ----------------------------------------------------------------------

def test_config_ranges_replace_the_declared_ones_for_every_strategy_using_the_plugin(tmp_path):
    config = load_tune_config(write(tmp_path, """
        [[strategies]]
        name = "l2_bn"
        batch_norm = true
        dropout = 0.2
        plugins = [{name = "l2", l2 = 1e-4}]

        [tune.l2]
        l2 = {low = 1e-5, high = 1e-2, log = true}

        [tune.early_stopping]
        patience = {low = 2, high = 8}

        [tune.model]
        dropout = {low = 0.0, high = 0.6}
    """))
    assert list(config.strategies) == ["l2_bn"]
    assert config.ranges == {"l2": {"l2": FloatRange(1e-5, 1e-2, log=True)},
                             "early_stopping": {"patience": IntRange(2, 8)}}
    space = strategy_space(config.strategies["l2_bn"], config.ranges, config.model)
    assert [(p.name, p.space) for p in space.parameters] == [
        ("l2.l2", FloatRange(1e-5, 1e-2, log=True)),
        ("model.dropout", FloatRange(0.0, 0.6))]
    builtin = strategy_space(BUILTIN_STRATEGIES["l2"], config.ranges, config.model)
    assert builtin.parameters[0].space == FloatRange(1e-5, 1e-2, log=True)


def test_a_config_of_ranges_only_has_no_strategies_and_an_empty_list_is_allowed(tmp_path):
    for text in ("[tune.l2]\nl2 = {low = 1e-5, high = 1e-2}\n",
                 "strategies = []\n[tune.l2]\nl2 = {low = 1e-5, high = 1e-2}\n"):
        config = load_tune_config(write(tmp_path, text))
        assert config.strategies == {}
        assert config.ranges == {"l2": {"l2": FloatRange(1e-5, 1e-2)}}


def test_a_config_may_give_a_plugin_without_declared_ranges_one(tmp_path):
    config = load_tune_config(write(tmp_path, """
        [tune.max_norm]
        max_value = {low = 1.0, high = 5.0}
    """))
    space = strategy_space(BUILTIN_STRATEGIES["max_norm"], config.ranges)
    assert [(p.name, p.space) for p in space.parameters][-1] == (
        "max_norm.max_value", FloatRange(1.0, 5.0))


@pytest.mark.parametrize("text, fragments", [
    ("[tune.l3]\nl2 = {low = 1e-5, high = 1e-2}\n", ["tune.l3", "no plugin is called 'l3'",
                                                    "did you mean 'l2'"]),
    ("[tune.l2]\nstrength = {low = 1e-5, high = 1e-2}\n", ["tune.l2", "'strength'",
                                                          "it accepts l2"]),
    ("[tune.l2]\nl2 = 1e-4\n", ["tune.l2.l2", "expected a range table"]),
    ("[tune.l2]\nl2 = {low = 1e-2, high = 1e-5}\n", ["tune.l2.l2", "'low' must be < 'high'"]),
    ("[tune.model]\ndropout = {low = 0.0, high = 1.0}\n", ["tune.model.dropout", "[0, 1)"]),
    ("[tune.model]\nrate = {low = 0.0, high = 0.5}\n", ["tune.model", "'rate'", "'dropout'"]),
    ("[tune]\nl2 = 3\n", ["tune.l2", "expected a table"]),
    ("[other]\nx = 1\n", ["'other'", "[[strategies]]", "[tune.<plugin>]"]),
    # [[strategies]] read as regplug compare reads them, with the same messages
    ('[strategies]\nname = "x"\n', ["write each strategy as a [[strategies]] block"]),
    ('strategies = "l2"\n', ["strategies: expected a list of strategy tables"]),
    ('[[strategies]]\nname = "x"\n[[strategies]]\nname = "x"\n',
     ["strategy 'x' is defined twice"]),
    ('[[strategies]]\nname = "x"\ndropout = 1.5\n',
     ["strategies[0]", "'dropout' must be a rate in [0, 1)"]),
])
def test_config_mistakes_name_the_file_the_key_and_what_is_allowed(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_tune_config(path)
    message = str(err.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_range_the_plugin_refuses_at_one_end_is_an_error_before_training(tmp_path):
    config = load_tune_config(write(tmp_path, """
        [tune.l2]
        l2 = {low = -0.1, high = 0.1}
    """))
    with pytest.raises(SpaceError) as err:
        strategy_space(BUILTIN_STRATEGIES["l2"], config.ranges)
    message = str(err.value)
    assert "strategy 'l2': l2.l2 = -0.1" in message and "is refused" in message
    assert "-0.1 .. 0.1" in message

"""Mistakes an experiment's inputs can hold, refused before any training (issue 18, "mistakes
caught before training"): a monitored key no log will hold, a misspelt --data name, a plugin
of one's own named module:Class, a Keras backend that is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from regplug.experiment.datasets import check_data_name, resolve_data
from regplug.experiment.frameworks import RUNNER_LOG_KEYS, runner_log_keys
from regplug.experiment.strategies import (
    Strategy,
    StrategyError,
    check_monitors,
    strategy_from_table,
)


def strategy(*plugins: dict) -> Strategy:
    return Strategy("s", tuple(plugins))


# -- monitors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("plugins, fragments", [
    ([{"name": "early_stopping", "monitor": "val_acc"}],
     ["strategy 's': plugin 'early_stopping' monitors 'val_acc'", "in torch",
      "(did you mean 'val_accuracy'?)", "they hold accuracy, cross_entropy, loss"]),
    ([{"name": "early_stopping", "monitor": "Val_Loss", "mode": "min"}],
     ["monitors 'Val_Loss'", "(did you mean 'val_loss'?)"]),
    ([{"name": "generalization_gap", "val_loss": "validation_loss"}],
     ["plugin 'generalization_gap' monitors 'validation_loss'"]),
    ([{"name": "non_finite_guard", "monitors": ["loss", "val_los"]}],
     ["monitors 'val_los'", "(did you mean 'val_loss'?)"]),
    ([{"name": "early_stopping", "monitor": "gap", "mode": "min"}],
     ["monitors 'gap', which no epoch's logs hold"]),
])
def test_a_monitor_no_log_holds_is_refused_with_the_closest_key(plugins, fragments):
    with pytest.raises(StrategyError) as err:
        check_monitors(strategy(*plugins), RUNNER_LOG_KEYS, framework="torch")
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("plugins", [
    [{"name": "early_stopping", "monitor": "val_accuracy"}],
    [{"name": "generalization_gap"}, {"name": "early_stopping", "monitor": "gap"}],
    [{"name": "generalization_gap"}, {"name": "early_stopping", "monitor": "pct_diff",
                                      "mode": "min"}],
    [{"name": "l2", "l2": 1e-3}, {"name": "non_finite_guard", "monitors": ["l2_penalty"]}],
    [{"name": "non_finite_guard", "monitors": "all"}],
    [{"name": "l2", "l2": 1e-3}],
])
def test_keys_the_runner_the_penalties_and_earlier_plugins_log_are_accepted(plugins):
    check_monitors(strategy(*plugins), RUNNER_LOG_KEYS, framework="torch")


def test_a_key_a_later_plugin_adds_is_refused_saying_to_list_that_plugin_first():
    later = strategy({"name": "early_stopping", "monitor": "gap", "mode": "min"},
                     {"name": "generalization_gap"})
    with pytest.raises(StrategyError, match="'generalization_gap' adds to the logs, but "
                       "'generalization_gap' is listed after it.*list 'generalization_gap' "
                       "first"):
        check_monitors(later, RUNNER_LOG_KEYS, framework="keras")


def test_a_runner_declares_its_own_log_keys():
    class Runner:
        log_keys = ("loss", "val_f1")

    keys = runner_log_keys(Runner())
    check_monitors(strategy({"name": "early_stopping", "monitor": "val_f1", "mode": "max"}),
                   keys, framework="mine")
    with pytest.raises(StrategyError, match="did you mean 'val_f1'"):
        check_monitors(strategy({"name": "early_stopping", "monitor": "val_f2", "mode": "max"}),
                       keys, framework="mine")
    Runner.log_keys = "loss"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="'log_keys' must be a tuple of log keys"):
        runner_log_keys(Runner())


# -- --data names -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, suggestion", [
    ("MNIST", "'mnist'"), ("Mnist", "'mnist'"), ("mnsit", "'mnist'"), ("DIGITS", "'digits'"),
    ("digts", "'digits'"),
])
def test_a_misspelt_data_name_is_refused_with_the_bundled_name(text, suggestion):
    for check in (check_data_name, resolve_data):
        with pytest.raises(ValueError) as err:
            check(text)
        assert f"--data {text!r}: no data set is called that (did you mean {suggestion}?)" \
            in str(err.value)


def test_a_file_named_like_a_data_set_is_still_read_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MNIST").write_text("x")
    check_data_name("MNIST")  # a file: load_npz will say what is wrong with it
    check_data_name(None)
    check_data_name("absent.npz")
    check_data_name("pkg.mod:load")


# -- plugins named module:Class -------------------------------------------------------------------

PLUGIN_MODULE = """
from regplug import Penalty, Plugin
from regplug.ranges import FloatRange

class Shrink(Plugin):
    tunable = {"strength": FloatRange(1e-4, 1e-1, log=True)}

    def __init__(self, strength=1e-3):
        self.strength = strength

    def on_loss(self, run):
        params, s = run.parameters(), self.strength
        return Penalty("shrink_penalty", lambda: s * run.ops.sum_squares(params))

    def __repr__(self):
        return f"Shrink(strength={self.strength})"

class Misspelt(Plugin):
    def on_epoch_ned(self, run, epoch, logs):
        pass

VALUE = 3
"""


@pytest.fixture
def my_plugins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_plugins_18.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (tmp_path / "broken_plugins_18.py").write_text("import not_installed_pkg_18\n")
    yield "my_plugins_18"
    for name in ("my_plugins_18", "broken_plugins_18"):
        sys.modules.pop(name, None)


def test_a_plugin_named_module_colon_class_is_built_with_its_arguments(my_plugins, tmp_path):
    built = strategy_from_table({"name": "mine", "plugins": [
        {"name": f"{my_plugins}:Shrink", "strength": 0.01}, {"name": "l2", "l2": 1e-3}]},
        where="config")
    plugins = built.build_plugins()
    assert repr(plugins) == "[Shrink(strength=0.01), L2(l2=0.001)]"
    assert built.describe() == "Shrink(strength=0.01) + L2(l2=0.001)"
    assert built.build_plugins()[0] is not plugins[0]  # fresh objects for every run
    by_file = strategy_from_table(
        {"name": "f", "plugins": [{"name": str(tmp_path / f"{my_plugins}.py") + ":Shrink"}]},
        where="config")
    assert repr(by_file.build_plugins()) == "[Shrink(strength=0.001)]"
    # its penalty is a key the monitors may watch
    check_monitors(strategy({"name": f"{my_plugins}:Shrink"},
                            {"name": "early_stopping", "monitor": "shrink_penalty",
                             "mode": "min"}), RUNNER_LOG_KEYS, framework="torch")


@pytest.mark.parametrize("name, arguments, fragments", [
    ("{m}:Shrink", {"strenght": 1}, ["strategy 'mine': plugin '{m}:Shrink': got an unexpected "
                                     "keyword argument 'strenght'; it accepts strength"]),
    ("{m}:Shrnk", {}, ["strategy 'mine': plugin '{m}:Shrnk': module '{m}' has no 'Shrnk'",
                       "Shrink"]),
    ("{m}:VALUE", {}, ["'VALUE' is a int, not a function"]),
    ("no_such_module_18:Shrink", {}, ["no module named 'no_such_module_18'"]),
    ("broken_plugins_18:Thing", {}, ["importing 'broken_plugins_18' failed",
                                     "'not_installed_pkg_18', which is not installed"]),
    ("{m}:Misspelt", {}, ["plugin '{m}:Misspelt'", "on_epoch_ned"]),
    ("shrink", {}, ["unknown plugin 'shrink'",
                    "or name a plugin class of yours as module:Class"]),
])
def test_a_plugin_reference_s_mistakes_are_one_line(my_plugins, name, arguments, fragments):
    table = {"name": "mine", "plugins": [{"name": name.format(m=my_plugins), **arguments}]}
    with pytest.raises(StrategyError) as err:
        strategy_from_table(table, where="config 'x.toml': strategies[0]")
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment.format(m=my_plugins) in message, (fragment, message)


def test_a_plugin_reference_after_a_registry_plugin_keeps_its_index_in_messages(my_plugins):
    table = {"name": "mine", "plugins": [{"name": f"{my_plugins}:Shrink"},
                                         {"name": "l2", "l2": -1.0}]}
    with pytest.raises(StrategyError, match="strategy 'mine'.*L2: argument 'l2' must be"):
        strategy_from_table(table, where="config")


def test_tune_searches_a_plugin_reference_s_declared_ranges(my_plugins):
    pytest.importorskip("optuna")
    from regplug.tune.strategy_space import strategy_space

    space = strategy_space(strategy_from_table(
        {"name": "mine", "plugins": [{"name": f"{my_plugins}:Shrink"}]}, where="config"))
    assert space.names == [f"{my_plugins}:Shrink.strength"]


# -- a Keras backend that is not installed --------------------------------------------------------

BACKEND_SCRIPT = """
import json, sys
sys.modules[sys.argv[1]] = None  # as if not installed
from regplug.experiment.frameworks import FrameworkUnavailable, get_runner
try:
    get_runner("keras")
except FrameworkUnavailable as err:
    print(json.dumps(str(err)))
"""


@pytest.mark.parametrize("backend, install", [("jax", "pip install jax"),
                                              ("torch", "pip install 'regplug[torch]'")])
def test_a_keras_backend_that_is_not_installed_names_its_own_install(tmp_path, backend,
                                                                     install):
    pytest.importorskip("keras")
    script = tmp_path / "backend.py"
    script.write_text(BACKEND_SCRIPT)
    env = {k: v for k, v in __import__("os").environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, str(script), backend], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path,
                          env={**env, "KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout.strip().splitlines()[-1])
    assert message == (f"--framework keras: KERAS_BACKEND={backend} but {backend} is not "
                       f"installed: {install} (or unset KERAS_BACKEND for TensorFlow, which "
                       "'regplug[keras]' installs)")

"""`regplug compare`: strategies, config, data and model choices, table and files, bad input.

The framework-free parts run everywhere; the training runs use PyTorch with a few epochs.
Keras' side is in compare/test_keras_compare.py.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _compare_cli import TABLE_COLUMNS, assert_one_line_error, run_cli, table_rows

from regplug.compare.results import (
    StrategyResult,
    final_penalty,
    format_table,
    zero_fraction,
)
from regplug.experiment import (
    BUILTIN_STRATEGIES,
    DEFAULT_STRATEGIES,
    load_strategies,
    select_strategies,
)
from regplug.experiment.strategies import StrategyError
from regplug.experiment.training import WeightArray

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# -- strategies and configs (no framework) --------------------------------------------------

def test_default_run_is_the_notebook_strategies_plus_ours_in_order():
    assert [s.name for s in select_strategies(None)] == list(DEFAULT_STRATEGIES) == [
        "none", "l2", "l1", "dropout", "batch_norm", "batch_norm_dropout", "early_stopping",
        "decoupled_weight_decay", "proximal_l1", "dropout_schedule"]
    assert BUILTIN_STRATEGIES["dropout"].model_options() == (0.2, False)
    assert BUILTIN_STRATEGIES["batch_norm_dropout"].model_options() == (0.2, True)


def test_subset_keeps_the_given_order_and_drops_repeats():
    chosen = select_strategies("proximal_l1, none,proximal_l1,max_norm")
    assert [s.name for s in chosen] == ["proximal_l1", "none", "max_norm"]


def test_unknown_strategy_names_the_valid_ones():
    with pytest.raises(StrategyError) as err:
        select_strategies("none,l3")
    message = str(err.value)
    assert "unknown strategy 'l3'" in message and "did you mean 'l2'" in message
    for name in BUILTIN_STRATEGIES:
        assert name in message


def test_a_dropout_schedule_gets_a_dropout_layer_at_rate_zero():
    assert BUILTIN_STRATEGIES["dropout_schedule"].model_options() == (0.0, False)
    assert BUILTIN_STRATEGIES["l2"].model_options() == (None, False)


def test_config_defines_strategies_by_plugin_name_and_arguments(tmp_path):
    path = write_config(tmp_path / "s.toml", """
        [[strategies]]
        name = "strong_l2"
        plugins = [{name = "l2", l2 = 0.01}]

        [[strategies]]
        name = "bn_maxnorm"
        batch_norm = true
        dropout = 0.1
        [[strategies.plugins]]
        name = "max_norm"
        max_value = 3.0
        """)
    custom = load_strategies(path)
    assert list(custom) == ["strong_l2", "bn_maxnorm"]
    assert custom["bn_maxnorm"].model_options() == (0.1, True)
    assert custom["bn_maxnorm"].describe() == "BatchNorm + Dropout(0.1) + MaxNorm(max_value=3.0)"
    assert repr(custom["strong_l2"].build_plugins()) == "[L2(l2=0.01)]"
    # a config's strategies are the run; built-ins can be added by name
    assert [s.name for s in select_strategies(None, custom)] == ["strong_l2", "bn_maxnorm"]
    assert [s.name for s in select_strategies("none,strong_l2", custom)] == ["none", "strong_l2"]


@pytest.mark.parametrize("body, fragment", [
    ('[[strategies]]\nname = "x"\nplugins = [{name = "l3"}]\n', "unknown plugin 'l3'"),
    ('[[strategies]]\nname = "x"\nplugins = [{name = "l2", l2 = -1}]\n',
     "strategy 'x': L2: argument 'l2' must be a finite number >= 0, got -1"),
    ('[[strategies]]\nname = "x"\nplugins = [{name = "l2", strength = 1}]\n',
     "strategy 'x': plugin 'l2': got an unexpected keyword argument 'strength'"),
    ('[[strategies]]\nname = "x"\ndropout = 1.5\n', "'dropout' must be a rate in [0, 1)"),
    ('[[strategies]]\nname = "x"\nbatchnorm = true\n', "unknown key(s) 'batchnorm'"),
    ('[[strategies]]\nname = "a,b"\n', "'name' must be a word"),
    ('[[strategies]]\nname = "all"\n', "'all' names a group of strategies"),
    ('[strategies]\nname = "x"\n', "[[strategies]] block"),
    ('[[plugins]]\nname = "l2"\n', "expected [[strategies]] tables"),
    ('[[strategies]]\nname = "x"\n[tune.l2]\nl2 = {low = 1e-5, high = 1e-2}\n',
     "found 'strategies', 'tune'"),  # regplug tune's ranges: not a compare config
    ("strategies = []\n", "strategies: expected a list of strategy tables ([[strategies]] "
                           "blocks), got"),
    ('strategies = "l2"\n', "strategies: expected a list of strategy tables"),
    ('[[strategies]]\nname = "x"\n[[strategies]]\nname = "x"\n',
     "strategy 'x' is defined twice"),
    ('[[strategies]\n', "is not valid TOML"),
])
def test_config_mistakes_are_named(tmp_path, body, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(StrategyError) as err:
        load_strategies(path)
    assert fragment in str(err.value)


def test_unknown_plugin_in_config_is_a_one_line_error_listing_the_plugins(tmp_path, capsys):
    path = write_config(tmp_path / "s.toml", """
        [[strategies]]
        name = "mine"
        plugins = [{name = "group_lass", strength = 1e-3}]
        """)
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--config", str(path), "--framework", "torch")
    assert_one_line_error(code, err, "unknown plugin 'group_lass'", "available:", "l2",
                          "proximal_l1", "early_stopping", "dropout_schedule")


def test_unknown_strategy_on_the_command_line_exits_2_with_one_line(tmp_path):
    # Through the installed entry point, as a user runs it: no traceback anywhere.
    result = subprocess.run([sys.executable, "-m", "regplug", "compare", "--preset", "notebook",
                             "--strategies",
                             "none,dropuot"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result.returncode, result.stderr, "unknown strategy 'dropuot'",
                          "did you mean 'dropout'", "valid: none, l2, l1")


def test_list_shows_every_strategy_and_model_by_name(tmp_path, capsys):
    path = write_config(tmp_path / "s.toml", """
        [[strategies]]
        name = "strong_l2"
        plugins = [{name = "l2", l2 = 0.01}]
        """)
    code, out, _ = run_cli(capsys, "--preset", "notebook", "--list", "--config", str(path))
    assert code == 0
    lines = out.splitlines()
    for name in BUILTIN_STRATEGIES:
        marked = name in DEFAULT_STRATEGIES
        first = ["*", name] if marked else [name]
        assert any(l.split()[:len(first)] == first for l in lines), name
    assert any(l.split() == ["strong_l2", "L2(l2=0.01)", "[config]"] for l in lines)
    assert "    mlp                     Dense 50 → 250 → classes, ReLU" in lines


# -- metrics, table, progress (no framework) ------------------------------------------------

def _weights():
    return [WeightArray("0.weight", "weight", "Linear", 0, np.array([[1.0, -2.0], [0.0, 0.0]])),
            WeightArray("0.bias", "bias", "Linear", None, np.array([3.0, 0.0])),
            WeightArray("1.weight", "normalization", "BatchNorm1d", None, np.array([5.0]))]


def test_zero_fraction_counts_exact_zeros_of_weight_matrices_only():
    assert zero_fraction(_weights()) == 0.5  # the bias's zero and the norm scale do not count


def test_final_penalty_is_the_plugins_terms_at_the_final_weights():
    plugins = select_strategies("elastic_net")[0].build_plugins()  # L1 1e-4 + L2 1e-3
    value = final_penalty(plugins, _weights(), steps=10, epochs=2)
    assert value == pytest.approx(1e-4 * 3.0 + 1e-3 * 5.0)  # |1|+|-2|, 1²+(-2)²: weights only
    no_penalty = select_strategies("proximal_l1")[0].build_plugins()
    assert final_penalty(no_penalty, _weights(), steps=10, epochs=2) == 0.0


def test_final_penalty_takes_a_scheduled_strength_at_the_last_step():
    from regplug.plugins import L2

    warm = L2({"schedule": "linear", "start": 0.0, "end": 1.0, "span": 4, "per": "epoch"})
    # the last epoch run is epoch 1 (of 2): strength 0.25
    assert final_penalty([warm], _weights(), steps=10, epochs=2) == pytest.approx(0.25 * 5.0)


def test_table_has_one_row_per_run_with_nan_for_an_undefined_gap():
    rows = [StrategyResult("torch", "none", "", 1.0, 0.9, 0.1, 3, 0.0, 0.0, 1.0),
            StrategyResult("keras", "l2", "", 0.0, 0.0, math.nan, 3, 0.25, 0.5, 1.0)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == TABLE_COLUMNS
    assert lines[1].split() == ["torch", "none", "1.0000", "0.9000", "0.1000", "3", "0.0%",
                                "0.0000"]
    assert lines[2].split()[4] == "nan" and lines[2].split()[6] == "25.0%"


# -- bad input on the command line ----------------------------------------------------------

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_data_file_with_a_missing_key_is_a_one_line_error(tmp_path, capsys):
    path = _npz(tmp_path / "bad.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4),
                x_test=np.zeros((2, 3)))
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--data", str(path), "--framework", "torch")
    assert_one_line_error(code, err, "lacks ['y_test']")


def test_data_file_with_mismatched_shapes_is_a_one_line_error(tmp_path, capsys):
    rows = _npz(tmp_path / "rows.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(3),
                x_test=np.zeros((2, 3)), y_test=np.zeros(2))
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--data", str(rows), "--framework", "torch")
    assert_one_line_error(code, err, "x_train has 4 rows but y_train has 3")
    feats = _npz(tmp_path / "feats.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4),
                 x_test=np.zeros((2, 5)), y_test=np.zeros(2))
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--data", str(feats), "--framework", "torch")
    assert_one_line_error(code, err, "train rows have 3 features, test rows 5")
    missing = tmp_path / "nowhere.npz"
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--data", str(missing), "--framework", "torch")
    assert_one_line_error(code, err, "does not exist")


@pytest.mark.parametrize("option, value, fragment", [
    ("--data", "no_such_module_xyz:load", "no module named 'no_such_module_xyz'"),
    ("--model", "no_such_module_xyz:factory", "no module named 'no_such_module_xyz'"),
    ("--model", "cnn", "unknown model 'cnn'; built-in models: mlp, wide_mlp, linear"),
    ("--data", "json:nothing_here", "module 'json' has no 'nothing_here'"),
])
def test_bad_data_or_model_references_are_one_line_errors(capsys, option, value, fragment):
    code, _, err = run_cli(capsys, "--preset", "notebook", option, value, "--framework", "torch")
    assert_one_line_error(code, err, fragment)


def test_unwritable_out_fails_before_training_and_leaves_nothing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--out", str(blocker / "results"), "--framework", "torch",
                             "--strategies", "none")
    assert_one_line_error(code, err, "cannot write there")
    assert "framework strategy" not in out  # nothing was trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--out", str(blocker), "--framework", "torch")
    assert_one_line_error(code, err, "exists and is not a directory")


def test_out_holding_other_files_is_refused_not_mixed_with(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--out", str(tmp_path), "--framework", "torch")
    assert_one_line_error(code, err, "holds other files")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# -- training runs (torch) --------------------------------------------------------------------

torch_needed = pytest.mark.usefixtures("_torch_and_digits")


@pytest.fixture
def _torch_and_digits():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@torch_needed
def test_torch_run_writes_table_csv_json_figures_and_report_that_agree(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "results"
    code, out, err = run_cli(capsys, "--preset", "notebook", "--framework", "torch", "--strategies",
                             "none,l2,l1,proximal_l1", "--epochs", "2", "--out", str(out_dir))
    assert code == 0, err
    rows = table_rows(out)
    assert [r[:2] for r in rows] == [["torch", s] for s in ("none", "l2", "l1", "proximal_l1")]

    records = read_csv(out_dir / "results.csv")
    payload = json.loads((out_dir / "results.json").read_text())
    assert payload["format"] == "regplug-compare/1"
    assert payload["table"] in out
    for row, record, result in zip(rows, records, payload["results"]):
        assert row[1] == record["strategy"] == result["strategy"]
        for column, index, fmt in (("acc_train", 2, ".4f"), ("acc_test", 3, ".4f"),
                                   ("pct_diff", 4, ".4f"), ("penalty", 7, ".4f")):
            assert format(float(record[column]), fmt) == row[index] == format(result[column], fmt)
        assert int(record["epochs"]) == int(row[5]) == result["epochs"] == 2
        assert format(float(record["zero_fraction"]), ".1%") == row[6]
        assert result["pct_diff"] == pytest.approx(1 - result["acc_test"] / result["acc_train"])
        assert len(result["history"]["val_cross_entropy"]) == 2
    by_name = {r["strategy"]: r for r in payload["results"]}
    assert by_name["none"]["penalty"] == 0 and by_name["l2"]["penalty"] > 0
    assert by_name["proximal_l1"]["zero_fraction"] > 0 == by_name["none"]["zero_fraction"]
    assert payload["settings"]["train_epochs"] == 2 and payload["settings"]["train_seed"] == 0

    figures = ["pct_diff.png", "loss_curves_torch.png", "accuracy_curves_torch.png",
               "weight_histograms.png", "uncertainty_mc_dropout.png"]
    assert payload["figures"] == figures
    import matplotlib.image

    for name in figures:
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        height, width, _ = matplotlib.image.imread(out_dir / name).shape
        assert height > 200 and width > 400
    report = (out_dir / "report.html").read_text()
    for name in figures:
        assert f"src='{name}'" in report
    for row in rows:
        assert f"<td>{row[1]}</td>" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no staging left over


@torch_needed
def test_same_seed_gives_the_same_results_and_another_seed_does_not(tmp_path, capsys):
    def run(seed: str) -> list[list[str]]:
        code, out, err = run_cli(capsys, "--preset", "notebook",
                                 "--framework", "torch", "--strategies",
                                 "l2,dropout,proximal_l1", "--epochs", "2", "--seed", seed)
        assert code == 0, err
        return table_rows(out)

    first, second, other = run("7"), run("7"), run("8")
    assert first == second
    assert first != other


@torch_needed
def test_rerun_into_the_same_out_replaces_the_earlier_result(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "run"
    for strategies in ("none", "l2"):
        code, _, err = run_cli(capsys, "--preset", "notebook",
                               "--framework", "torch", "--strategies", strategies,
                               "--epochs", "1", "--out", str(out_dir))
        assert code == 0, err
    assert [r["strategy"] for r in read_csv(out_dir / "results.csv")] == ["l2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@torch_needed
def test_a_failure_while_training_leaves_no_result_behind(tmp_path, capsys, monkeypatch):
    from regplug.experiment import get_runner

    runner = get_runner("torch")
    calls = []
    original = runner.train_strategy

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "train_strategy", fail_on_second)
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--framework", "torch", "--strategies", "none,l2",
                           "--epochs", "1", "--out", str(out_dir))
    assert_one_line_error(code, err, "disk full (simulated)")
    assert list(tmp_path.iterdir()) == []


def register_plugin(monkeypatch, tmp_path: Path, name: str, target: str, source: str) -> None:
    """Make ``target`` ("module:Class", the module written from ``source``) available by
    ``name``, as an installed distribution's entry point would."""
    import importlib

    from regplug import registry

    module = target.partition(":")[0]
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    # imported here and removed from sys.modules after the test, for the next test's sake
    monkeypatch.setitem(sys.modules, module, importlib.import_module(module))
    found = dict(registry.available_plugins())
    found[name] = registry.PluginInfo(name, target, "acme-reg 1.0", False)
    monkeypatch.setattr(registry, "available_plugins", lambda: found)


@torch_needed
def test_a_plugin_refused_in_training_names_framework_and_strategy(tmp_path, capsys,
                                                                   monkeypatch):
    register_plugin(monkeypatch, tmp_path, "acme:teleport", "compare_acme_teleport:Teleport", """
        import regplug

        class Teleport(regplug.Plugin):
            requires = ("teleportation",)
        """)
    path = write_config(tmp_path / "s.toml", """
        [[strategies]]
        name = "beam"
        plugins = [{name = "acme:teleport"}]
        """)
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--config", str(path), "--strategies", "none,beam",
                           "--framework", "torch", "--epochs", "1", "--out", str(out_dir))
    assert_one_line_error(code, err, "torch, strategy 'beam':", "'teleportation'")
    assert not out_dir.exists()


@torch_needed
def test_early_stopping_ends_a_run_and_the_table_shows_the_epochs_run(tmp_path, capsys):
    # min_delta larger than any loss: only the first epoch improves, patience 0 stops at 2.
    path = write_config(tmp_path / "s.toml", """
        [[strategies]]
        name = "impatient"
        [[strategies.plugins]]
        name = "early_stopping"
        monitor = "val_loss"
        patience = 0
        min_delta = 100.0
        """)
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--config", str(path), "--strategies", "none,impatient",
                             "--framework", "torch", "--epochs", "5", "--out", str(out_dir))
    assert code == 0, err
    epochs = {r[1]: int(r[5]) for r in table_rows(out)}
    assert epochs == {"none": 5, "impatient": 2}
    record = {r["strategy"]: r for r in read_csv(out_dir / "results.csv")}["impatient"]
    assert "early_stopping" in record["stop_reason"]


@torch_needed
def test_a_third_party_plugin_is_named_in_a_config_like_a_builtin(tmp_path, capsys,
                                                                  monkeypatch):
    register_plugin(monkeypatch, tmp_path, "acme:halve", "compare_acme_halve:HalveWeights", '''
        import regplug

        class HalveWeights(regplug.Plugin):
            """Multiplies every weight by `factor` at the start of training."""
            def __init__(self, factor=0.5):
                self.factor = factor
            def on_train_begin(self, run):
                run.ops.scale_(run.parameters(), self.factor)
            def __repr__(self):
                return f"HalveWeights(factor={self.factor})"
        ''')
    path = write_config(tmp_path / "s.toml", """
        [[strategies]]
        name = "halved"
        plugins = [{name = "acme:halve", factor = 0.25}]
        """)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--config", str(path), "--framework", "torch",
                             "--epochs", "1")
    assert code == 0, err
    assert "halved                  HalveWeights(factor=0.25)" in out
    assert [r[1] for r in table_rows(out)] == ["halved"]


@torch_needed
def test_data_from_a_module_function(tmp_path, capsys, monkeypatch):
    (tmp_path / "compare_blobs.py").write_text(textwrap.dedent("""
        import numpy as np

        def load():
            rng = np.random.default_rng(0)
            y = rng.integers(0, 3, 200)
            x = rng.normal(size=(200, 5)) + 3.0 * y[:, None]  # three separable blobs
            return (x[:150], y[:150]), (x[150:], y[150:])
        """))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--data", "compare_blobs:load", "--framework", "torch",
                             "--strategies", "none,l2", "--epochs", "20", "--batch-size", "32",
                             "--lr", "0.01")
    assert code == 0, err
    assert "load: 128 train / 22 validation / 50 test rows, 5 features, 3 classes" in out
    assert "SGD(lr=0.01, momentum=0.9), batch 32, 20 epochs, seed 0" in out
    assert all(float(r[3]) > 0.8 for r in table_rows(out))  # blobs are easy


@torch_needed
def test_model_from_a_module_factory_gets_the_strategy_options(tmp_path, capsys, monkeypatch):
    (tmp_path / "compare_mymodels.py").write_text(textwrap.dedent("""
        import torch

        SPECS = []

        def factory(spec):
            SPECS.append(spec)
            layers = [torch.nn.Linear(spec.n_features, 32), torch.nn.ReLU()]
            if spec.batch_norm:
                layers.append(torch.nn.BatchNorm1d(32))
            if spec.dropout is not None:
                layers.append(torch.nn.Dropout(spec.dropout))
            return torch.nn.Sequential(*layers, torch.nn.Linear(32, spec.n_classes))
        """))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--model", "compare_mymodels:factory", "--framework", "torch",
                             "--strategies", "none,batch_norm_dropout,dropout_schedule",
                             "--epochs", "1", "--seed", "5")
    assert code == 0, err
    specs = sys.modules.pop("compare_mymodels").SPECS
    assert [(s.framework, s.dropout, s.batch_norm, s.seed, s.n_features, s.n_classes)
            for s in specs] == [("torch", None, False, 5, 64, 10),
                                         ("torch", 0.2, True, 5, 64, 10),
                                         ("torch", 0.0, False, 5, 64, 10)]
    assert [r[1] for r in table_rows(out)] == ["none", "batch_norm_dropout", "dropout_schedule"]


@torch_needed
def test_a_model_factory_that_ignores_dropout_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "compare_plain.py").write_text(textwrap.dedent("""
        import torch

        def factory(spec):
            return torch.nn.Linear(spec.n_features, spec.n_classes)
        """))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--model", "compare_plain:factory", "--framework", "torch",
                           "--strategies", "dropout", "--epochs", "1")
    assert_one_line_error(code, err, "strategy 'dropout'", "needs a dropout layer",
                          "torch.nn.Dropout(spec.dropout)")


@torch_needed
def test_a_model_factory_that_ignores_the_input_width_is_a_one_line_error(tmp_path, capsys,
                                                                          monkeypatch):
    (tmp_path / "compare_narrow.py").write_text(textwrap.dedent("""
        import torch

        def factory(spec):
            return torch.nn.Linear(784, spec.n_classes)  # written for MNIST, given digits
        """))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--model", "compare_narrow:factory", "--framework", "torch",
                           "--strategies", "none", "--epochs", "1")
    assert_one_line_error(code, err, "--model 'compare_narrow:factory' (strategy 'none', torch)",
                          "fails on a batch of 2 rows of 64 features: RuntimeError")

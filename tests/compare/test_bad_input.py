"""Bad input to ``regplug compare`` is named in one line, before any framework is imported
(issue 11, "bad input that is not named"): references, arguments, frozen models, and text
that would run as a spreadsheet formula."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _compare_cli import assert_one_line_error, run_cli
from hypothesis import given
from hypothesis import strategies as st

from regplug import cli
from regplug.cli import build_parser
from regplug.compare.results import StrategyResult, write_csv, write_json

FRAMEWORK_MODULES = ("torch", "tensorflow", "keras", "jax")
SEED_MAX = 2**32 - 1


def write_module(folder: Path, name: str, source: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


# -- references whose module imports something missing ------------------------------------------

@pytest.mark.parametrize("option", ["--data", "--model"])
def test_a_reference_whose_module_imports_a_missing_package_names_that_package(
        tmp_path, capsys, monkeypatch, option):
    monkeypatch.chdir(tmp_path)
    module = write_module(tmp_path, "needs_missing", "import not_installed_pkg_xyz\n"
                                                      "def load():\n    pass\n")
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           option, f"{module}:load", "--framework", "torch")
    assert_one_line_error(code, err, f"{option} '{module}:load'", "'not_installed_pkg_xyz'",
                          "not installed")
    assert "scikit-learn" not in err and "digits" not in err


@pytest.mark.parametrize("command", ["compare", "tune"])
@pytest.mark.parametrize("data", [None, "digits"])
def test_digits_without_scikit_learn_is_the_same_one_line_error_in_compare_and_tune(
        capsys, monkeypatch, command, data):
    if command == "tune":
        pytest.importorskip("optuna")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    # compare's default preset trains on MNIST: the notebook's is digits, as tune's default
    argv = [command, *(["--preset", "notebook"] if command == "compare" else []),
            "--framework", "torch", "--strategies", "l2", *(["--data", data] if data else [])]
    code = cli.main(argv)
    assert_one_line_error(code, capsys.readouterr().err,
                          "the digits data set needs scikit-learn (sklearn",
                          "is not installed): pip install 'regplug[data]'")


def test_a_function_s_data_is_read_once_and_each_seed_splits_its_training_rows(
        tmp_path, monkeypatch):
    from regplug.experiment.datasets import splits_per_seed

    monkeypatch.syspath_prepend(str(tmp_path))
    module = write_module(tmp_path, "blobs_once", """
        import numpy as np
        calls = []
        def load():
            calls.append(1)
            x = np.arange(40, dtype=np.float32).reshape(20, 2)
            return {"x_train": x[:16], "y_train": np.arange(16) % 2, "x_test": x[16:],
                    "y_test": np.arange(4) % 2}
        """)
    monkeypatch.setitem(sys.modules, module, __import__(module))
    splits_for = splits_per_seed(f"{module}:load")
    first, again, other = splits_for(0), splits_for(0), splits_for(1)
    assert sys.modules[module].calls == [1]
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    np.testing.assert_array_equal(first.x_test, other.x_test)  # the function's own test rows
    assert sorted(np.concatenate([other.x_train, other.x_val])[:, 0]) == list(range(0, 32, 2))


# -- every argument checked up front, naming the option and the range ---------------------------

def parse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["compare", *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", str(SEED_MAX + 1), str(2**64), "1.5", "x"])
def test_a_seed_out_of_range_names_seed_and_the_range(capsys, value):
    err = parse_error(capsys, "--seed", value)
    assert "argument --seed" in err
    assert f"from 0 to {SEED_MAX}" in err or "invalid int value" in err


@pytest.mark.parametrize("argv, fragment", [
    # one prefix for every error, whichever sub-command; its --help is named at the end
    (["compare", "--seeds", "0"],
     "regplug: error: argument --seeds: must be from 1 to 1,000, got 0"),
    (["compare", "--framework", "both2"], "regplug: error: argument --framework: "
                                          "invalid choice: 'both2'"),
    (["tune", "--timeout", "-5"], "regplug: error: argument --timeout: must be a finite"),
    (["bogus"], "regplug: error: argument command: invalid choice: 'bogus'"),
    ([], "regplug: error: the following arguments are required: command"),
])
def test_argument_mistakes_are_one_line_without_the_usage_block(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(fragment), lines
    assert lines[0].endswith("--help)")


@given(st.integers(min_value=-2**70, max_value=2**70))
def test_every_integer_seed_is_accepted_in_range_and_refused_outside(seed):
    parser = build_parser()
    if 0 <= seed <= SEED_MAX:
        assert parser.parse_args(["compare", "--seed", str(seed)]).seed == seed
    else:
        with pytest.raises(SystemExit):
            parser.parse_args(["compare", "--seed", str(seed)])


@pytest.mark.parametrize("seed", [0, SEED_MAX])
def test_the_ends_of_the_seed_range_seed_both_frameworks(seed):
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    torch.manual_seed(seed)
    keras.utils.set_random_seed(seed)
    np.random.default_rng(seed)


@given(option=st.sampled_from(["--epochs", "--batch-size", "--lr"]),
       value=st.one_of(st.integers(-10**6, 0).map(str), st.sampled_from(["nan", "inf", "-0.0",
                                                                         "abc", ""])))
def test_a_non_positive_count_or_rate_names_its_option(option, value):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["compare", option, value])
    assert exit_.value.code == 2


# -- mistakes found before a framework is imported -----------------------------------------------

_NO_FRAMEWORK = textwrap.dedent("""
    import sys
    from regplug import cli
    code = cli.main(["compare", "--preset", "notebook", *sys.argv[1:]])
    loaded = [m for m in {modules!r} if m in sys.modules]
    print("LOADED", loaded, file=sys.stderr)
    sys.exit(code)
""").format(modules=FRAMEWORK_MODULES)


@pytest.mark.parametrize("args, fragment", [
    (["--data", "nope.npz"], "'nope.npz' does not exist"),
    (["--data", "no_such_module_xyz:load"], "no module named 'no_such_module_xyz'"),
    (["--model", "no_such_module_xyz:factory"], "no module named 'no_such_module_xyz'"),
    (["--config", "nope.toml"], "nope.toml"),
    (["--out", "SELF"], "exists and is not a directory"),
    (["--data", "BAD_NPZ"], "cannot be read as .npz"),
])
def test_mistakes_are_reported_before_torch_or_keras_is_imported(tmp_path, args, fragment):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    args = [str(bad) if a == "BAD_NPZ" else str(tmp_path / "bad.npz") if a == "SELF" else a
            for a in args]
    result = subprocess.run([sys.executable, "-c", _NO_FRAMEWORK, *args],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "LOADED []" in result.stderr  # none of torch, tensorflow, keras, jax


# -- a model with nothing to train ---------------------------------------------------------------

_FROZEN_TORCH = """
    import torch

    def factory(spec):
        model = torch.nn.Linear(spec.n_features, spec.n_classes)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def no_parameters(spec):
        return torch.nn.Flatten()
"""


@pytest.mark.parametrize("factory, detail", [
    ("factory", "2 parameters, all requires_grad=False"),
    ("no_parameters", "it has no parameters"),
])
def test_a_torch_model_with_nothing_to_train_is_a_one_line_error(tmp_path, capsys, monkeypatch,
                                                                  factory, detail):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    write_module(tmp_path, "frozen_torch", _FROZEN_TORCH)
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--model", f"frozen_torch:{factory}", "--framework", "torch",
                           "--strategies", "l2", "--epochs", "1")
    assert_one_line_error(code, err, f"--model 'frozen_torch:{factory}' (strategy 'l2', torch)",
                          f"nothing to train ({detail})", "unfreeze")


def test_a_keras_model_with_every_layer_frozen_is_named_with_model_and_strategy():
    keras = pytest.importorskip("keras")
    from regplug.adapters.keras.compare import build_model
    from regplug.experiment.models import ModelChoice, ModelError, ModelSpec

    def factory(spec):
        return keras.Sequential([keras.Input((spec.n_features,)),
                                 keras.layers.Dense(8, trainable=False),
                                 keras.layers.Dense(spec.n_classes, trainable=False)])

    def frozen_model(spec):
        model = factory(spec)
        model.trainable = False
        return model

    for made in (factory, frozen_model):
        with pytest.raises(ModelError) as err:
            build_model(ModelChoice("m:f", factory=made), ModelSpec("keras", 4, 3),
                        strategy="l2")
        message = str(err.value)
        assert message.startswith("--model 'm:f' (strategy 'l2', keras): the model has nothing "
                                  "to train (4 weights, none trainable")


# -- spreadsheet formulas in results.csv ---------------------------------------------------------

def result(description: str, strategy: str = "s", pct_diff: float = -0.25) -> StrategyResult:
    return StrategyResult(framework="torch", strategy=strategy, description=description,
                          acc_train=0.8, acc_test=1.0, pct_diff=pct_diff, epochs=1,
                          zero_fraction=0.0, penalty=0.0, seconds=0.1)


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://evil\",\"x\")", "+1+2", "-2+3",
                                  "@SUM(A1)", "\tcmd", "\rcmd"])
def test_a_description_that_starts_like_a_formula_is_text_in_csv_and_exact_in_json(tmp_path,
                                                                                     text):
    write_csv(tmp_path / "r.csv", [result(text)])
    write_json(tmp_path / "r.json", [result(text)], {})
    with (tmp_path / "r.csv").open(newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["description"] == "'" + text
    assert float(row["pct_diff"]) == -0.25  # numbers keep their sign
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["description"] == text


@given(st.text(max_size=20))
def test_no_csv_text_cell_starts_like_a_formula(text):
    from regplug.experiment.reporting import FORMULA_STARTS, csv_text

    cell = csv_text(text)
    assert not cell.startswith(FORMULA_STARTS)
    assert cell in (text, "'" + text)


# -- caught before training (issue 18): monitors, data names, plugins of one's own -------------

_MONITOR_CONFIG = """\
[[strategies]]
name = "es"
plugins = [{name = "early_stopping", monitor = "val_acc", patience = 3}]
"""


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_monitor_no_log_holds_is_refused_before_training_with_a_suggestion(
        tmp_path, capsys, monkeypatch, framework):
    pytest.importorskip(framework)
    from regplug.experiment import frameworks

    trained: list[str] = []
    runner = frameworks.get_runner(framework)
    monkeypatch.setattr(type(runner), "train_strategy",
                        lambda self, *a, **k: trained.append("x"))
    config = tmp_path / "es.toml"
    config.write_text(_MONITOR_CONFIG)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--config", str(config), "--framework", framework,
                             "--epochs", "1")
    assert_one_line_error(code, err, "strategy 'es': plugin 'early_stopping' monitors "
                          f"'val_acc', which no epoch's logs hold in {framework} (did you "
                          "mean 'val_accuracy'?)")
    assert trained == [] and out == ""


def test_a_gap_monitored_after_generalization_gap_trains(tmp_path, capsys):
    pytest.importorskip("torch")
    config = tmp_path / "gap.toml"
    config.write_text('[[strategies]]\nname = "gap_es"\nplugins = [{name = '
                      '"generalization_gap"}, {name = "early_stopping", monitor = "gap"}]\n')
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--config", str(config), "--framework", "torch",
                             "--epochs", "1", "-q")
    assert code == 0, err
    assert "gap_es" in out


def test_a_misspelt_data_name_is_refused_before_torch_or_keras_is_imported(tmp_path):
    result = subprocess.run([sys.executable, "-c", _NO_FRAMEWORK, "--data", "MNIST"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert ("regplug: error: --data 'MNIST': no data set is called that (did you mean "
            "'mnist'?)") in result.stderr
    assert "LOADED []" in result.stderr


def test_a_plugin_class_of_one_s_own_is_named_module_colon_class(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    write_module(tmp_path, "own_plugins_18", """
        from regplug import Penalty, Plugin

        class Shrink(Plugin):
            def __init__(self, strength=1e-3):
                self.strength = strength

            def on_loss(self, run):
                params, s = run.parameters(), self.strength
                return Penalty("shrink_penalty", lambda: s * run.ops.sum_squares(params))

            def __repr__(self):
                return f"Shrink(strength={self.strength})"
        """)
    monkeypatch.delitem(sys.modules, "own_plugins_18", raising=False)
    (tmp_path / "own.toml").write_text('[[strategies]]\nname = "own"\nplugins = [{name = '
                                       '"own_plugins_18:Shrink", strength = 0.01}]\n')
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--config", "own.toml", "--framework", "torch",
                             "--epochs", "1", "-q")
    sys.modules.pop("own_plugins_18", None)
    assert code == 0, err
    assert "Shrink(strength=0.01)" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("torch "))
    assert row[1] == "own" and float(row[-1]) > 0  # its penalty is the run's penalty column

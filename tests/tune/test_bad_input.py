"""Bad input to ``regplug tune`` is named in one line, before any framework is imported, and
``regplug`` itself never imports Optuna."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from regplug.cli import build_parser
from regplug.experiment.datasets import BUNDLED_DATA, BundledData

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")

#: Runs every case in one process, then reports what each printed and which frameworks
#: (and whether Optuna) got imported along the way.
SCRIPT = """
import contextlib, io, json, sys
from regplug import cli
cases = json.loads(sys.argv[1])
found = {}
for name, argv in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["tune", *argv])
    found[name] = [code, err.getvalue()]
print(json.dumps({"cases": found,
                  "imported": [m for m in FRAMEWORKS if m in sys.modules]}))
""".replace("FRAMEWORKS", repr(FRAMEWORKS))


def run_cases(tmp_path, cases: dict[str, list[str]]) -> dict:
    script = tmp_path / "cases.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, str(script), json.dumps(cases)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_mistakes_are_named_in_one_line_before_any_framework_is_imported(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "o").mkdir()
    (tmp_path / "bad.toml").write_text("[tune.l2]\nl2 = {low = 1e-2, high = 1e-5}\n")
    cases = {
        "untunable": (["--strategies", "none,l2,batch_norm"],
                      ["strategies 'none', 'batch_norm' have nothing to tune",
                       "tunable strategies: l2, l1, dropout"]),
        "unknown strategy": (["--strategies", "l3"], ["unknown strategy 'l3'",
                                                      "did you mean 'l2'"]),
        "storage url": (["--strategies", "l2", "--storage", "study.db"],
                        ["--storage 'study.db'", "sqlite:///study.db", "journal:PATH"]),
        "storage folder": (["--strategies", "l2", "--storage",
                            "sqlite:////nonexistent/dir/s.db"],
                           ["'/nonexistent/dir'", "does not exist"]),
        "journal folder": (["--strategies", "l2", "--storage", "journal:/nonexistent/j.log"],
                           ["journal file", "does not exist"]),
        "study name": (["--strategies", "l2", "--study-name", "s"],
                       ["--study-name", "give --storage too"]),
        "empty study name": (["--strategies", "l2", "--storage", "journal:j.log",
                              "--study-name", ""], ["--study-name"]),
        "config missing": (["--config", "missing.toml"], ["'missing.toml'", "cannot be read"]),
        "config range": (["--config", "bad.toml", "--strategies", "l2"],
                         ["tune.l2.l2", "'low' must be < 'high'"]),
        "out": (["--strategies", "l2", "--out", "a_file"],
                ["--out 'a_file'", "not a directory"]),
        "model": (["--strategies", "l2", "--model", "cnn"], ["unknown model 'cnn'"]),
        "warm-up": (["--strategies", "l2", "--epochs", "4", "--warmup-epochs", "4"],
                    ["--warmup-epochs 4", "from 0 to --epochs - 1 (3)"]),
        "warm-up without a pruner": (["--strategies", "l2", "--warmup-epochs", "2", "--pruner",
                                      "none"],
                                     ["--warmup-epochs 2 needs a pruner (median or hyperband)"]),
        "grid points without the grid": (["--strategies", "l2", "--grid-points", "7"],
                                         ["--grid-points 7 needs --sampler grid",
                                          "--sampler is tpe"]),
        "grid too large": (["--strategies", "l2,elastic_net", "--sampler", "grid",
                            "--grid-points", "1000"],
                           ["strategy 'elastic_net'", "1,000,000 settings",
                            "1000 points per range of elastic_net.l1, elastic_net.l2",
                            "limit of 100,000", "lower --grid-points"]),
        "no strategy": (["--strategies", " , "],
                        ["--strategies ' , ' names no strategy",
                         "that has something to tune, e.g. --strategies l2,l1"]),
        "untunable among all": (["--strategies", "all,none"],
                                ["strategy 'none' has nothing to tune"]),
        "sqlite storage in out": (["--strategies", "l2", "--storage", "sqlite:///o/study.db",
                                   "--out", "o"],
                                  ["--storage 'o/study.db' lies inside --out 'o'",
                                   "outside --out"]),
        "absolute sqlite storage in out": (
            ["--strategies", "l2", "--storage", f"sqlite:///{tmp_path}/o/study.db",
             "--out", "o"],
            [f"--storage '{tmp_path}/o/study.db' lies inside --out 'o'"]),
        "journal storage in out": (["--strategies", "l2", "--storage",
                                    f"journal:{tmp_path}/o/study.log", "--out", f"{tmp_path}/o"],
                                   [f"--storage '{tmp_path}/o/study.log' lies inside --out"]),
    }
    report = run_cases(tmp_path, {name: argv for name, (argv, _) in cases.items()})
    for name, (_, fragments) in cases.items():
        code, err = report["cases"][name]
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (name, err)
        assert lines[0].startswith("regplug: error: "), (name, err)
        for fragment in fragments:
            assert fragment in lines[0], (name, fragment, lines[0])
    assert report["imported"] == []
    assert list((tmp_path / "o").iterdir()) == []  # no storage was created inside --out


def test_regplug_and_its_help_never_import_optuna(tmp_path):
    code = ("import sys, contextlib, io\nfrom regplug import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('optuna' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_without_optuna_the_command_says_what_to_install(tmp_path):
    code = ("import sys\nsys.modules['optuna'] = None  # as if not installed\n"
            "from regplug import cli\nsys.exit(cli.main(['tune', '--strategies', 'l2']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "regplug tune needs Optuna" in lines[0]
    assert "pip install 'regplug[tune]'" in lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["--objective", "val_loss"], "invalid choice: 'val_loss'"),
    (["--grid-points", "0"], "must be from 2 to 1000 (a grid holds both ends of each range), "
                             "got 0"),
    (["--grid-points", "1"], "must be from 2 to 1000 (a grid holds both ends of each range), "
                             "got 1"),
    (["--grid-points", "1001"], "must be from 2 to 1000"),
    (["--grid-points", "many"], "invalid int value: 'many'"),
    (["--trials", "0"], "must be at least 1"),
    (["--timeout", "-5"], "must be a finite number > 0"),
    (["--framework", "both"], "invalid choice: 'both'"),
    (["--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    (["--pruner", "wilcoxon"], "invalid choice: 'wilcoxon'"),
    (["--warmup-epochs", "-1"], "must be at least 0"),
])
def test_bad_options_are_refused_by_the_parser_naming_the_option(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["tune", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err and fragment in err


def test_the_help_says_trials_are_per_strategy_and_why_not_val_loss(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "trials PER STRATEGY" in text
    assert "Not val_loss: it includes the penalty and so favours small strengths" in text


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_the_data_help_lists_every_bundled_data_set_and_the_other_specs(command, capsys,
                                                                        monkeypatch):
    # a data set added to the table shows in the help: the help is built from it
    monkeypatch.setitem(BUNDLED_DATA, "toy_set",
                        BundledData("some-package", "toy", "a toy data set"))
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    data_help = text[text.rindex("--data SPEC"):text.rindex("--model SPEC")]  # not the usage
    for name in filter(None, BUNDLED_DATA):
        assert f"'{name}'" in data_help, name
    # compare's --preset chooses the data (overfit: mnist), tune's default is digits
    default = "(default: the preset's)" if command == "compare" else "'digits' (default:"
    for words in (default, "'toy_set' (a toy data set)",
                  "pip install 'regplug[data]'", "FILE.npz", "module:function"):
        assert words in data_help, words


# -- caught before training (issue 18) ----------------------------------------------------------

def test_a_misspelt_data_name_is_one_line_before_any_framework_is_imported(tmp_path):
    report = run_cases(tmp_path, {"data": ["--strategies", "l2", "--data", "MNIST"]})
    code, err = report["cases"]["data"]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == ("regplug: error: --data 'MNIST': no data set is called that (did you "
                        "mean 'mnist'?); give 'digits', 'mnist', an MNIST-style .npz file, or "
                        "module:function")
    assert report["imported"] == []


def test_a_monitor_no_log_holds_is_refused_before_any_trial(fake_runner, tmp_path, capsys,
                                                            monkeypatch):
    pytest.importorskip("optuna")
    from regplug import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "es.toml").write_text(
        '[[strategies]]\nname = "es"\nplugins = [{name = "early_stopping", monitor = '
        '"val_acc", patience = 3}]\n')
    code = cli.main(["tune", "--config", "es.toml", "--trials", "1", "--epochs", "2",
                     "--storage", "sqlite:///study.db"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0] == ("regplug: error: strategy 'es': plugin 'early_stopping' monitors "
                        "'val_acc', which no epoch's logs hold in torch (did you mean "
                        "'val_accuracy'?); they hold accuracy, cross_entropy, loss, "
                        "val_accuracy, val_cross_entropy, val_loss")
    assert fake_runner.calls == [] and captured.out == ""
    assert not (tmp_path / "study.db").exists()  # refused before the storage was opened

"""``regplug tune --out``: trials.csv, best.toml (read back by ``regplug compare --config``),
results.json, figures and report — and the output folder's safety, as compare's."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tune_scripts import fake_runner_script
from hypothesis import given
from hypothesis import strategies as st

from regplug import cli
from regplug.configfile import tomllib
from regplug.experiment.output import MANIFEST
from regplug.experiment.strategies import Strategy, load_strategies
from regplug.tune.output import strategy_toml, toml_value, write_trials_csv
from regplug.tune.search import TrialRecord


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# -- TOML written by hand, read by tomllib -----------------------------------------------------

@given(st.floats(allow_nan=False) | st.integers(-2**63, 2**63 - 1) | st.booleans()
       | st.text(max_size=20))
def test_every_scalar_reads_back_as_the_same_value(value):
    assert tomllib.loads(f"x = {toml_value(value)}")["x"] == value


def test_a_tuned_strategy_reads_back_with_compare_exactly(tmp_path):
    tuned = Strategy("sched_tuned", plugins=(
        {"name": "l2", "l2": 0.00012345678901234567},
        {"name": "dropout_schedule", "rate": {"schedule": "linear", "start": 0.0,
                                              "end": 0.3141592653589793, "span": 10,
                                              "per": "epoch"}}), dropout=0.0)
    path = tmp_path / "best.toml"
    path.write_text(strategy_toml(tuned, comment='trial 3 "quoted"\nsecond line'))
    text = path.read_text()
    assert text.startswith('# trial 3 "quoted"\n# second line\n[[strategies]]\n')
    back = load_strategies(path)["sched_tuned"]
    assert back.plugins == tuned.plugins and back.dropout == 0.0 and not back.batch_norm


def test_csv_cells_that_would_run_as_formulas_are_quoted(tmp_path):
    record = TrialRecord("l2", 0, "FAIL", {"p.mode": '=HYPERLINK("http://x")'}, None, 1, 0.5,
                         error="@SUM(A1)")
    write_trials_csv(tmp_path / "trials.csv", [record], ["p.mode"], metric="val_accuracy")
    row = rows_of(tmp_path / "trials.csv")[0]
    assert row["p.mode"] == "'=HYPERLINK(\"http://x\")"
    assert row["error"] == "'@SUM(A1)"
    assert row["val_accuracy"] == ""  # no value: an empty cell
    assert row["seconds"] == "0.5" and row["state"] == "FAIL"


# -- a whole run's output (fake runner: nothing trained) ----------------------------------------

def test_the_output_folder_holds_every_trial_and_the_best_settings(fake_runner, capsys,
                                                                   tmp_path):
    out = tmp_path / "tune-out"
    code, printed, err = tune(capsys, "--strategies", "l2,dropout", "--trials", "6",
                              "--epochs", "3", "--sampler", "random", "--pruner", "none",
                              "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "trials.csv", "best.toml", "results.json", "report.html", MANIFEST,
        "objective_vs_parameters.png", "optimization_history.png"])
    rows = rows_of(out / "trials.csv")
    assert list(rows[0]) == ["strategy", "number", "state", "l2.l2", "model.dropout",
                             "val_cross_entropy", "epochs", "seconds", "pruned_at_epoch", "error"]
    assert [(r["strategy"], r["number"]) for r in rows] == (
        [("l2", str(i)) for i in range(6)] + [("dropout", str(i)) for i in range(6)])
    assert all(r["state"] == "COMPLETE" and r["epochs"] == "3" for r in rows)
    assert all(r["model.dropout"] == "" for r in rows if r["strategy"] == "l2")

    # best.toml: the best row of each strategy, read back by regplug compare --config
    best_l2 = min((r for r in rows if r["strategy"] == "l2"),
                  key=lambda r: float(r["val_cross_entropy"]))
    best_dropout = min((r for r in rows if r["strategy"] == "dropout"),
                       key=lambda r: float(r["val_cross_entropy"]))
    tuned = load_strategies(out / "best.toml")
    assert list(tuned) == ["l2_tuned", "dropout_tuned"]
    assert tuned["l2_tuned"].plugins == ({"name": "l2", "l2": float(best_l2["l2.l2"])},)
    assert tuned["dropout_tuned"].dropout == float(best_dropout["model.dropout"])
    assert tuned["dropout_tuned"].plugins == ()
    text = (out / "best.toml").read_text()
    assert (f"# l2: val_cross_entropy (minimized) {float(best_l2['val_cross_entropy'])!r} at "
            f"trial {best_l2['number']} of 6 trials run (6 complete, 0 pruned, 0 failed)") in text

    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "regplug-tune/1"
    assert results["strategies"]["l2"]["best"]["trial"] == int(best_l2["number"])
    assert results["strategies"]["l2"]["parameters"] == {
        "l2.l2": {"low": 1e-6, "high": 0.1, "log": True}}
    assert results["strategies"]["l2"]["counts"]["epochs_run"] == 18
    assert len(results["trials"]) == 12 and results["best_toml"] == text
    # the test accuracy of the best setting, measured once after the search
    assert results["strategies"]["l2"]["best"]["test_accuracy"] == pytest.approx(
        min(1.0, 0.5 + 5 * float(best_l2["l2.l2"])))
    assert len(fake_runner.calls) == 12 + 2

    report = (out / "report.html").read_text()
    assert "objective_vs_parameters.png" in report and "optimization_history.png" in report
    assert "l2_tuned" in report and "measured once after selection" in report
    for name in ("objective_vs_parameters.png", "optimization_history.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the printed summary: per strategy, the best value, trial and counts
    summary = printed[printed.index("summary"):]
    line = next(s for s in summary.splitlines() if s.strip().startswith("l2 "))
    assert f"{float(best_l2['val_cross_entropy']):.4f}" in line
    assert "18 of 18 (100%)" in line
    assert "test accuracy of each best setting, measured once after selection" in summary


# -- the output folder's safety -----------------------------------------------------------------

def test_a_folder_of_user_files_is_refused_before_any_training(fake_runner, capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    code, out, err = tune(capsys, "--strategies", "l2", "--trials", "2", "--out", str(folder))
    assert code == 2
    assert err.count("\n") == 1 and "holds other files" in err and "thesis.txt" in err
    assert fake_runner.calls == [] and " #" not in out
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_an_earlier_tune_output_is_replaced_whole(fake_runner, capsys, tmp_path):
    out = tmp_path / "run"
    assert tune(capsys, "--strategies", "l2,dropout", "--trials", "2", "--epochs", "2",
                "--out", str(out))[0] == 0
    assert tune(capsys, "--strategies", "l2", "--trials", "2", "--epochs", "2",
                "--out", str(out))[0] == 0
    assert list(load_strategies(out / "best.toml")) == ["l2_tuned"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_refusal_of_a_folder_without_a_manifest_speaks_of_regplug_not_compare(
        fake_runner, capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, _, err = tune(capsys, "--strategies", "l2", "--out", str(folder))
    assert code == 2 and f"no {MANIFEST}" in err
    assert "regplug compare" not in err


@pytest.mark.parametrize("interrupt, code, message", [
    ("Terminated", 143, "regplug: terminated (SIGTERM); nothing was written"),
    ("KeyboardInterrupt", 130, "regplug: interrupted")])
def test_an_interrupt_while_optuna_records_a_trial_still_leaves_nothing_behind(
        fake_runner, capsys, tmp_path, monkeypatch, interrupt, code, message):
    """Optuna 5 masks an interrupt that arrives while it records a trial's result (an
    UnboundLocalError from its ``finally`` block); the command still ends as interrupted."""
    from regplug.experiment import output

    _optimize = pytest.importorskip("optuna.study._optimize")  # Optuna's private module:
    # an interrupt raised where the real one landed (inside _tell_with_warning)
    error = output.Terminated if interrupt == "Terminated" else KeyboardInterrupt
    tell = _optimize._tell_with_warning
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error()
        return tell(*args, **kwargs)

    monkeypatch.setattr(_optimize, "_tell_with_warning", interrupted)
    out = tmp_path / "run"
    try:
        result = cli.main(["tune", "--strategies", "l2", "--trials", "5", "--epochs", "2",
                           "--out", str(out)])
    except SystemExit as exit_:
        result = exit_.code
    err = capsys.readouterr().err
    assert (result, err.strip().splitlines()) == (code, [message])
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


SIGTERM_SCRIPT = """
from regplug import cli
sys.exit(cli.main(["tune", "--strategies", "l2", "--trials", "500", "--epochs", "2",
                   "--out", {out!r}]))
"""


def test_sigterm_during_the_search_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "run_tune.py"
    script.write_text(fake_runner_script(SIGTERM_SCRIPT.format(out=str(out)),
                                         seconds_per_training=0.3))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the first finished trial
        if line.startswith("l2 ") and "#0" in line:
            break
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_tune.py"]


# -- pruned trials: their own style, epochs counted from 1 everywhere ----------------------------

def test_pruned_trials_are_hollow_grey_behind_the_complete_ones_with_the_epochs_they_stopped(
        tmp_path):
    """A pruned trial's value is of the epoch it stopped at: drawn apart from the complete
    trials (hollow, grey, behind them), its legend saying at which epochs, counted from 1
    as the console and trials.csv count them."""
    pytest.importorskip("matplotlib")
    from regplug.experiment import BUILTIN_STRATEGIES
    from regplug.tune import plots
    from regplug.tune.search import Objective
    from regplug.tune.strategy_space import strategy_space

    space = strategy_space(BUILTIN_STRATEGIES["l2"])
    complete = [TrialRecord("l2", i, "COMPLETE", {"l2.l2": 10.0 ** -i}, 0.30 + 0.01 * i, 10,
                            1.0) for i in range(1, 4)]
    pruned = [TrialRecord("l2", 4, "PRUNED", {"l2.l2": 1e-5}, 0.20, 4, 0.4, pruned_epoch=3),
              TrialRecord("l2", 5, "PRUNED", {"l2.l2": 1e-6}, 0.25, 7, 0.7, pruned_epoch=6)]
    records = {"l2": complete + pruned}
    objective = Objective("val_cross_entropy")
    for fig in (plots.draw_parameters([space], records, objective),
                plots.draw_history([space], records, objective)):
        ax = fig.axes[0]
        by_label = {c.get_label(): c for c in ax.collections}
        hollow = by_label["pruned (2): value at the epoch it stopped (4–7)"]
        assert list(hollow.get_offsets()[:, 1]) == [0.20, 0.25]
        assert len(hollow.get_facecolors()) == 0  # hollow
        assert tuple(hollow.get_edgecolors()[0][:3]) == pytest.approx((0x88 / 255,) * 3)
        dots = next(c for label, c in by_label.items() if label.startswith("complete"))
        assert hollow.get_zorder() < dots.get_zorder()
        # no legend hides a trial: a pruned one at the panel's lower edge stays in sight
        fig.canvas.draw()
        box = ax.get_legend().get_window_extent()
        for collection in ax.collections:
            for x, y in ax.transData.transform(collection.get_offsets()):
                assert not box.contains(x, y), (collection.get_label(), x, y)
    assert "counted from 1" in plots.parameters_caption(objective)
    # the console's line and trials.csv count the same epoch
    assert pruned[0].describe_outcome(objective).startswith("pruned at epoch 4 ")
    write_trials_csv(tmp_path / "t.csv", pruned, ["l2.l2"], metric="val_cross_entropy")
    rows = rows_of(tmp_path / "t.csv")
    assert [(r["epochs"], r["pruned_at_epoch"]) for r in rows] == [("4", "4"), ("7", "7")]

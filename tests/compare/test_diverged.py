"""`regplug compare` with a training that diverges (`--lr 1e30`, NaN losses): the row is
marked, said under the table and in the report, and kept out of the tests against `none`."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
from _compare_cli import run_cli, table_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug.compare.results import (
    StrategyResult,
    baseline_statement,
    divergence,
    format_summary_table,
    format_table,
    summarize,
)
from regplug.experiment.training import WeightArray

NAN = float("nan")


def run(strategy: str, seed: int, acc_test: float, *, diverged: str | None = None
        ) -> StrategyResult:
    return StrategyResult("torch", strategy, "", 1.0, acc_test, 1 - acc_test, 3, 0.0, 0.0, 1.0,
                          seed=seed, diverged=diverged)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6))
def test_a_run_diverged_exactly_when_a_loss_is_not_finite(loss, val_loss):
    reason = divergence({"loss": loss, "val_loss": val_loss})
    finite = all(math.isfinite(v) for v in loss + val_loss)
    assert (reason is None) == finite
    if reason is not None:
        assert reason.endswith("(the training diverged)")


def test_json_nulls_and_non_finite_weights_are_divergence_too():
    assert divergence({"loss": [0.5, None]}) == "loss is nan at epoch 2 (the training diverged)"
    weights = [WeightArray("fc.weight", "weight", "Linear", 0, np.array([[1.0, np.inf]]))]
    assert "'fc.weight' are not finite" in divergence({"loss": [0.5]}, weights)


def test_the_table_marks_the_row_and_says_why_under_it():
    rows = [run("none", 0, 0.9), run("l2", 0, 0.1, diverged="loss is nan at epoch 1 (the "
                                                            "training diverged)")]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[1].split()[1] == "none" and lines[2].split()[1:3] == ["l2", "!"]
    assert lines[-1].startswith("! diverged: torch l2 — loss is nan at epoch 1")
    assert "kept out of the tests against 'none'" in lines[-1]
    assert "diverged" not in format_table(rows[:1])


def test_a_diverged_strategy_is_kept_out_of_the_tests_and_said_so():
    runs = [run("none", s, 0.90 + 0.001 * s) for s in range(3)]
    runs += [run("l2", s, 0.95 + 0.001 * s) for s in range(3)]
    runs += [run("big_lr", s, 0.10, diverged="loss is nan at epoch 1 (the training diverged)")
             if s == 1 else run("big_lr", s, 0.99) for s in range(3)]
    summaries = {s.strategy: s for s in summarize(runs)}
    assert summaries["big_lr"].tests == {} and summaries["big_lr"].diverged == (1,)
    assert set(summaries["l2"].tests) == {"acc_test", "pct_diff"}
    assert summaries["l2"].tests["acc_test"].verdict() == "higher"
    table = format_summary_table(list(summaries.values()))
    assert table.splitlines()[3].split()[-2:] == ["diverged", "diverged"]
    statement = baseline_statement(list(summaries.values()))
    assert "Diverged training (a non-finite loss): torch big_lr (seed 1)" in statement
    assert summaries["big_lr"].row()["diverged_seeds"] == "1"


def test_a_diverged_baseline_leaves_every_strategy_untested():
    runs = [run("none", s, 0.9, diverged="loss is nan at epoch 1 (the training diverged)")
            if s == 0 else run("none", s, 0.9) for s in range(3)]
    runs += [run("l2", s, 0.95) for s in range(3)]
    summaries = summarize(runs)
    assert all(s.tests == {} for s in summaries)


def test_compare_with_a_diverging_learning_rate_marks_the_rows_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "out"
    # The figures of NaN curves and weights draw what is finite and say the rest, without
    # NumPy's or matplotlib's RuntimeWarnings reaching the user's terminal.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, out, err = run_cli(capsys, "--preset", "notebook", "--framework", "torch",
                                 "--epochs", "2", "--strategies", "none,l2", "--lr", "1e30",
                                 "--out", str(out_dir))
    assert code == 0, err
    assert "Warning" not in err, err
    rows = table_rows(out)
    assert all(row[2] == "!" for row in rows), rows
    assert "\n\n! diverged: torch none, torch l2 — " in out
    records = list(csv.DictReader((out_dir / "results.csv").open(encoding="utf-8")))
    assert all(r["diverged"].endswith("(the training diverged)") for r in records)
    saved = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert all(r["diverged"] for r in saved["results"])
    report = (out_dir / "report.html").read_text(encoding="utf-8")
    assert report.count("<b>DIVERGED</b>") == 2 and "! diverged:" in report

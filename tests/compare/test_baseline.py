"""The strategy compare tests against is a choice: ``none`` for the classify task,
``finetune`` for ``--task finetune`` (issue 19: "say which strategies beat finetune beyond
seed noise") — in the table's headers, its cells, the statement under it, summary.csv's keys
and the report."""

from __future__ import annotations

from pathlib import Path

from regplug.compare.report import write_report
from regplug.compare.results import (
    StrategyResult,
    baseline_statement,
    format_summary_table,
    summarize,
)

BASE = [0.90, 0.94, 0.91, 0.95]
BETTER = [0.93, 0.96, 0.93, 0.98]  # +0.02..0.03 on every seed: beyond the noise
SAME = [0.91, 0.93, 0.92, 0.94]


def _run(strategy: str, seed: int, acc_test: float) -> StrategyResult:
    return StrategyResult("torch", strategy, f"{strategy}!", 1.0, acc_test, 1 - acc_test, 30,
                          0.0, 0.0, 1.0, seed=seed)


def _results(baseline: str) -> list[StrategyResult]:
    return [_run(name, seed, acc)
            for name, accs in ((baseline, BASE), ("l2", BETTER), ("ema", SAME))
            for seed, acc in enumerate(accs)]


def test_finetune_is_the_baseline_everything_is_tested_against():
    summaries = summarize(_results("finetune"), baseline="finetune")
    by = {s.strategy: s for s in summaries}
    assert by["finetune"].tests == {}
    assert by["l2"].tests["acc_test"].verdict() == "higher"
    assert by["ema"].tests["acc_test"].verdict() == "no"
    table = format_summary_table(summaries)
    header = table.splitlines()[0]
    assert "acc_test_vs_finetune" in header and "vs_none" not in header
    finetune_row = next(line for line in table.splitlines() if " finetune " in line)
    assert finetune_row.rstrip().endswith("baseline")
    statement = baseline_statement(summaries)
    assert statement.startswith("vs finetune: a paired two-sided t-test of the per-seed "
                                "differences from 'finetune'")
    assert "acc_test_diff_vs_finetune" in by["l2"].row()
    assert not any(key.endswith("_vs_none") for key in by["l2"].row())


def test_without_the_chosen_baseline_nothing_is_tested_and_the_statement_names_it():
    summaries = summarize(_results("none"), baseline="finetune")
    assert all(s.tests == {} for s in summaries)
    assert baseline_statement(summaries).startswith(
        "no baseline: strategy 'finetune' was not run")


def test_the_default_stays_none():
    summaries = summarize(_results("none"))
    assert summaries[0].baseline == "none"
    assert "acc_test_vs_none" in format_summary_table(summaries).splitlines()[0]
    assert baseline_statement(summaries).startswith("vs none: ")


def test_the_report_heads_its_columns_with_the_baseline(tmp_path: Path):
    results = _results("finetune")
    write_report(tmp_path / "report.html", results, {"epochs": 30}, [], command="x",
                 summaries=summarize(results, baseline="finetune"))
    html = (tmp_path / "report.html").read_text()
    assert "<th>acc_test_vs_finetune</th>" in html and "vs_none" not in html

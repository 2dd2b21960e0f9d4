"""``report.html``: the settings, the table and the figures of one comparison, in one page.

The figures are linked by their file names (they sit beside the report), so the page stays
small and opens from the output folder in any browser.

Docs: docs/compare.md
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..experiment.reporting import REPORT_STYLE
from .results import (
    COLUMNS,
    SUMMARY_COLUMNS,
    Spread,
    StrategyResult,
    StrategySummary,
    baseline_of,
    baseline_statement,
    diverged_note,
    summary_cells,
)

__all__ = ["write_report", "spread_cell"]


def _cell(value: Any, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, fmt)


def _fact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(str(v) for v in value.values())
    return str(value)


#: The seeds table's columns that hold a mean ± std (shown compact, full digits on hover).
_SPREAD_COLUMNS = ("acc_train", "acc_test", "pct_diff")


def spread_cell(spread: Spread) -> str:
    """A mean ± std cell of the seeds table: 3 decimals, the ± std in grey, on one line;
    the 4-decimal text (the printed table's) as its tooltip.

    >>> print(spread_cell(Spread(0.96123, 0.00412)))
    <td class='num' title='0.9612 ± 0.0041'>0.961<span class='sd'> ± 0.004</span></td>
    """
    if math.isnan(spread.mean):
        return "<td class='num'>nan</td>"
    std = "nan" if math.isnan(spread.std) else f"{spread.std:.3f}"
    return (f"<td class='num' title='{html.escape(spread.text('.4f'))}'>{spread.mean:.3f}"
            f"<span class='sd'> ± {std}</span></td>")


def _runs_table(results: Sequence[StrategyResult], *, seeds: bool) -> str:
    """One row per run (with a ``seed`` column when ``seeds``); the description, the one
    column that wraps, last."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _, _ in COLUMNS[:2])
    head += "<th>seed</th>" if seeds else ""
    head += "".join(f"<th>{html.escape(h)}</th>" for _, h, _, _ in COLUMNS[2:])
    rows = []
    for result in results:
        row = result.row()
        cells = [f"<td>{html.escape(_cell(row[k], f))}</td>" for k, _, _, f in COLUMNS]
        if seeds:
            cells.insert(2, f"<td>{html.escape(str(result.seed))}</td>")
        rows.append(f"<tr>{''.join(cells)}<td class='desc'>"
                    + (f"<b>DIVERGED</b>: {html.escape(result.diverged)} — "
                       if result.diverged else "")
                    + html.escape(result.description)
                    + (f" — stopped: {html.escape(result.stop_reason)}"
                       if result.stop_reason else "") + "</td></tr>")
    return (f"<table><thead><tr>{head}<th>description</th></tr></thead><tbody>\n"
            f"{chr(10).join(rows)}\n</tbody></table>")


def _summary_table(summaries: Sequence[StrategySummary]) -> str:
    """Mean ± std per framework × strategy and the verdicts against the baseline (``none``;
    ``finetune`` for ``--task finetune``), one line a row; the strategies' descriptions follow
    the table (and are each row's tooltip)."""
    baseline = baseline_of(summaries)
    head = "".join(f"<th>{html.escape(f'{k}_{baseline}' if k.endswith('_vs') else h)}</th>"
                   for k, h, _ in SUMMARY_COLUMNS)
    rows = []
    for summary in summaries:
        cells = summary_cells(summary)
        rows.append(f"<tr title='{html.escape(summary.description)}'>" + "".join(
            spread_cell(getattr(summary, k)) if k in _SPREAD_COLUMNS
            else f"<td>{html.escape(cells[k])}</td>" for k, _, _ in SUMMARY_COLUMNS)
            + "</tr>")
    described = dict.fromkeys((s.strategy, s.description) for s in summaries)
    legend = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>"
                     for name, text in described)
    return (f"<table class='summary'><thead><tr>{head}</tr></thead>"
            f"<tbody>\n{chr(10).join(rows)}\n</tbody></table>\n"
            f"<ul class='strategies'>{legend}</ul>")


def write_report(path: Path, results: Sequence[StrategyResult], settings: Mapping[str, Any],
                 figures: Sequence[tuple[str, str]], *, command: str,
                 summaries: Sequence[StrategySummary] = ()) -> Path:
    """Write the page; ``figures`` are ``(file name, caption)`` pairs beside ``path``.

    With ``summaries`` (several seeds): their table — mean ± std, the verdicts against
    ``none`` — and the statement of the test come first; every run's row follows, with its
    seed, in a folded section."""
    facts = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(_fact(v))}</li>"
                    for k, v in settings.items()
                    if k not in ("command", "strategies") and not k.startswith("train_"))
    figs = "".join(
        f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in figures)
    if summaries:
        seeds = sorted({s for summary in summaries for s in summary.seeds})
        tables = f"""<h2>Over {len(seeds)} seeds ({seeds[0]} to {seeds[-1]})</h2>
<p>Mean ± sample standard deviation (ddof=1) over the seeds, to 3 decimals (4 when you
point at a cell; every digit in summary.csv); <code>epochs</code>, <code>zeros</code> and
<code>penalty</code> are means.</p>
{_summary_table(summaries)}
<p class='test'>{html.escape(baseline_statement(summaries))}</p>
<details><summary>Every run ({len(results)})</summary>
{_runs_table(results, seeds=True)}
</details>
<p>The numbers are in <a href="summary.csv">summary.csv</a> (per strategy, with the tests'
differences, 95% intervals, raw and adjusted p-values), <a href="results.csv">results.csv</a>
(per run) and, with every epoch's history, in <a href="results.json">results.json</a>.</p>"""
    else:
        note = diverged_note(results)
        tables = _runs_table(results, seeds=False) + (
            f"\n<p class='test'>{html.escape(note)}</p>" if note else "")
    footer = "" if summaries else """
<p>The numbers are also in <a href="results.csv">results.csv</a> and, with every epoch's
history, in <a href="results.json">results.json</a>.</p>"""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regplug compare</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>regplug compare</h1>
<p><code>{html.escape(command)}</code></p>
<ul>{facts}</ul>
<p><code>pct_diff = 1 − acc_test / acc_train</code> (the generalization gap);
<code>epochs</code>: epochs run (early stopping may end a run sooner); <code>zeros</code>:
share of weight-matrix entries that are exactly 0; <code>penalty</code>: the strategy's
penalty terms at the final weights.</p>
{tables}
{figs}{footer}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path

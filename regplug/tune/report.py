"""``report.html`` of a search: the command, the settings, the summary table, the figures
and ``best.toml``, in one page that opens from the output folder (figures are linked by
their file names, beside it).

Docs: docs/tune.md
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..experiment.reporting import REPORT_STYLE

__all__ = ["write_report"]


def _fact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def write_report(path: Path, *, command: str, settings: Mapping[str, Any],
                 header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str],
                 figures: Sequence[tuple[str, str]], best_toml: str) -> Path:
    """Write the page. ``header``/``rows``: the summary table as text cells; ``notes``:
    sentences under it (the test accuracies, a timeout, a grid smaller than --trials);
    ``figures``: ``(file name, caption)`` pairs."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    # cells stay on one line (REPORT_STYLE), but the last (the best parameters) may wrap
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[:-1])
                     + "".join(f"<td class='desc'>{html.escape(c)}</td>" for c in row[-1:])
                     + "</tr>" for row in rows)
    facts = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(_fact(v))}</li>"
                    for k, v in settings.items() if k != "command")
    paragraphs = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    figs = "".join(
        f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in figures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regplug tune</title>
<style>{REPORT_STYLE}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }}</style></head><body>
<h1>regplug tune</h1>
<p><code>{html.escape(command)}</code></p>
<ul>{facts}</ul>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
{paragraphs}
{figs}
<h2>best.toml</h2>
<p>The best setting of each strategy, as strategies that
<code>regplug compare --config best.toml</code> reads:</p>
<pre>{html.escape(best_toml)}</pre>
<p>Every trial is in <a href="trials.csv">trials.csv</a>; the settings, every trial and the
summary in <a href="results.json">results.json</a>.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path

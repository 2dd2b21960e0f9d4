"""What the apps' output files share: figures, the HTML pages' style, CSV and JSON cells.

``regplug compare`` and ``regplug tune`` both draw PNG figures on matplotlib's Agg canvas
(:func:`new_figure`: no ``pyplot``, so no global state changes; matplotlib is imported on
first use), write one ``report.html`` styled by :data:`REPORT_STYLE`, CSV cells that a
spreadsheet shows as text (:func:`csv_text`) and JSON that holds no NaN (:func:`json_safe`).

Docs: docs/compare.md, docs/tune.md
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["new_figure", "save_figure", "REPORT_STYLE", "FORMULA_STARTS", "csv_text",
           "json_safe"]


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches (100 dpi, constrained layout)
    on its own Agg canvas: no ``pyplot``, so no global state changes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("the plots need matplotlib: pip install 'regplug[plots]'") from err
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG; returns ``path``."""
    fig.savefig(path, format="png")
    return path


#: The pages' CSS (``regplug compare``'s and ``regplug tune``'s reports). Table cells stay on
#: one line (a mean ± std never breaks), except a description (``td.desc``), which wraps in
#: the room left: the tables fit a 1280-px window.
REPORT_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 14px;
        max-width: 100%; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right;
         white-space: nowrap; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
td.desc { text-align: left; color: #555; white-space: normal; min-width: 12em; }
th:last-child { text-align: left; }
td .sd { color: #777; font-size: 12px; }
table.summary td:nth-last-child(-n+2), table.summary th:nth-last-child(-n+2) {
  text-align: left; }
ul.strategies { font-size: 13px; color: #555; columns: 2; padding-left: 1.2em; }
p.test { font-size: 14px; color: #333; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 14px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading
    single quote (the OWASP rule); any other text is unchanged.

    >>> print(csv_text("=1+2"), csv_text("-x"), csv_text("L2, 1e-4"))
    '=1+2 '-x L2, 1e-4
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text




def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot hold made plain: NaN and infinities as ``None``, NumPy
    scalars as Python numbers, tuples as lists, mapping keys as strings.

    >>> json_safe({1: (float("nan"), np.float32(0.5)), "x": float("inf")})
    {'1': [None, 0.5], 'x': None}
    """
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value

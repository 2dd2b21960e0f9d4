"""``regplug compare``: train one model under several regularization strategies, side by side.

The command on top of :mod:`regplug.experiment` (strategies, data, models, the frameworks'
runners, output folders): its command line (:mod:`.cli`), the comparison itself
(:mod:`.comparison`), the results table, CSV/JSON and seed statistics (:mod:`.results`,
:mod:`.stats`), the progress line (:mod:`.progress`), the figures (:mod:`.plots`) and
``report.html`` (:mod:`.report`).

Docs: docs/compare.md
"""

from __future__ import annotations

from .comparison import run_compare
from .progress import Progress
from .results import StrategyResult, format_table

__all__ = ["run_compare", "StrategyResult", "format_table", "Progress"]

"""The search's figures, as PNG files, drawn on matplotlib's Agg canvas (no ``pyplot``, as
:mod:`regplug.experiment.reporting`): the objective against each searched parameter, and the
objective per trial with the best so far.

Complete trials are filled dots; pruned ones hollow grey circles, behind them, at the value
they reported at the epoch they stopped — an earlier epoch than the complete trials', so not
comparable with theirs (a curve that rises late has a lower value early); the legend says
which epochs. The best complete trial of each strategy is a red star. Failed trials have no
value and are not drawn. Epochs count from 1, as the console and trials.csv count them.

Docs: docs/tune.md
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..experiment.reporting import new_figure, save_figure
from ..ranges import Choice
from .search import Objective, TrialRecord
from .strategy_space import StrategySpace

__all__ = ["PARAMETERS_FIGURE", "HISTORY_FIGURE", "draw_parameters", "draw_history",
           "plot_parameters", "plot_history", "parameters_caption", "history_caption",
           "pruned_label"]

PARAMETERS_FIGURE = "objective_vs_parameters.png"
HISTORY_FIGURE = "optimization_history.png"
_MAX_COLS = 4
_COMPLETE, _PRUNED, _BEST = "#1f77b4", "#888888", "#d62728"


def _panels(n: int, width: float, height: float) -> tuple[Any, list[Any], int]:
    cols = min(max(n, 1), _MAX_COLS)
    rows = -(-max(n, 1) // cols)
    fig = new_figure(width * cols + 0.4, height * rows + 0.6)
    axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes, cols


def _legend_below(ax: Any) -> None:
    """The panel's legend under its axes, where it can hide no trial (inside, matplotlib's
    "best" place still put it over a pruned trial at the panel's edge)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False,
              borderaxespad=0.0)


def _y_scale(ax: Any, objective: Objective, values: Sequence[float]) -> None:
    # a too-strong penalty can put a cross-entropy decades above the best: a log axis then
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
    ax.set_ylabel(objective.metric)
    ax.grid(alpha=0.3, which="both")


def pruned_label(pruned: Sequence[TrialRecord]) -> str:
    """The legend entry of a panel's pruned trials: how many, and at which epochs (from 1,
    the epochs each ran) their values are.

    >>> from regplug.tune.search import TrialRecord as R
    >>> pruned_label([R("l2", 1, "PRUNED", {}, 0.3, 4, 1.0),
    ...               R("l2", 2, "PRUNED", {}, 0.2, 12, 1.0)])
    'pruned (2): value at the epoch it stopped (4–12)'
    """
    epochs = sorted({r.epochs for r in pruned})
    which = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"
    return f"pruned ({len(pruned)}): value at the epoch it stopped ({which})"


def _scatter_pruned(ax: Any, xs: Sequence[float], pruned: Sequence[TrialRecord]) -> None:
    ax.scatter(xs, [r.value for r in pruned], s=24, marker="o", facecolors="none",
               edgecolors=_PRUNED, linewidths=0.9, label=pruned_label(pruned), zorder=2)


def _best(records: Sequence[TrialRecord], objective: Objective) -> TrialRecord | None:
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    if not complete:
        return None
    return complete[objective.best([float(r.value) for r in complete])]  # type: ignore[arg-type]


def draw_parameters(spaces: Sequence[StrategySpace],
                    records: Mapping[str, Sequence[TrialRecord]],
                    objective: Objective) -> Any:
    """One panel per strategy and parameter: the objective of each trial against the
    parameter's value (a log axis for a log range, the options in order for a choice)."""
    pairs = [(space, p) for space in spaces for p in space.parameters]
    fig, axes, _ = _panels(len(pairs), 3.4, 3.4)
    for ax, (space, parameter) in zip(axes, pairs):
        rows = records.get(space.strategy.name, [])
        labels: list[Any] = list(parameter.space.options) \
            if isinstance(parameter.space, Choice) else []

        def x_of(record: TrialRecord, labels: list[Any] = labels,
                 name: str = parameter.name) -> float:
            value = record.params[name]
            return float(labels.index(value)) if labels else float(value)

        drawn = [r for r in rows if r.value is not None and parameter.name in r.params
                 and r.state in ("COMPLETE", "PRUNED")]
        complete = [r for r in drawn if r.state == "COMPLETE"]
        pruned = [r for r in drawn if r.state == "PRUNED"]
        ax.scatter([x_of(r) for r in complete], [r.value for r in complete], s=22,
                   color=_COMPLETE, label=f"complete ({len(complete)})", zorder=3)
        if pruned:
            _scatter_pruned(ax, [x_of(r) for r in pruned], pruned)
        best = _best(rows, objective)
        if best is not None and parameter.name in best.params:
            ax.scatter([x_of(best)], [best.value], s=120, marker="*", color=_BEST,
                       label=f"best (trial {best.number})", zorder=4)
        space_ = parameter.space
        if isinstance(space_, Choice):
            ax.set_xticks(range(len(labels)), [str(v) for v in labels])
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif space_.log:  # the whole range searched, so that one sees where trials went
            ax.set_xscale("log")
            ax.set_xlim(space_.low / 1.5, space_.high * 1.5)
        else:
            pad = 0.04 * (space_.high - space_.low)
            ax.set_xlim(space_.low - pad, space_.high + pad)
        ax.set_xlabel(parameter.name + (" (log)" if getattr(parameter.space, "log", False)
                                        else ""))
        _y_scale(ax, objective, [float(r.value) for r in drawn])  # type: ignore[arg-type]
        ax.set_title(space.strategy.name, fontsize=9)
        _legend_below(ax)
    fig.suptitle(f"{objective.describe()} against each searched parameter")
    return fig


def draw_history(spaces: Sequence[StrategySpace], records: Mapping[str, Sequence[TrialRecord]],
                 objective: Objective) -> Any:
    """One panel per strategy: each trial's objective by trial number, and the best so far
    (a step line over the complete trials)."""
    fig, axes, _ = _panels(len(spaces), 3.6, 3.4)
    from matplotlib.ticker import MaxNLocator  # after _panels: it says what to install

    for ax, space in zip(axes, spaces):
        rows = sorted(records.get(space.strategy.name, []), key=lambda r: r.number)
        complete = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
        pruned = [r for r in rows if r.state == "PRUNED" and r.value is not None]
        ax.scatter([r.number for r in complete], [r.value for r in complete], s=18,
                   color=_COMPLETE, label="complete", zorder=3)
        if pruned:
            _scatter_pruned(ax, [float(r.number) for r in pruned], pruned)
        if complete:
            values = [float(r.value) for r in complete]  # type: ignore[arg-type]
            running = list((np.minimum if objective.minimize else np.maximum).accumulate(values))
            last = max(r.number for r in rows)
            ax.step([*(r.number for r in complete), last], [*running, running[-1]],
                    where="post", color=_BEST, label="best so far", zorder=4)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        _y_scale(ax, objective, [float(r.value) for r in [*complete, *pruned]]  # type: ignore[arg-type]
                 )
        ax.set_title(space.strategy.name, fontsize=9)
        _legend_below(ax)
    fig.suptitle(f"Optimization history: {objective.describe()} per trial")
    return fig


def plot_parameters(spaces: Sequence[StrategySpace], records: Mapping[str, Sequence[TrialRecord]],
                    objective: Objective, path: Path) -> Path:
    """:func:`draw_parameters`, saved as a PNG at ``path``."""
    return save_figure(draw_parameters(spaces, records, objective), path)


def plot_history(spaces: Sequence[StrategySpace], records: Mapping[str, Sequence[TrialRecord]],
                 objective: Objective, path: Path) -> Path:
    """:func:`draw_history`, saved as a PNG at ``path``."""
    return save_figure(draw_history(spaces, records, objective), path)


def parameters_caption(objective: Objective) -> str:
    return (f"The objective ({objective.describe()}, on the validation rows) of each trial "
            "against each searched parameter, one panel per strategy and parameter (a log "
            "axis for a log-scale range). Dots: complete trials, at the epoch whose weights "
            "they end with; hollow grey circles: pruned trials, at the value they reported at "
            "the epoch they stopped (counted from 1; the legend gives the range). A pruned "
            "trial's value is of an earlier epoch than a complete one's, so it may lie below "
            "the best without being better: a validation loss that rises late is lower "
            "early. Star: the best complete trial.")


def history_caption(objective: Objective) -> str:
    return (f"Optimization history: {objective.metric} of each trial by trial number, one "
            "panel per strategy; the red step line is the best complete trial so far; hollow "
            "grey circles are pruned trials at the value of the epoch they stopped at (not "
            "comparable with a complete trial's).")

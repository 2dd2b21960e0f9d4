"""The comparison's figures, as PNG files. matplotlib is imported only here, on first use.

Figures are drawn on matplotlib's Agg canvas directly (no ``pyplot``), so nothing changes
the backend or the global state of a program or notebook that calls this.

Docs: docs/compare.md
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..experiment.reporting import new_figure, save_figure

if TYPE_CHECKING:
    from ..experiment.strategies import Strategy
    from ..experiment.toy import RegressionToy
    from ..uncertainty import MCPrediction
    from .results import StrategyResult, StrategySummary

__all__ = ["plot_loss_curves", "plot_weight_histograms", "plot_uncertainty", "draw_loss_curves",
           "loss_curves_caption", "curve_band", "runs_per_epoch", "curve_limits",
           "plot_accuracy_curves", "draw_accuracy_curves", "accuracy_curves_caption",
           "CURVE_MODES", "WHOLE_EPOCHS", "plot_seed_spread", "draw_seed_spread",
           "seed_spread_caption",
           "GAP_FIGURE", "plot_gap_bars", "draw_gap_bars", "gap_caption",
           "draw_weight_histograms", "draw_uncertainty", "weight_strategies",
           "weight_histogram_caption", "uncertainty_by_region", "uncertainty_caption",
           "WEIGHT_HOOKS", "MAX_WEIGHT_PANELS"]

#: A strategy whose plugins implement one of these hooks penalizes or changes the weights
#: (a penalty in the loss; decoupled decay before the update; a proximal step or a norm
#: constraint after it), so its weights belong in the histograms.
WEIGHT_HOOKS = ("on_loss", "on_before_step", "on_step")
#: At most this many strategies per framework in the histograms (one panel each).
MAX_WEIGHT_PANELS = 8
#: Panel colours, one per strategy shown, in order (matplotlib's tab10 without grey).
_COLOURS = ("#9d8ec7", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22")


def plot_loss_curves(results: Sequence[StrategyResult], path: Path, *, title: str) -> Path:
    """:func:`draw_loss_curves`, saved as a PNG at ``path``."""
    return save_figure(draw_loss_curves(results, title=title), path)


def plot_accuracy_curves(results: Sequence[StrategyResult], path: Path, *, title: str) -> Path:
    """:func:`draw_accuracy_curves`, saved as a PNG at ``path``."""
    return save_figure(draw_accuracy_curves(results, title=title), path)


#: What the curves' "train" and "validation" are (captions and legends).
CURVE_MODES = ("“train” is the running mean over each epoch's batches, measured while "
               "training (dropout and batch norm in training mode, the weights still "
               "changing); “validation” is measured after the epoch in eval mode")


def _runs_note(framework: str, seeds: int, what: str) -> str:
    if seeds <= 1:
        return (f"{framework}: training (blue) and validation (orange) {what} per epoch, one "
                "panel per strategy; " + CURVE_MODES + ". A dotted line marks where a run "
                "stopped early, a dashed one the epoch whose weights early stopping restored")
    return (f"{framework}: training (blue) and validation (orange) {what} per epoch, one "
            f"panel per strategy; " + CURVE_MODES + f". The line is the mean over the {seeds} "
            "seeds, the band their minimum to maximum; where runs stopped early, an epoch's "
            "mean and band are of the runs that reached it: the line turns dashed from the "
            "first epoch that averages fewer runs, a dotted line marks the last epoch of each "
            "stopped run and the count of runs left is written beside it")


def loss_curves_caption(framework: str, *, seeds: int = 1) -> str:
    """The caption of one framework's loss curves (over ``seeds`` seeds).

    >>> loss_curves_caption("torch", seeds=3)[:72]
    'torch: training (blue) and validation (orange) cross-entropy per epoch, '
    """
    return (_runs_note(framework, seeds, "cross-entropy") + ". The data term alone "
            "(penalties left out), on a linear axis from 0: the validation minimum and any "
            "rise after it are to scale; the axis ends a little above the second half's values "
            "and the validation values from their minimum on, so the first epochs of a run over "
            f"{WHOLE_EPOCHS} epochs may run off its top.")


def accuracy_curves_caption(framework: str, *, seeds: int = 1) -> str:
    """The caption of one framework's accuracy curves (over ``seeds`` seeds).

    >>> accuracy_curves_caption("keras")[:66]
    'keras: training (blue) and validation (orange) accuracy per epoch,'
    """
    return (_runs_note(framework, seeds, "accuracy") + ". At the end, the table's numbers: "
            "acc_train (○, the final weights on the training rows in eval mode — why it can "
            "lie above the “train” curve) and acc_test (×); pct_diff = 1 − acc_test / "
            "acc_train. The axis starts a little below the second half's values and the "
            "validation values from their maximum on, so the first epochs of a run over "
            f"{WHOLE_EPOCHS} epochs may run off its bottom.")


def draw_loss_curves(results: Sequence[StrategyResult], *, title: str) -> Any:
    """One panel per strategy: training vs validation cross-entropy per epoch.

    The data term alone (penalties left out), so that panels compare, on a linear axis
    from 0 shared by the panels (:func:`curve_limits`): the gap between the curves is the
    overfitting the strategy leaves, and a validation curve that turns up shows as a U. A
    dotted line marks the last epoch of a run that a plugin stopped early, a dashed one,
    labelled ``restored: epoch k``, the epoch whose weights early stopping put back (the
    weights the table's accuracies are of). Several runs of a strategy (one per seed) are
    drawn as their mean with a band from the minimum to the maximum, dashed where it
    averages fewer runs. Returns the matplotlib figure.
    """
    return _draw_curves(results, _LOSS_CURVES, title=title, ylabel="cross-entropy")


def draw_accuracy_curves(results: Sequence[StrategyResult], *, title: str) -> Any:
    """One panel per strategy: training vs validation accuracy per epoch, as
    :func:`draw_loss_curves` draws the cross-entropy, and the table's ``acc_train`` (eval
    mode, final weights) and ``acc_test`` as markers at the epoch whose weights they are
    of. Returns the matplotlib figure."""
    return _draw_curves(results, _ACCURACY_CURVES, title=title, ylabel="accuracy")


_TRAIN, _VALIDATION = "#1f77b4", "#ff7f0e"
_LOSS_CURVES = (("cross_entropy", _TRAIN, "train (running mean, training mode)"),
                ("val_cross_entropy", _VALIDATION, "validation (eval mode)"))
_ACCURACY_CURVES = (("accuracy", _TRAIN, "train (running mean, training mode)"),
                    ("val_accuracy", _VALIDATION, "validation (eval mode)"))


def _draw_curves(results: Sequence[StrategyResult], curves: tuple[tuple[str, str, str], ...],
                 *, title: str, ylabel: str) -> Any:
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[StrategyResult]] = {}
    for result in results:
        groups.setdefault(result.strategy, []).append(result)
    n = len(groups)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = new_figure(3.0 * cols, 2.4 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    accuracy = curves is _ACCURACY_CURVES
    for ax, runs in zip(axes, groups.values()):
        if len(runs) == 1:
            _draw_one_run(ax, runs[0], curves)
        else:
            _draw_seed_band(ax, runs, curves)
        if accuracy:
            _draw_table_marks(ax, runs)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    for ax in axes[n:]:
        ax.set_visible(False)
    low, high = curve_limits([r.history.get(curves[0][0], []) for r in results],
                             [r.history.get(curves[1][0], []) for r in results],
                             accuracy=accuracy)
    axes[0].set_ylim(low, high)
    epochs = max((len(r.history.get(curves[0][0], [])) for r in results), default=1)
    axes[0].set_xlim(0.7, max(epochs, 1) + 0.3)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("epoch")
    for ax in axes[::cols]:
        ax.set_ylabel(ylabel)
    # one legend for the figure, outside the panels: it covers no curve
    entries: dict[str, Any] = {}
    for ax in axes[:n]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith(("stopped", "restored")):
                entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center",
               ncol=max(1, min(len(entries), int(3.0 * cols // 3.6))), fontsize=8,
               frameon=False)
    fig.suptitle(title)
    return fig


#: A run of at most this many epochs has its curves shown whole (:func:`curve_limits`).
WHOLE_EPOCHS = 10


def curve_limits(train: Sequence[Sequence[float]], validation: Sequence[Sequence[float]], *,
                 accuracy: bool) -> tuple[float, float]:
    """The y range of a curves figure, shared by its panels, on a linear axis.

    Cross-entropy: from 0 up to a little above every value of the second half of the epochs
    and every validation value from its minimum on, so that the minimum and the rise after
    it fill the panel to scale; the first epochs' high values, which would squash them,
    may run off the top. Accuracy, the same way up: from a little below those values (the
    validation's from its maximum on) up to 1. A run of at most :data:`WHOLE_EPOCHS`
    epochs (still learning: no U to show) is shown whole.

    >>> train = [2.0, 0.9, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.1, 0.1]
    >>> curve_limits([train], [[1.9, 0.8, 0.5, 0.4, 0.35, 0.3, 0.32, 0.35, 0.4, 0.45, 0.5, 0.6]],
    ...              accuracy=False)
    (0.0, 0.66)
    >>> curve_limits([train[:5]], [[1.9, 0.8, 0.5, 0.4, 0.35]], accuracy=False)
    (0.0, 2.2)
    """
    curves = [*train, *validation]
    length = max((len(c) for c in curves), default=0)
    start = 0 if length <= WHOLE_EPOCHS else length // 2
    best = np.argmax if accuracy else np.argmin
    shown = [v for c in curves for v in c[start:]]
    shown += [v for c in validation for v in c[int(best(c)):]]
    values = np.array(shown, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return (0.0, 1.02) if accuracy else (0.0, 1.0)
    if not accuracy:
        return 0.0, float(values.max()) * 1.1 or 1.0
    low = float(values.min())
    span = max(1.0 - low, 0.05)
    return max(0.0, low - 0.1 * span), 1.0 + 0.1 * span


def _draw_one_run(ax: Any, result: StrategyResult,
                  curves: tuple[tuple[str, str, str], ...]) -> None:
    length = 0
    for key, colour, label in curves:
        values = result.history.get(key, [])
        ax.plot(np.arange(1, len(values) + 1), values, color=colour, label=label)
        length = max(length, len(values))
    if result.stop_reason:
        ax.axvline(length, color="grey", linestyle=":", linewidth=1,
                   label=f"stopped: epoch {length}")
    restored = result.restored_epoch
    if restored is not None:
        label = f"restored: epoch {restored + 1}"
        ax.axvline(restored + 1, color="#2ca02c", linestyle="--", linewidth=1.2,
                   label=label)
        right = restored + 1 > 0.6 * length  # the text on the side with room
        ax.text(restored + 1, 0.97, f"{label} " if right else f" {label}",
                transform=ax.get_xaxis_transform(), va="top", ha="right" if right else "left",
                fontsize=7, color="#2ca02c", clip_on=True)
    ax.set_title(f"{result.strategy}\nacc test {result.acc_test:.3f}", fontsize=9)


def curve_band(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Mean, minimum and maximum per epoch of curves that may end at different epochs
    (early stopping): an epoch's values are of the curves that reached it.

    >>> mean, low, high = curve_band([[1.0, 2.0, 3.0], [3.0, 4.0]])
    >>> mean.tolist(), low.tolist(), high.tolist()
    ([2.0, 3.0, 3.0], [1.0, 2.0, 3.0], [3.0, 4.0, 3.0])
    """
    length = max((len(c) for c in curves), default=0)
    table = np.full((len(curves), length), np.nan)
    for row, curve in zip(table, curves):
        row[:len(curve)] = curve
    # An epoch where every run's value is NaN (training diverged) stays NaN, unplotted,
    # without NumPy's "Mean of empty slice"/"All-NaN slice" warnings on the user's terminal.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def runs_per_epoch(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """How many of ``curves`` reached each epoch: what each point of :func:`curve_band`
    averages.

    >>> runs_per_epoch([[1.0, 2.0, 3.0], [3.0, 4.0], [5.0]]).tolist()
    [3, 2, 1]
    """
    length = max((len(c) for c in curves), default=0)
    return np.array([sum(len(c) > epoch for c in curves) for epoch in range(length)])


def _draw_seed_band(ax: Any, runs: Sequence[StrategyResult],
                    curves: tuple[tuple[str, str, str], ...]) -> None:
    counts = np.zeros(0, dtype=int)
    for key, colour, label in curves:
        series = [r.history.get(key, []) for r in runs]
        if not any(series):
            continue
        mean, low, high = curve_band(series)
        epochs = np.arange(1, len(mean) + 1)
        counts = runs_per_epoch(series)
        ax.fill_between(epochs, low, high, color=colour, alpha=0.25, linewidth=0)
        full = int(np.sum(counts == len(runs)))  # the epochs every run reached
        ax.plot(epochs[:full], mean[:full], color=colour, label=f"{label}: mean, min–max")
        if full < len(mean):  # dashed on: the mean of fewer runs
            ax.plot(epochs[max(full - 1, 0):], mean[max(full - 1, 0):], color=colour,
                    linestyle="--", label="mean of fewer runs (some stopped early)")
    stops = sorted(r.epochs for r in runs if r.stop_reason)
    for i, epoch in enumerate(stops):
        ax.axvline(epoch, color="grey", linestyle=":", linewidth=0.8,
                   label=f"stopped: {len(stops)} of {len(runs)} runs" if i == 0 else None)
    # the count of runs averaged, written where it drops
    for drop in np.flatnonzero(np.diff(counts) < 0) + 1:  # index of the first fewer
        ax.text(drop + 0.5, 0.03, f"{counts[drop]} of {len(runs)} runs", fontsize=6.5,
                color="#444444", transform=ax.get_xaxis_transform(), rotation=90,
                va="bottom", ha="center", clip_on=True, zorder=6,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                      "edgecolor": "none", "alpha": 0.8})
    acc = np.array([r.acc_test for r in runs])
    ax.set_title(f"{runs[0].strategy}\nacc test {acc.mean():.3f} ± {acc.std(ddof=1):.3f}",
                 fontsize=9)


def _draw_table_marks(ax: Any, runs: Sequence[StrategyResult]) -> None:
    """The table's acc_train and acc_test (means over the runs) at the epoch whose weights
    they are of: the restored one, else the last (the longest run's, for several)."""
    if len(runs) == 1 and runs[0].restored_epoch is not None:
        x = float(runs[0].restored_epoch + 1)
    else:
        x = float(max(r.epochs for r in runs))
    ax.plot([x], [np.mean([r.acc_train for r in runs])], marker="o", markersize=6,
            markerfacecolor="none", markeredgecolor=_TRAIN, linestyle="none",
            label="acc_train of the table (eval mode)", zorder=5)
    ax.plot([x], [np.mean([r.acc_test for r in runs])], marker="x", markersize=6,
            color="black", linestyle="none", label="acc_test of the table", zorder=5)


def seed_spread_caption(summaries: Sequence[StrategySummary]) -> str:
    """The caption of :func:`draw_seed_spread` for these summaries."""
    from .results import baseline_of, baseline_statement

    seeds = max((len(s.seeds) for s in summaries), default=0)
    baseline = baseline_of(summaries)
    base = any(s.strategy == baseline for s in summaries)
    return (f"Test accuracy (top) and generalization gap pct_diff (bottom) of every strategy, "
            f"one column per framework: a dot per seed ({seeds} seeds; the runs of one seed "
            f"are joined by a thin line), the mean ± std as a black bar on the strategy's "
            f"tick; thin grey lines separate the strategies"
            + (f"; the mean of {baseline!r} is the dashed line" if base else "")
            + ". " + baseline_statement(summaries))


def plot_seed_spread(summaries: Sequence[StrategySummary],
                     results: Sequence[StrategyResult], path: Path) -> Path:
    """:func:`draw_seed_spread`, saved as a PNG at ``path``."""
    return save_figure(draw_seed_spread(summaries, results), path)


def _dot_offsets(count: int, width: float = 0.3) -> np.ndarray:
    """Where ``count`` dots sit around their strategy's tick: spread over ``width``,
    centred on it, so each dot is nearer its own tick than any other.

    >>> _dot_offsets(3).tolist(), _dot_offsets(1).tolist()
    ([-0.15, 0.0, 0.15], [0.0])
    """
    return np.linspace(-width / 2, width / 2, count) if count > 1 else np.zeros(1)


def _separate(ax: Any, count: int) -> None:
    """Thin lines between the strategies' columns, so a dot's strategy is plain."""
    for edge in np.arange(count - 1) + 0.5:
        ax.axvline(edge, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_xlim(-0.5, count - 0.5)


def draw_seed_spread(summaries: Sequence[StrategySummary],
                     results: Sequence[StrategyResult]) -> Any:
    """acc_test and pct_diff of every run, per strategy: what the seeds change.

    A row per metric, a column per framework; in each panel a dot per seed around its
    strategy's tick (the runs of one seed joined by a thin line, so the pairing the test
    uses is visible), the mean ± std as a black bar on the tick, the baseline's mean as a
    dashed line, thin lines between the strategies. Strategies that differ from the baseline
    beyond seed noise get their verdict above the bar. The legend sits under the panels.
    Returns the matplotlib figure.
    """
    from .results import TESTED_METRICS, baseline_of

    baseline = baseline_of(summaries)
    frameworks = list(dict.fromkeys(s.framework for s in summaries))
    names = list(dict.fromkeys(s.strategy for s in summaries))
    seeds = sorted({r.seed for r in results if r.seed is not None})
    colours = {seed: _COLOURS[i % len(_COLOURS)] for i, seed in enumerate(seeds)}
    fig = new_figure(max(6.0, 0.75 * len(names) + 1.5) * len(frameworks), 7.4)
    grid = fig.subplots(len(TESTED_METRICS), len(frameworks), sharex=True, squeeze=False)
    x = np.arange(len(names), dtype=np.float64)
    offsets = _dot_offsets(len(seeds))
    for column, framework in enumerate(frameworks):
        rows = {s.strategy: s for s in summaries if s.framework == framework}
        runs = [r for r in results if r.framework == framework]
        for row, metric in enumerate(TESTED_METRICS):
            ax = grid[row][column]
            _separate(ax, len(names))
            for offset, seed in zip(offsets, seeds):
                values = {r.strategy: float(getattr(r, metric)) for r in runs if r.seed == seed}
                ys = [values.get(name, np.nan) for name in names]
                ax.plot(x + offset, ys, color=colours[seed], linewidth=0.5, alpha=0.45)
                ax.scatter(x + offset, ys, s=16, color=colours[seed], zorder=4,
                           edgecolors="white", linewidths=0.4,
                           label=f"seed {seed}" if len(seeds) <= 8 else None)
            for i, name in enumerate(names):
                summary = rows.get(name)
                if summary is None:
                    continue
                spread = getattr(summary, metric)
                # the bar behind the dots, as wide as their spread: a dot on it stays visible
                ax.errorbar(x[i], spread.mean, yerr=spread.std, fmt="none", ecolor="black",
                            capsize=4, linewidth=1.2, zorder=3)
                ax.hlines(spread.mean, x[i] - 0.22, x[i] + 0.22, colors="black",
                          linewidth=2.0, zorder=3,
                          label="mean ± std" if i == 0 else None)
                test = summary.tests.get(metric)
                if test is not None and test.differs:
                    ax.annotate(test.verdict(), (x[i], spread.mean + spread.std),
                                textcoords="offset points", xytext=(0, 4), ha="center",
                                fontsize=7, color="#d62728")
            base = rows.get(baseline)
            if base is not None:
                mean = getattr(base, metric).mean
                ax.axhline(mean, color="grey", linestyle="--", linewidth=1,
                           label=f"{baseline} mean")
            ax.set_title(f"{framework}: {metric}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
            if column == 0:
                ax.set_ylabel(metric)
        grid[-1][column].set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    handles, labels = grid[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6),
               fontsize=8, frameon=False)
    fig.suptitle(f"Every seed's run ({len(seeds)} seeds) and mean ± std", fontsize=11)
    return fig


GAP_FIGURE = "pct_diff.png"


def gap_caption(results: Sequence[StrategyResult],
                summaries: Sequence[StrategySummary] = ()) -> str:
    """The caption of :func:`draw_gap_bars` for these results (and seeds' summaries)."""
    from .results import baseline_of

    baseline = baseline_of(summaries)
    seeds = len({r.seed for r in results})
    text = ("The generalization gap pct_diff = 1 − acc_test / acc_train per strategy (acc_train "
            "of the final weights in eval mode), one panel per framework; ")
    if seeds > 1 and summaries:
        text += (f"the bar is the mean over the {seeds} seeds, a dot each seed's run, the "
                 "whiskers ± 1 std (ddof=1); a verdict above a bar where the paired test "
                 f"against {baseline!r} finds a difference beyond seed noise")
    else:
        text += ("one run per strategy, so no seed spread: a difference between two bars may "
                 "be seed noise (--seeds 3 or more measures it)")
    if any(r.strategy == baseline for r in results):
        text += f"; the dashed line is {baseline!r}'s"
    return text + ". Lower: less overfitting (a negative gap: better on the test rows)."


def plot_gap_bars(results: Sequence[StrategyResult], path: Path, *,
                  summaries: Sequence[StrategySummary] = ()) -> Path:
    """:func:`draw_gap_bars`, saved as a PNG at ``path``."""
    return save_figure(draw_gap_bars(results, summaries=summaries), path)


def draw_gap_bars(results: Sequence[StrategyResult], *,
                  summaries: Sequence[StrategySummary] = ()) -> Any:
    """pct_diff per strategy as bars, one panel per framework: the mean over the seeds with
    each seed's value as a dot and ± 1 std whiskers (several seeds); with one seed, the
    bars alone. The baseline's bar is grey and its value a dashed line across the panel;
    the paired test's verdict (from ``summaries``) above a bar that differs beyond noise.
    Returns the matplotlib figure."""
    from .results import baseline_of

    baseline = baseline_of(summaries)
    frameworks = list(dict.fromkeys(r.framework for r in results))
    names = list(dict.fromkeys(r.strategy for r in results))
    tests = {(s.framework, s.strategy): s.tests.get("pct_diff") for s in summaries}
    fig = new_figure(max(5.0, 0.62 * len(names) + 1.5) * len(frameworks), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(frameworks), sharey=True, squeeze=False)).ravel()
    x = np.arange(len(names), dtype=np.float64)
    for ax, framework in zip(axes, frameworks):
        values = {name: [r.pct_diff for r in results
                         if r.framework == framework and r.strategy == name] for name in names}
        means = np.array([np.mean(v) if v else np.nan for v in values.values()])
        colours = ["#aaaaaa" if name == baseline else "#4c72b0" for name in names]
        ax.bar(x, means, width=0.62, color=colours, alpha=0.75, zorder=2,
               label="mean over the seeds" if any(len(v) > 1 for v in values.values())
               else "pct_diff")
        several = False
        for i, (name, vs) in enumerate(values.items()):
            if len(vs) < 2:
                continue
            several = True
            ax.errorbar(x[i], means[i], yerr=float(np.std(vs, ddof=1)), fmt="none",
                        ecolor="black", capsize=4, linewidth=1.2, zorder=3,
                        label="± 1 std" if i == 0 else None)
            ax.scatter(x[i] + _dot_offsets(len(vs), 0.36), vs, s=14, color="black",
                       zorder=4, edgecolors="white", linewidths=0.4,
                       label="one seed's run" if i == 0 else None)
            test = tests.get((framework, name))
            if test is not None and test.differs:
                top = max(max(vs), means[i] + float(np.std(vs, ddof=1)))
                ax.annotate(test.verdict(), (x[i], top), textcoords="offset points",
                            xytext=(0, 3), ha="center", fontsize=7, color="#d62728")
        if not several:  # one run each: its value on the bar
            for i, mean in enumerate(means):
                if np.isfinite(mean):
                    ax.annotate(f"{mean:.3f}", (x[i], max(mean, 0.0)),
                                textcoords="offset points", xytext=(0, 2), ha="center",
                                fontsize=7)
        if values.get(baseline):
            ax.axhline(float(np.mean(values[baseline])), color="grey", linestyle="--",
                       linewidth=1, zorder=1, label=f"{baseline}")
        ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
        _separate(ax, len(names))
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(framework, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("pct_diff")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    fig.suptitle("Generalization gap pct_diff = 1 − acc_test / acc_train per strategy "
                 "(lower: less overfitting)", fontsize=11)
    return fig


def weight_strategies(strategies: Sequence[Strategy], *, limit: int = MAX_WEIGHT_PANELS
                      ) -> tuple[list[str], list[str]]:
    """The strategies whose weights the histograms show, and those left out for room.

    Shown: the first strategy without plugins or model options (the unregularized
    reference, ``none``), then every strategy with a plugin implementing one of
    :data:`WEIGHT_HOOKS` — built-in, from ``--config`` or third-party alike — in the order
    given, at most ``limit`` in all.

    >>> from regplug.experiment import BUILTIN_STRATEGIES as B
    >>> weight_strategies([B[n] for n in ("none", "l2", "dropout", "early_stopping", "max_norm")])
    (['none', 'l2', 'max_norm'], [])
    """
    from ..hookspecs import implemented_hooks

    chosen: list[str] = []
    reference = False
    for strategy in strategies:
        plugins = strategy.build_plugins()
        if not plugins and strategy.model_options(plugins) == (None, False):
            if not reference:
                chosen.append(strategy.name)
            reference = True
        elif any(h in WEIGHT_HOOKS for p in plugins for h in implemented_hooks(p)):
            chosen.append(strategy.name)
    return chosen[:limit], chosen[limit:]


def weight_histogram_caption(shown: Sequence[str], left_out: Sequence[str]) -> str:
    """The histograms' caption: which strategies they show, and which they leave out.

    >>> weight_histogram_caption(["none", "l2"], ["l1"])
    'Weights after training, one panel per strategy: none, l2 (the strategies that penalize or change the weights, and the unregularized reference; left out for room: l1). Log counts; the black bar at 0 counts the weights that are exactly 0; the grey outline is the first strategy shown, for reference.'
    """  # noqa: E501
    left = f"; left out for room: {', '.join(left_out)}" if left_out else ""
    return (f"Weights after training, one panel per strategy: {', '.join(shown)} (the "
            f"strategies that penalize or change the weights, and the unregularized "
            f"reference{left}). Log counts; the black bar at 0 counts the weights that are "
            f"exactly 0; the grey outline is the first strategy shown, for reference.")


def plot_weight_histograms(by_framework: Mapping[str, Sequence[StrategyResult]], path: Path, *,
                           shown: Sequence[str]) -> Path:
    """:func:`draw_weight_histograms`, saved as a PNG at ``path``."""
    return save_figure(draw_weight_histograms(by_framework, shown=shown), path)


def draw_weight_histograms(by_framework: Mapping[str, Sequence[StrategyResult]], *,
                           shown: Sequence[str]) -> Any:
    """The weights of each strategy in ``shown``: small multiples, a row per framework.

    The lecture's figure of regularization's effect on weights: without regularization they
    spread out; L2 pulls them toward zero; L1 piles them up near zero; proximal L1 makes
    many of them exactly zero. Each panel holds one strategy (a filled histogram of its
    non-zero weights in its own colour, and a black bar at 0 with the count of exact zeros)
    over the outline of the first strategy shown (the reference), on shared log-scaled axes.
    Returns the matplotlib figure.
    """
    panels = {fw: [r for name in shown for r in rs if r.strategy == name]
              for fw, rs in by_framework.items()}
    panels = {fw: rs for fw, rs in panels.items() if rs}
    if not panels:
        raise ValueError(f"none of the strategies {', '.join(shown) or '(none)'} ran: "
                         "nothing to plot")
    cols = max(len(rs) for rs in panels.values())
    fig = new_figure(2.6 * cols + 0.4, 2.5 * len(panels) + 0.4)
    grid = fig.subplots(len(panels), cols, sharex=True, sharey=True, squeeze=False)
    colours = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(shown)}
    # Only finite weights have a place on the axis: a run that diverged has NaN or inf
    # weights, which its panel counts in its legend instead of drawing.
    # Each result's weights gathered and filtered once: (all of them, the finite ones).
    weights = {id(r): (every := r.weight_values(), _finite(every))
               for rs in panels.values() for r in rs}
    values = [finite for _, finite in weights.values()]
    span = max((float(np.abs(v).max()) for v in values if v.size), default=0.0) or 1.0
    bins = np.linspace(-span, span, 82)
    width = bins[1] - bins[0]
    for row, (framework, results) in zip(grid, panels.items()):
        reference = weights[id(results[0])][1]
        for ax, result in zip(row, results):
            every, w = weights[id(result)]
            nonzero = w[w != 0]
            zeros = int(w.size - nonzero.size)
            if w.size < every.size:
                ax.plot([], [], " ", label=f"not finite (diverged): {every.size - w.size}")
            if result is not results[0]:
                ax.hist(reference[reference != 0], bins=bins, histtype="step",
                        color="grey", linewidth=1.0, linestyle="--",
                        label=f"{results[0].strategy} (reference)")
            ax.hist(nonzero, bins=bins, histtype="stepfilled", alpha=0.55,
                    color=colours[result.strategy], edgecolor=colours[result.strategy],
                    linewidth=1.2, label=result.strategy)
            if zeros:
                ax.bar(0.0, zeros, width=width, color="black",
                       label=f"exactly 0: {zeros} ({result.zero_fraction:.0%})")
            ax.set_yscale("log")
            ax.set_title(f"{framework}: {result.strategy}", fontsize=9)
            ax.legend(fontsize=7, loc="upper center", borderaxespad=0.3)
            ax.grid(alpha=0.3)
        for ax in row[len(results):]:
            ax.set_visible(False)
        row[0].set_ylabel("count (log scale)")
    # room above the tallest bar for the legends (3 lines at most): on the shared log axis,
    # 1.5 decades over the data's, so no legend covers a bar
    tallest = max([1, *(int(np.histogram(w[w != 0], bins=bins)[0].max(initial=0))
                        for w in values), *(int(np.sum(w == 0)) for w in values)])
    grid[0][0].set_ylim(0.5, tallest * 10 ** 1.5)
    for ax in grid[-1]:
        ax.set_xlabel("weight value")
    fig.suptitle("Weights after training")
    return fig


def _finite(values: np.ndarray) -> np.ndarray:
    """The finite entries of ``values`` (all of them, without a copy, when all are)."""
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def uncertainty_by_region(toy: RegressionToy, prediction: MCPrediction) -> dict[str, float]:
    """The mean standard deviation of the predictions where the training data lie
    (``data``), in the gap between their two intervals (``gap``) and beyond them
    (``beyond``): what the uncertainty figure's caption states."""
    from ..experiment.toy import TOY_INTERVALS

    x, std = toy.x_grid.ravel(), np.asarray(prediction.std, dtype=np.float64).ravel()
    (a, b), (c, d) = TOY_INTERVALS
    regions = {"data": ((x >= a) & (x <= b)) | ((x >= c) & (x <= d)),
               "gap": (x > b) & (x < c), "beyond": (x < a) | (x > d)}
    return {name: float(std[mask].mean()) for name, mask in regions.items()}


def _compare(value: float, reference: float) -> str:
    ratio = value / reference if reference > 0 else math.inf
    if ratio > 1.1:
        return f"{ratio:.1f}× as wide as"
    if ratio < 0.9:
        return f"narrower than ({ratio:.2f}×)"
    return "about as wide as"


def uncertainty_caption(spread: Mapping[str, float], *, samples: int) -> str:
    """The uncertainty figure's caption, from the measured ``spread``
    (:func:`uncertainty_by_region`), so that it says what the figure shows.

    >>> print(uncertainty_caption({"data": 0.14, "gap": 0.12, "beyond": 0.18}, samples=200))
    A network trained with dropout, predicting with dropout on (200 samples). Mean standard deviation of its predictions: 0.140 where the training data lie, 0.120 in the gap between them (shaded), 0.180 beyond them. Beyond the data the band is 1.3× as wide as at the data; in the gap it is narrower than (0.86×) at the data: MC dropout does not mark every region without data as uncertain.
    """  # noqa: E501
    data, gap, beyond = spread["data"], spread["gap"], spread["beyond"]
    text = (f"A network trained with dropout, predicting with dropout on ({samples} samples). "
            f"Mean standard deviation of its predictions: {data:.3f} where the training data "
            f"lie, {gap:.3f} in the gap between them (shaded), {beyond:.3f} beyond them. "
            f"Beyond the data the band is {_compare(beyond, data)} at the data; in the gap "
            f"it is {_compare(gap, data)} at the data")
    if gap <= 1.1 * data or beyond <= 1.1 * data:
        return text + ": MC dropout does not mark every region without data as uncertain."
    return text + "."


def plot_uncertainty(toy: RegressionToy, prediction: MCPrediction, path: Path, *,
                     title: str) -> Path:
    """:func:`draw_uncertainty`, saved as a PNG at ``path``."""
    return save_figure(draw_uncertainty(toy, prediction, title=title), path)


def draw_uncertainty(toy: RegressionToy, prediction: MCPrediction, *, title: str) -> Any:
    """MC-dropout prediction on the 1-D toy: the data, the mean, and mean ± 1 and 2 std
    (top), and the standard deviation itself with its mean per region (bottom); the gap
    between the training intervals is shaded in both. Returns the matplotlib figure."""
    from ..experiment.toy import TOY_INTERVALS

    fig = new_figure(7.0, 5.6)
    ax, low = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    x = toy.x_grid.ravel()
    mean, std = prediction.mean.ravel(), prediction.std.ravel()
    (a, b), (c, d) = TOY_INTERVALS
    for axis in (ax, low):
        axis.axvspan(b, c, color="#bbbbbb", alpha=0.3, linewidth=0,
                     label="gap in the training data" if axis is ax else None)
        axis.grid(alpha=0.3)
    ax.fill_between(x, mean - 2 * std, mean + 2 * std, color="#9467bd", alpha=0.18,
                    linewidth=0, label="mean ± 2 std")
    ax.fill_between(x, mean - std, mean + std, color="#9467bd", alpha=0.3, linewidth=0,
                    label="mean ± 1 std")
    ax.plot(x, mean, color="#d62728", linewidth=1.8, label=f"mean of {prediction.T} samples")
    ax.scatter(toy.x_train.ravel(), toy.y_train.ravel(), s=10, color="black", zorder=3,
               label="training data")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    low.plot(x, std, color="#9467bd", linewidth=1.5, label="std")
    spread = uncertainty_by_region(toy, prediction)
    x0, x1 = float(x.min()), float(x.max())
    for name, spans in (("data", ((a, b), (c, d))), ("gap", ((b, c),)),
                        ("beyond", ((x0, a), (d, x1)))):
        for lo, hi in spans:
            low.hlines(spread[name], lo, hi, colors="black", linewidth=1.2, linestyles="--")
        # the label above the curve, in the panel's top strip (room made below), so the
        # std line never runs through it
        low.text(float(np.mean(spans[0])), 0.96, f"{name} {spread[name]:.3f}",
                 transform=low.get_xaxis_transform(), ha="center", va="top", fontsize=7,
                 bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                       "edgecolor": "none", "alpha": 0.85})
    low.set_xlabel("x")
    low.set_ylabel("std (dashed: region mean)")
    low.set_ylim(0, float(np.nanmax(std)) * 1.45 if std.size else 1.0)
    return fig

"""The comparison's figures, as PNG files. matplotlib is imported only here, on first use.

Figures are drawn on matplotlib's Agg canvas directly (no ``pyplot``), so nothing changes
the backend or the global state of a program or notebook that calls this.

Docs: docs/compare.md
"""

from __future__ import annotations

import math
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
           "loss_curves_caption", "curve_band", "plot_seed_spread", "draw_seed_spread",
           "seed_spread_caption",
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


def loss_curves_caption(framework: str, *, seeds: int = 1) -> str:
    """The caption of one framework's loss curves (over ``seeds`` seeds).

    >>> loss_curves_caption("torch", seeds=3)[:72]
    'torch: training (blue) and validation (orange) cross-entropy per epoch, '
    """
    text = (f"{framework}: training (blue) and validation (orange) cross-entropy per epoch, "
            "one panel per strategy; ")
    if seeds <= 1:
        return text + ("a dotted line marks where a run stopped early, a dashed one the epoch "
                       "whose weights early stopping restored")
    return text + (f"the line is the mean over the {seeds} seeds, the band their minimum to "
                   "maximum; where runs stopped early, an epoch's mean and band are of the "
                   "runs that reached it, and a dotted line marks the last epoch of each "
                   "stopped run")


def draw_loss_curves(results: Sequence[StrategyResult], *, title: str) -> Any:
    """One panel per strategy: training vs validation cross-entropy per epoch.

    The data term alone (penalties left out), so that panels compare, on a log scale; the
    gap between the curves is the overfitting the strategy leaves. A dotted line marks the
    last epoch of a run that a plugin stopped early, a dashed one, labelled ``restored:
    epoch k``, the epoch whose weights early stopping put back (the weights the table's
    accuracies are of). Several runs of a strategy (one per seed) are drawn as their mean
    with a band from the minimum to the maximum. Returns the matplotlib figure.
    """
    groups: dict[str, list[StrategyResult]] = {}
    for result in results:
        groups.setdefault(result.strategy, []).append(result)
    n = len(groups)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = new_figure(3.0 * cols, 2.4 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, runs in zip(axes, groups.values()):
        if len(runs) == 1:
            _draw_one_run(ax, runs[0])
        else:
            _draw_seed_band(ax, runs)
        ax.set_yscale("log")  # the gap is a ratio; late epochs stay readable
        ax.grid(alpha=0.3, which="both")
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("epoch")
    for ax in axes[::cols]:
        ax.set_ylabel("cross-entropy")
    fig.suptitle(title)
    return fig


def _draw_one_run(ax: Any, result: StrategyResult) -> None:
    train = result.history.get("cross_entropy", [])
    val = result.history.get("val_cross_entropy", [])
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, color="#1f77b4", label="train")
    ax.plot(epochs[:len(val)], val, color="#ff7f0e", label="validation")
    if result.stop_reason:
        ax.axvline(len(train), color="grey", linestyle=":", linewidth=1,
                   label=f"stopped: epoch {len(train)}")
    restored = result.restored_epoch
    if restored is not None:
        label = f"restored: epoch {restored + 1}"
        ax.axvline(restored + 1, color="#2ca02c", linestyle="--", linewidth=1.2,
                   label=label)
        ax.text(restored + 1, 0.97, f" {label}", transform=ax.get_xaxis_transform(),
                va="top", ha="left", fontsize=7, color="#2ca02c")
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
    with np.errstate(all="ignore"):
        return np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def _draw_seed_band(ax: Any, runs: Sequence[StrategyResult]) -> None:
    for key, colour, label in (("cross_entropy", "#1f77b4", "train"),
                               ("val_cross_entropy", "#ff7f0e", "validation")):
        curves = [r.history.get(key, []) for r in runs]
        if not any(curves):
            continue
        mean, low, high = curve_band(curves)
        epochs = np.arange(1, len(mean) + 1)
        ax.fill_between(epochs, low, high, color=colour, alpha=0.25, linewidth=0)
        ax.plot(epochs, mean, color=colour, label=f"{label} (mean, min–max)")
    stops = sorted(r.epochs for r in runs if r.stop_reason)
    for i, epoch in enumerate(stops):
        ax.axvline(epoch, color="grey", linestyle=":", linewidth=0.8,
                   label=f"stopped: {len(stops)} of {len(runs)} runs" if i == 0 else None)
    acc = np.array([r.acc_test for r in runs])
    ax.set_title(f"{runs[0].strategy}\nacc test {acc.mean():.3f} ± {acc.std(ddof=1):.3f}",
                 fontsize=9)


def seed_spread_caption(summaries: Sequence[StrategySummary]) -> str:
    """The caption of :func:`draw_seed_spread` for these summaries."""
    from .results import BASELINE, baseline_statement

    seeds = max((len(s.seeds) for s in summaries), default=0)
    base = any(s.strategy == BASELINE for s in summaries)
    return (f"Test accuracy (top) and generalization gap pct_diff (bottom) of every strategy, "
            f"one column per framework: a dot per seed ({seeds} seeds; the runs of one seed "
            f"are joined by a thin line), the mean ± std as a black bar"
            + (f", the mean of {BASELINE!r} as a dashed line" if base else "")
            + ". " + baseline_statement(summaries))


def plot_seed_spread(summaries: Sequence[StrategySummary],
                     results: Sequence[StrategyResult], path: Path) -> Path:
    """:func:`draw_seed_spread`, saved as a PNG at ``path``."""
    return save_figure(draw_seed_spread(summaries, results), path)


def draw_seed_spread(summaries: Sequence[StrategySummary],
                     results: Sequence[StrategyResult]) -> Any:
    """acc_test and pct_diff of every run, per strategy: what the seeds change.

    A row per metric, a column per framework; in each panel a dot per seed at its
    strategy (the runs of one seed joined by a thin line, so the pairing the test uses is
    visible), the mean ± std as a black bar, the baseline's mean as a dashed line. Strategies
    that differ from the baseline beyond seed noise get their verdict above the bar.
    Returns the matplotlib figure.
    """
    from .results import BASELINE, TESTED_METRICS

    frameworks = list(dict.fromkeys(s.framework for s in summaries))
    names = list(dict.fromkeys(s.strategy for s in summaries))
    seeds = sorted({r.seed for r in results if r.seed is not None})
    colours = {seed: _COLOURS[i % len(_COLOURS)] for i, seed in enumerate(seeds)}
    fig = new_figure(max(6.0, 0.75 * len(names) + 1.5) * len(frameworks), 7.0)
    grid = fig.subplots(len(TESTED_METRICS), len(frameworks), sharex=True, squeeze=False)
    x = np.arange(len(names), dtype=np.float64)
    # the seeds' dots left of the strategy's tick, its mean ± std bar right of them: a dot
    # near the mean stays visible
    offsets = (np.linspace(-0.3, 0.1, len(seeds)) if len(seeds) > 1 else np.zeros(1))
    bar = 0.25 if len(seeds) > 1 else 0.0
    for column, framework in enumerate(frameworks):
        rows = {s.strategy: s for s in summaries if s.framework == framework}
        runs = [r for r in results if r.framework == framework]
        for row, metric in enumerate(TESTED_METRICS):
            ax = grid[row][column]
            for offset, seed in zip(offsets, seeds):
                values = {r.strategy: float(getattr(r, metric)) for r in runs if r.seed == seed}
                ys = [values.get(name, np.nan) for name in names]
                ax.plot(x + offset, ys, color=colours[seed], linewidth=0.5, alpha=0.45)
                ax.scatter(x + offset, ys, s=14, color=colours[seed], zorder=3,
                           label=f"seed {seed}" if len(seeds) <= 8 else None)
            for i, name in enumerate(names):
                summary = rows.get(name)
                if summary is None:
                    continue
                spread = getattr(summary, metric)
                ax.errorbar(x[i] + bar, spread.mean, yerr=spread.std, fmt="_", color="black",
                            markersize=16, capsize=5, linewidth=1.5, zorder=4)
                test = summary.tests.get(metric)
                if test is not None and test.differs:
                    ax.annotate(test.verdict(), (x[i] + bar, spread.mean + spread.std),
                                textcoords="offset points", xytext=(0, 4), ha="center",
                                fontsize=7, color="#d62728")
            base = rows.get(BASELINE)
            if base is not None:
                mean = getattr(base, metric).mean
                ax.axhline(mean, color="grey", linestyle="--", linewidth=1,
                           label=f"{BASELINE} mean")
            ax.set_title(f"{framework}: {metric}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
            if column == 0:
                ax.set_ylabel(metric)
        grid[-1][column].set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    grid[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Every seed's run ({len(seeds)} seeds) and mean ± std", fontsize=11)
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
    values = [r.weight_values() for rs in panels.values() for r in rs]
    span = max((float(np.abs(v).max()) for v in values if v.size), default=0.0) or 1.0
    bins = np.linspace(-span, span, 82)
    width = bins[1] - bins[0]
    for row, (framework, results) in zip(grid, panels.items()):
        reference = results[0].weight_values()
        for ax, result in zip(row, results):
            w = result.weight_values()
            nonzero = w[w != 0]
            zeros = int(w.size - nonzero.size)
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
            ax.legend(fontsize=7, loc="upper right")
            ax.grid(alpha=0.3)
        for ax in row[len(results):]:
            ax.set_visible(False)
        row[0].set_ylabel("count (log scale)")
    for ax in grid[-1]:
        ax.set_xlabel("weight value")
    fig.suptitle("Weights after training")
    return fig


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
        low.text(float(np.mean(spans[0])), spread[name], f"{name} {spread[name]:.3f}",
                 ha="center", va="bottom", fontsize=7)
    low.set_xlabel("x")
    low.set_ylabel("std")
    low.set_ylim(bottom=0)
    return fig

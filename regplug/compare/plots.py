"""The comparison's figures, as PNG files. matplotlib is imported only here, on first use.

Figures are drawn on matplotlib's Agg canvas directly (no ``pyplot``), so nothing changes
the backend or the global state of a program or notebook that calls this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..uncertainty import MCPrediction
    from .results import StrategyResult
    from .toy import RegressionToy

__all__ = ["plot_loss_curves", "plot_weight_histograms", "plot_uncertainty",
           "HISTOGRAM_STRATEGIES"]

#: The strategies whose weights the histogram overlays (the lecture's figure shows the first
#: three; proximal L1 adds the spike of exact zeros), with their colours.
HISTOGRAM_STRATEGIES: dict[str, str] = {"none": "#9d8ec7", "l2": "#1f77b4", "l1": "#d62728",
                                        "proximal_l1": "#2ca02c"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("the plots need matplotlib: pip install 'regplug[plots]'") from err
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def plot_loss_curves(results: Sequence[StrategyResult], path: Path, *, title: str) -> Path:
    """One panel per strategy: training vs validation cross-entropy per epoch.

    The data term alone (penalties left out), so that panels compare, on a log scale; the
    gap between the curves is the overfitting the strategy leaves. A dotted line marks where
    early stopping stopped.
    """
    n = len(results)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = _figure(3.0 * cols, 2.4 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, result in zip(axes, results):
        train = result.history.get("cross_entropy", [])
        val = result.history.get("val_cross_entropy", [])
        epochs = np.arange(1, len(train) + 1)
        ax.plot(epochs, train, color="#1f77b4", label="train")
        ax.plot(epochs[:len(val)], val, color="#ff7f0e", label="validation")
        if result.stop_reason:
            ax.axvline(len(train), color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{result.strategy}\nacc test {result.acc_test:.3f}", fontsize=9)
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
    return _save(fig, path)


def plot_weight_histograms(by_framework: dict[str, list[StrategyResult]], path: Path) -> Path:
    """The weights of none / L2 / L1 (and proximal L1) overlaid, one panel per framework.

    The lecture's figure of regularization's effect on weights: without regularization they
    spread out; L2 pulls them toward zero; L1 piles them up at zero; proximal L1 makes
    many of them exactly zero (the bin at 0, drawn on a log scale so the tails stay visible).
    """
    panels = {fw: [r for r in rs if r.strategy in HISTOGRAM_STRATEGIES]
              for fw, rs in by_framework.items()}
    panels = {fw: rs for fw, rs in panels.items() if rs}
    if not panels:
        raise ValueError("no strategy among none, l1, l2, proximal_l1 ran: nothing to plot")
    fig = _figure(6.0 * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (framework, results) in zip(axes, panels.items()):
        values = np.concatenate([r.weight_values() for r in results])
        span = float(np.abs(values).max()) if values.size else 1.0
        bins = np.linspace(-span, span, 82) if span > 0 else np.linspace(-1.0, 1.0, 82)
        for result in sorted(results, key=lambda r: list(HISTOGRAM_STRATEGIES).index(r.strategy)):
            w = result.weight_values()
            ax.hist(w, bins=bins, histtype="stepfilled", alpha=0.35,
                    color=HISTOGRAM_STRATEGIES[result.strategy], edgecolor="none")
            ax.hist(w, bins=bins, histtype="step", linewidth=1.2,
                    color=HISTOGRAM_STRATEGIES[result.strategy],
                    label=f"{result.strategy} ({result.zero_fraction:.0%} exactly 0)")
        ax.set_yscale("log")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count (log scale)")
        ax.set_title(f"{framework}: weights after training")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_uncertainty(toy: RegressionToy, prediction: MCPrediction, path: Path, *,
                     title: str) -> Path:
    """MC-dropout prediction on the 1-D toy: the data, the mean, and mean ± 1 and 2 std."""
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    x = toy.x_grid.ravel()
    mean, std = prediction.mean.ravel(), prediction.std.ravel()
    ax.fill_between(x, mean - 2 * std, mean + 2 * std, color="#9467bd", alpha=0.18,
                    linewidth=0, label="mean ± 2 std")
    ax.fill_between(x, mean - std, mean + std, color="#9467bd", alpha=0.3, linewidth=0,
                    label="mean ± 1 std")
    ax.plot(x, mean, color="#d62728", linewidth=1.8, label=f"mean of {prediction.T} samples")
    ax.scatter(toy.x_train.ravel(), toy.y_train.ravel(), s=10, color="black", zorder=3,
               label="training data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)

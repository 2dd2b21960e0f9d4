"""The doctor's figures: the baseline's learning curves and LayerMonitor's small multiples,
as PNG files on matplotlib's Agg canvas (no ``pyplot``).

Docs: docs/doctor.md
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..experiment.reporting import new_figure, save_figure

__all__ = ["CURVES_FIGURE", "MONITOR_FIGURE", "plot_curves", "plot_monitor"]

CURVES_FIGURE = "curves.png"
MONITOR_FIGURE = "monitor.png"

_TITLES = {"weight_norm": "weight norm ‖θ‖", "grad_norm": "gradient norm (1st step)",
           "update_ratio": "update / weight (epoch)", "zeros": "share of exact zeros",
           "dead_units": "share of dead units"}


def plot_curves(history: Mapping[str, Sequence[float]], path: Path, *,
                onset: int | None = None, title: str = "") -> Path:
    """Loss (training and validation) and accuracy per epoch; ``onset`` (from 1) marked."""
    fig = new_figure(9.0, 3.4)
    axes = fig.subplots(1, 2)
    pairs = ((("cross_entropy", "loss"), ("val_cross_entropy", "val_loss"), "cross-entropy"),
             (("accuracy",), ("val_accuracy",), "accuracy"))
    for ax, (train_keys, val_keys, label) in zip(axes, pairs):
        for keys, name in ((train_keys, "training"), (val_keys, "validation")):
            values = next((history[k] for k in keys if history.get(k)), None)
            if values:
                ys = [v if math.isfinite(v) else float("nan") for v in values]
                ax.plot(range(1, len(ys) + 1), ys, label=name)
        if onset is not None:
            ax.axvline(onset, color="grey", linestyle=":", label=f"gap opens (epoch {onset})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_monitor(series: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """One panel per quantity, one line per parameter (:func:`monitor_series`' layout)."""
    quantities = [q for q in series if series[q]]
    fig = new_figure(3.0 * max(len(quantities), 1), 3.0)
    axes = fig.subplots(1, max(len(quantities), 1), squeeze=False)[0]
    for ax, quantity in zip(axes, quantities):
        for name, values in series[quantity].items():
            ax.plot(range(1, len(values) + 1), values, label=name)
        ax.set_title(_TITLES.get(quantity, quantity), fontsize=9)
        ax.set_xlabel("epoch")
        if quantity in ("weight_norm", "grad_norm", "update_ratio") and all(
                v > 0 for vs in series[quantity].values() for v in vs if math.isfinite(v)):
            ax.set_yscale("log")
    if quantities:
        axes[0].legend(fontsize=7)
    return save_figure(fig, path)

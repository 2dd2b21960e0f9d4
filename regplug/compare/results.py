"""What a comparison produces: one row per framework and strategy, as a table, CSV and JSON.

The frameworks' runners return a :class:`TrainOutcome` (history, accuracies, final weights);
the metrics that must mean the same in every framework — the fraction of exact-zero weights
and the final penalty — are computed here, from the final weights, by NumPy.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..clock import EpochClock, Wording
from ..hookspecs import implemented_hooks
from ..manager import PluginManager
from ..numpy_ops import NumpyOps
from ..penalty import check_penalties
from ..run import ParamHandle, Run

__all__ = ["WeightArray", "TrainOutcome", "StrategyResult", "COLUMNS", "format_table",
           "final_penalty", "zero_fraction", "write_csv", "write_json", "make_result"]


@dataclass(frozen=True, eq=False)
class WeightArray:
    """One trainable parameter at the end of training, as a NumPy array.

    ``name``, ``kind``, ``layer_type``, ``unit_axis`` and ``native_name`` are those the
    framework's adapter gave the parameter (see :class:`regplug.ParamHandle`), so plugin
    selections mean the same here.
    """

    name: str
    kind: str
    layer_type: str
    unit_axis: int | None
    array: np.ndarray
    native_name: str = ""


@dataclass(eq=False)
class TrainOutcome:
    """What a framework's runner returns for one strategy.

    :param history: per-epoch values: ``loss``/``val_loss`` (the training objective,
        penalties included, as the framework reports it), ``cross_entropy`` /
        ``val_cross_entropy`` (the data term alone), ``accuracy``/``val_accuracy``, and each
        penalty under its log name.
    :param acc_train, acc_test: accuracies of the final model (after early stopping restored
        its best weights) on the training and the test rows, in inference mode.
    :param weights: every trainable parameter at the end.
    :param steps: optimizer updates done.
    :param stop_reason: why a plugin stopped training early, else ``None``.
    """

    history: dict[str, list[float]]
    acc_train: float
    acc_test: float
    weights: list[WeightArray]
    steps: int
    seconds: float
    stop_reason: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", ()))


@dataclass(eq=False)
class StrategyResult:
    """One row of the comparison."""

    framework: str
    strategy: str
    description: str
    acc_train: float
    acc_test: float
    pct_diff: float
    epochs: int
    zero_fraction: float
    penalty: float
    seconds: float
    stop_reason: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    weights: list[WeightArray] = field(default_factory=list, repr=False)
    #: The epoch (from 0) whose weights early stopping put back at the end, else ``None``.
    restored_epoch: int | None = None

    def row(self) -> dict[str, Any]:
        """The table's columns, plus description, time and stop reason (CSV and JSON)."""
        return {"framework": self.framework, "strategy": self.strategy,
                "acc_train": self.acc_train, "acc_test": self.acc_test,
                "pct_diff": self.pct_diff, "epochs": self.epochs,
                "zero_fraction": self.zero_fraction, "penalty": self.penalty,
                "seconds": round(self.seconds, 3), "stop_reason": self.stop_reason or "",
                "description": self.description}

    def weight_values(self) -> np.ndarray:
        """Every value of the weight matrices (kind ``weight``), flattened: the histograms."""
        arrays = [w.array.ravel() for w in self.weights if w.kind == "weight"]
        return np.concatenate(arrays) if arrays else np.zeros(0)


#: The printed table's columns: (key, header, width, format).
COLUMNS: tuple[tuple[str, str, int, str], ...] = (
    ("framework", "framework", 10, "s"),
    ("strategy", "strategy", 24, "s"),
    ("acc_train", "acc_train", 10, ".4f"),
    ("acc_test", "acc_test", 10, ".4f"),
    ("pct_diff", "pct_diff", 10, ".4f"),
    ("epochs", "epochs", 7, "d"),
    ("zero_fraction", "zeros", 8, ".1%"),
    ("penalty", "penalty", 10, ".4f"),
)


def format_table(results: Sequence[StrategyResult]) -> str:
    """The comparison as fixed-width text, one row per framework and strategy.

    >>> r = StrategyResult("torch", "none", "", 1.0, 0.95, 0.05, 30, 0.0, 0.0, 1.2)
    >>> print(format_table([r]))
    framework strategy                 acc_train  acc_test  pct_diff epochs   zeros   penalty
    torch     none                        1.0000    0.9500    0.0500     30    0.0%    0.0000
    """
    width = max([24, *(len(r.strategy) + 1 for r in results)])
    cols = [(k, h, width if k == "strategy" else w, f) for k, h, w, f in COLUMNS]
    lines = ["".join(h.ljust(w) if f == "s" else h.rjust(w) for _, h, w, f in cols).rstrip()]
    for result in results:
        row = result.row()
        cells = []
        for key, _, w, f in cols:
            value = row[key]
            if f == "s":
                cells.append(str(value).ljust(w))
            elif isinstance(value, float) and math.isnan(value):
                cells.append("nan".rjust(w))
            else:
                cells.append(format(value, f).rjust(w))
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def zero_fraction(weights: Sequence[WeightArray]) -> float:
    """The share of exactly-zero values among the weight matrices (kind ``weight``).

    >>> zero_fraction([WeightArray("w", "weight", "Dense", 1, np.array([[0.0, 1.0]]))])
    0.5
    """
    arrays = [w.array for w in weights if w.kind == "weight"]
    total = sum(a.size for a in arrays)
    return float(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total) if total else 0.0


def final_penalty(plugins: Sequence[object], weights: Sequence[WeightArray], *, steps: int,
                  epochs: int) -> float:
    """The plugins' penalties (their ``on_loss`` terms) at the final weights, summed.

    Evaluated by the NumPy reference backend on the weights as the framework left them, with
    scheduled strengths at their value in the last step, so the number means the same for
    every framework. ``plugins`` must be fresh objects (built for this evaluation).
    """
    penalizing = [p for p in plugins if "on_loss" in implemented_hooks(p)]
    if not penalizing:
        return 0.0
    handles = [ParamHandle(w.name, w.kind, np.array(w.array, dtype=np.float64), w.layer_type,
                           w.unit_axis, tuple(w.array.shape), native_name=w.native_name)
               for w in weights]
    run = Run(params=handles, ops=NumpyOps(), learning_rate_groups=lambda ps: [(0.0, list(ps))],
              framework="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # selection warnings were shown during training
        manager = PluginManager(penalizing)
        EpochClock(run, manager, Wording(adapter="regplug compare")).train_begin()
        run.step, run.epoch = max(steps - 1, 0), max(epochs - 1, 0)
        run.update_scalars()
        terms = check_penalties(manager.caller("on_loss")(run=run, loss=0.0))
        return float(sum(float(t.value()) for t in terms))


def make_result(framework: str, strategy_name: str, description: str, outcome: TrainOutcome,
                fresh_plugins: Sequence[object]) -> StrategyResult:
    """The row for one run: the outcome plus the framework-neutral metrics."""
    acc_train, acc_test = outcome.acc_train, outcome.acc_test
    return StrategyResult(
        framework=framework, strategy=strategy_name, description=description,
        acc_train=acc_train, acc_test=acc_test,
        pct_diff=1.0 - acc_test / acc_train if acc_train > 0 else math.nan,
        epochs=outcome.epochs, zero_fraction=zero_fraction(outcome.weights),
        penalty=final_penalty(fresh_plugins, outcome.weights, steps=outcome.steps,
                              epochs=outcome.epochs),
        seconds=outcome.seconds, stop_reason=outcome.stop_reason, history=outcome.history,
        weights=outcome.weights)


def write_csv(path: Path, results: Sequence[StrategyResult]) -> None:
    """One line per row: the table's columns, then time, stop reason and description.

    Text cells go through :func:`csv_text` (no formula injection); ``results.json`` keeps
    the exact text.
    """
    with path.open("w", newline="", encoding="utf-8") as fh:
        rows = [r.row() for r in results]
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["framework"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_text(v) if isinstance(v, str) else _plain(v)
                             for k, v in row.items()})


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading
    single quote (the OWASP rule); any other text is unchanged.

    >>> print(csv_text("=1+2"), csv_text("-x"), csv_text("L2, 1e-4"))
    '=1+2 '-x L2, 1e-4
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_json(path: Path, results: Sequence[StrategyResult], settings: Mapping[str, Any],
               *, extra: Mapping[str, Any] | None = None) -> None:
    """The settings, every row and its per-epoch history (NaN written as ``null``)."""
    payload = {"format": "regplug-compare/1", "settings": dict(settings),
               "results": [{**r.row(), "history": r.history} for r in results],
               **(extra or {})}
    path.write_text(json.dumps(_json_safe(payload), indent=2) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value

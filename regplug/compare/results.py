"""What a comparison produces: one row per framework and strategy, as a table, CSV and JSON.

The frameworks' runners return a :class:`TrainOutcome` (history, accuracies, final weights);
the metrics that must mean the same in every framework — the fraction of exact-zero weights
and the final penalty — are computed here, from the final weights, by NumPy.

Docs: docs/compare.md
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
from ..experiment.reporting import csv_text, json_safe
from ..experiment.training import TrainOutcome, WeightArray
from ..hookspecs import implemented_hooks
from ..manager import PluginManager
from ..numpy_ops import NumpyOps
from ..penalty import check_penalties
from ..run import ParamHandle, Run

__all__ = ["StrategyResult", "COLUMNS", "format_table",
           "Spread", "BaselineTest", "StrategySummary", "summarize", "baseline_statement",
           "format_summary_table", "summary_cells", "write_summary_csv", "BASELINE",
           "baseline_of",
           "TESTED_METRICS", "ALPHA", "MIN_TEST_SEEDS", "SUMMARY_COLUMNS",
           "final_penalty", "zero_fraction", "write_csv", "write_json", "make_result",
           "divergence", "diverged_note"]


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
    #: The seed of this run (data split, initial weights, batch order, dropout masks).
    seed: int | None = None
    #: Why this run's training diverged (:func:`divergence`), else ``None``: its accuracies
    #: mean nothing, and it is kept out of the tests against the baseline.
    diverged: str | None = None

    def row(self) -> dict[str, Any]:
        """The table's columns, plus time, stop reason, description, seed and divergence
        (CSV and JSON).

        ``seed`` and ``diverged`` come last, so the columns of a one-seed ``results.csv``
        keep the places they had before."""
        return {"framework": self.framework, "strategy": self.strategy,
                "acc_train": self.acc_train, "acc_test": self.acc_test,
                "pct_diff": self.pct_diff, "epochs": self.epochs,
                "zero_fraction": self.zero_fraction, "penalty": self.penalty,
                "seconds": round(self.seconds, 3), "stop_reason": self.stop_reason or "",
                "description": self.description, "seed": self.seed,
                "diverged": self.diverged or ""}

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
    width = max([24, *(len(r.strategy) + 3 for r in results)])
    cols = [(k, h, width if k == "strategy" else w, f) for k, h, w, f in COLUMNS]
    lines = ["".join(h.ljust(w) if f == "s" else h.rjust(w) for _, h, w, f in cols).rstrip()]
    for result in results:
        row = result.row()
        cells = []
        for key, _, w, f in cols:
            value = row[key]
            if key == "strategy" and result.diverged:
                value = f"{value} !"  # marked: see the note under the table
            if f == "s":
                cells.append(str(value).ljust(w))
            elif isinstance(value, float) and math.isnan(value):
                cells.append("nan".rjust(w))
            else:
                cells.append(format(value, f).rjust(w))
        lines.append("".join(cells).rstrip())
    note = diverged_note(results)
    return "\n".join(lines + (["", note] if note else []))


def divergence(history: Mapping[str, Sequence[float]],
               weights: Sequence[WeightArray] = ()) -> str | None:
    """Why a run's training diverged — a non-finite training or validation loss in some
    epoch, or non-finite final weights — else ``None`` (``regplug tune`` judges its trials
    the same way). Such a run's accuracies are those of a broken model.

    >>> divergence({"loss": [0.7, float("nan"), float("nan")]})
    'loss is nan at epoch 2 (the training diverged)'
    >>> divergence({"loss": [0.7, 0.5]}) is None
    True
    """
    for key in ("loss", "val_loss"):
        for epoch, value in enumerate(history.get(key, ())):
            if value is None or not math.isfinite(float(value)):
                return f"{key} is {float('nan') if value is None else value} at epoch " \
                       f"{epoch + 1} (the training diverged)"
    for weight in weights:
        if not np.all(np.isfinite(weight.array)):
            return (f"the final weights of {weight.name!r} are not finite (the training "
                    "diverged)")
    return None


def diverged_note(results: Sequence[StrategyResult], *, baseline: str | None = None) -> str:
    """The line under a table whose rows include diverged runs, else ``""``; ``baseline``:
    the strategy tested against (default :data:`BASELINE`)."""
    runs = [r for r in results if r.diverged]
    if not runs:
        return ""
    names = ", ".join(dict.fromkeys(f"{r.framework} {r.strategy}" for r in runs))
    return (f"! diverged: {names} — {runs[0].diverged}; their accuracies are those of a "
            f"broken model, and {'it is' if len(runs) == 1 else 'they are'} kept out of the "
            f"tests against {baseline or BASELINE!r}.")


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
                fresh_plugins: Sequence[object], *, seed: int | None = None) -> StrategyResult:
    """The row for one run (of seed ``seed``): the outcome plus the framework-neutral
    metrics."""
    acc_train, acc_test = outcome.acc_train, outcome.acc_test
    return StrategyResult(
        framework=framework, strategy=strategy_name, description=description,
        acc_train=acc_train, acc_test=acc_test,
        pct_diff=1.0 - acc_test / acc_train if acc_train > 0 else math.nan,
        epochs=outcome.epochs, zero_fraction=zero_fraction(outcome.weights),
        penalty=final_penalty(fresh_plugins, outcome.weights, steps=outcome.steps,
                              epochs=outcome.epochs),
        seconds=outcome.seconds, stop_reason=outcome.stop_reason, history=outcome.history,
        weights=outcome.weights, seed=seed,
        diverged=divergence(outcome.history, outcome.weights))


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
            writer.writerow({k: _plain_cell(v) for k, v in row.items()})


def _plain_cell(value: Any) -> Any:
    return csv_text(value) if isinstance(value, str) else _plain(value)


def write_json(path: Path, results: Sequence[StrategyResult], settings: Mapping[str, Any],
               *, extra: Mapping[str, Any] | None = None) -> None:
    """The settings, every row and its per-epoch history (NaN written as ``null``)."""
    payload = {"format": "regplug-compare/1", "settings": dict(settings),
               "results": [{**r.row(), "history": r.history} for r in results],
               **(extra or {})}
    path.write_text(json.dumps(json_safe(payload), indent=2) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


# -- several seeds: mean ± std per strategy, and the paired test against the baseline -------

#: The strategy every other one is tested against (when it is among those run).
BASELINE = "none"
#: The metrics tested against the baseline, each its own family of tests.
TESTED_METRICS = ("acc_test", "pct_diff")
#: The family-wise error rate of each family of tests (Holm–Bonferroni).
ALPHA = 0.05
#: A paired t-test needs at least this many seeds to say anything.
MIN_TEST_SEEDS = 3


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (ddof=1; NaN for one value) of one metric.

    >>> Spread.of([0.95, 0.96, 0.97]).text(".4f")
    '0.9600 ± 0.0100'
    """

    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        return cls(float(array.mean()), std)

    def text(self, fmt: str) -> str:
        if math.isnan(self.mean):
            return "nan"
        return f"{format(self.mean, fmt)} ± {format(self.std, fmt)}"


@dataclass(frozen=True)
class BaselineTest:
    """One strategy's paired t-test against the baseline on one metric.

    ``mean_diff`` and ``ci95`` are of (strategy − baseline) per seed; ``p`` is the raw
    two-sided p-value, ``p_holm`` the Holm-adjusted one across the strategies of the same
    framework; ``differs`` is ``p_holm <= ALPHA`` (``None`` when ``p`` is NaN).
    """

    metric: str
    mean_diff: float
    ci95: tuple[float, float]
    t: float
    p: float
    p_holm: float

    @property
    def differs(self) -> bool | None:
        return None if math.isnan(self.p_holm) else self.p_holm <= ALPHA

    def verdict(self) -> str:
        """``higher``/``lower`` (than the baseline, beyond seed noise), ``no``, or ``nan``."""
        if self.differs is None:
            return "nan"
        if not self.differs:
            return "no"
        return "higher" if self.mean_diff > 0 else "lower"


@dataclass(eq=False)
class StrategySummary:
    """One framework × strategy over every seed it ran: the comparison's row with seeds."""

    framework: str
    strategy: str
    description: str
    seeds: tuple[int, ...]
    acc_train: Spread
    acc_test: Spread
    pct_diff: Spread
    epochs: float
    zero_fraction: float
    penalty: float
    seconds: float
    #: The tests against the baseline by metric; empty for the baseline itself, and when
    #: there is no baseline or too few seeds.
    tests: dict[str, BaselineTest] = field(default_factory=dict)
    #: The strategy the tests are against (:func:`summarize`'s ``baseline``).
    baseline: str = BASELINE
    #: The seeds whose training diverged (kept out of the tests).
    diverged: tuple[int, ...] = ()

    def row(self) -> dict[str, Any]:
        """``summary.csv``'s and ``results.json``'s row: the means and standard deviations,
        then each tested metric's difference from the baseline, its 95% interval, t, the raw
        and the adjusted p-value and ``differs`` (``yes``/``no``; empty where untested)."""
        out: dict[str, Any] = {"framework": self.framework, "strategy": self.strategy,
                               "seeds": len(self.seeds)}
        for name in ("acc_train", "acc_test", "pct_diff"):
            spread: Spread = getattr(self, name)
            out[f"{name}_mean"], out[f"{name}_std"] = spread.mean, spread.std
        out.update(epochs_mean=self.epochs, zero_fraction_mean=self.zero_fraction,
                   penalty_mean=self.penalty, seconds_total=round(self.seconds, 3))
        for metric in TESTED_METRICS:
            test = self.tests.get(metric)
            differs = None if test is None else test.differs
            out.update({
                f"{metric}_diff_vs_{self.baseline}": None if test is None else test.mean_diff,
                f"{metric}_ci95_low": None if test is None else test.ci95[0],
                f"{metric}_ci95_high": None if test is None else test.ci95[1],
                f"{metric}_t": None if test is None else test.t,
                f"{metric}_p": None if test is None else test.p,
                f"{metric}_p_holm": None if test is None else test.p_holm,
                f"{metric}_differs": "" if differs is None else ("yes" if differs else "no")})
        out["diverged_seeds"] = " ".join(str(s) for s in self.diverged)
        out["description"] = self.description
        return out


def summarize(results: Sequence[StrategyResult], *,
              baseline: str = BASELINE) -> list[StrategySummary]:
    """Mean ± std per framework × strategy (in the order first run), and, with the baseline
    among the strategies and at least :data:`MIN_TEST_SEEDS` seeds, every other strategy's
    paired test against it. ``baseline``: the strategy tested against (default
    :data:`BASELINE`; ``regplug compare --task finetune``: ``finetune``).

    Pairs are made by seed: the run of seed s of a strategy against the baseline's run of
    seed s (same data split, initial weights, batch order, dropout masks), so what the seed
    changes cancels in the difference. Per framework and metric, the strategies' p-values
    are Holm-adjusted together.
    """
    from .stats import holm, paired_t_test

    groups: dict[tuple[str, str], list[StrategyResult]] = {}
    for result in results:
        groups.setdefault((result.framework, result.strategy), []).append(result)
    summaries: list[StrategySummary] = []
    for (framework, strategy), runs in groups.items():
        runs = sorted(runs, key=_seed_of)
        summaries.append(StrategySummary(
            framework=framework, strategy=strategy, description=runs[0].description,
            seeds=tuple(_seed_of(r) for r in runs),
            acc_train=Spread.of([r.acc_train for r in runs]),
            acc_test=Spread.of([r.acc_test for r in runs]),
            pct_diff=Spread.of([r.pct_diff for r in runs]),
            epochs=float(np.mean([r.epochs for r in runs])),
            zero_fraction=float(np.mean([r.zero_fraction for r in runs])),
            penalty=float(np.mean([r.penalty for r in runs])),
            seconds=float(sum(r.seconds for r in runs)),
            diverged=tuple(_seed_of(r) for r in runs if r.diverged), baseline=baseline))
    for framework in dict.fromkeys(s.framework for s in summaries):
        rows = [s for s in summaries if s.framework == framework]
        base = next((s for s in rows if s.strategy == baseline), None)
        if base is None or len(base.seeds) < MIN_TEST_SEEDS:
            continue
        # A diverged run means nothing: a strategy (or a baseline) with one is not tested.
        others = [s for s in rows if s is not base and not s.diverged and not base.diverged]
        for metric in TESTED_METRICS:
            tests = []
            for summary in others:
                if summary.seeds != base.seeds:
                    raise ValueError(
                        f"{framework}, strategy {summary.strategy!r}: seeds "
                        f"{list(summary.seeds)} do not pair with the seeds of {baseline}, "
                        f"{list(base.seeds)}")
                tests.append(paired_t_test(
                    _values(groups[framework, summary.strategy], metric),
                    _values(groups[framework, baseline], metric)))
            for summary, test, adjusted in zip(others, tests, holm([t.p for t in tests])):
                summary.tests[metric] = BaselineTest(metric, test.mean_diff, test.ci95,
                                                     test.t, test.p, adjusted)
    return summaries


def _seed_of(result: StrategyResult) -> int:
    """The run's seed; -1 for a row made without one (by hand: never by a comparison)."""
    return -1 if result.seed is None else result.seed


def _values(runs: Sequence[StrategyResult], metric: str) -> list[float]:
    """``metric`` of every run, in the order of their seeds."""
    return [float(getattr(r, metric)) for r in sorted(runs, key=_seed_of)]


def baseline_of(summaries: Sequence[StrategySummary]) -> str:
    """The strategy ``summaries`` were tested against (:data:`BASELINE` for none)."""
    return summaries[0].baseline if summaries else BASELINE


def baseline_statement(summaries: Sequence[StrategySummary]) -> str:
    """What the ``vs none`` columns mean for these summaries — or why there are none: no
    baseline was run, or too few seeds for a test. The table's footer, and the report's.

    >>> s = StrategySummary("torch", "l2", "", (0, 1), *[Spread(1.0, 0.0)] * 3, 30, 0, 0, 1)
    >>> print(baseline_statement([s]))
    no baseline: strategy 'none' was not run, so no strategy is tested against it (add none to --strategies).
    """  # noqa: E501
    return _test_statement(summaries) + _diverged_statement(summaries)


def _test_statement(summaries: Sequence[StrategySummary]) -> str:
    seeds = max((len(s.seeds) for s in summaries), default=0)
    baseline = baseline_of(summaries)
    if not any(s.strategy == baseline for s in summaries):
        return (f"no baseline: strategy {baseline!r} was not run, so no strategy is tested "
                f"against it (add {baseline} to --strategies).")
    if seeds < MIN_TEST_SEEDS:
        return (f"no test against {baseline!r}: a paired t-test needs at least "
                f"{MIN_TEST_SEEDS} seeds, this ran {seeds} (use --seeds {MIN_TEST_SEEDS} or "
                "more).")
    compared = max(sum(1 for s in summaries if s.framework == fw and s.strategy != baseline)
                   for fw in {s.framework for s in summaries})
    if compared == 0:
        return (f"no test: only {baseline!r} was run, so there is nothing to test against it "
                "(add strategies to --strategies).")
    return (f"vs {baseline}: a paired two-sided t-test of the per-seed differences from "
            f"{baseline!r} "
            f"(run i of every strategy used seed i), separately for acc_test and pct_diff, "
            f"Holm–Bonferroni adjusted across the {compared} strateg"
            f"{'y' if compared == 1 else 'ies'} compared in each framework, alpha {ALPHA:g}. "
            f"'higher'/'lower': differs from {baseline} beyond seed noise (adjusted p ≤ "
            f"{ALPHA:g}); 'no': not beyond seed noise; p: the adjusted p-value.")


def _diverged_statement(summaries: Sequence[StrategySummary]) -> str:
    diverged = [s for s in summaries if s.diverged]
    if not diverged:
        return ""
    names = ", ".join(f"{s.framework} {s.strategy} (seed{'' if len(s.diverged) == 1 else 's'} "
                      f"{', '.join(str(x) for x in s.diverged)})" for s in diverged)
    return (f" Diverged training (a non-finite loss): {names}; kept out of the tests "
            f"('diverged').")


#: The seeds table's columns: (key, header, width).
SUMMARY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("framework", "framework", 10),
    ("strategy", "strategy", 24),
    ("acc_train", "acc_train", 17),
    ("acc_test", "acc_test", 17),
    ("pct_diff", "pct_diff", 17),
    ("epochs", "epochs", 7),
    ("zero_fraction", "zeros", 8),
    ("penalty", "penalty", 10),
    ("acc_test_vs", f"acc_test_vs_{BASELINE}", 18),
    ("pct_diff_vs", f"pct_diff_vs_{BASELINE}", 18),
)


def summary_cells(summary: StrategySummary) -> dict[str, str]:
    """The seeds table's cells of one summary, as text (the printed table and the report).

    A tested metric shows its verdict and adjusted p (``higher p=0.004``, ``no p=0.412``);
    the baseline's row shows ``baseline``; untested rows ``-``.
    """
    cells = {"framework": summary.framework, "strategy": summary.strategy,
             "acc_train": summary.acc_train.text(".4f"),
             "acc_test": summary.acc_test.text(".4f"),
             "pct_diff": summary.pct_diff.text(".4f"),
             "epochs": f"{summary.epochs:.4g}", "zero_fraction": f"{summary.zero_fraction:.1%}",
             "penalty": "nan" if math.isnan(summary.penalty) else f"{summary.penalty:.4f}"}
    for metric in TESTED_METRICS:
        test = summary.tests.get(metric)
        if test is not None:
            p = test.p_holm
            shown = "nan" if math.isnan(p) else ("<0.001" if p < 0.001 else f"={p:.3f}")
            cells[f"{metric}_vs"] = f"{test.verdict():<6} p{shown}"
        elif summary.diverged:
            cells[f"{metric}_vs"] = "diverged"
        elif summary.strategy == summary.baseline:
            cells[f"{metric}_vs"] = "baseline"
        else:
            cells[f"{metric}_vs"] = "-"
    return cells


def format_summary_table(summaries: Sequence[StrategySummary]) -> str:
    """The comparison over several seeds as fixed-width text: mean ± std per framework ×
    strategy, and each tested metric's verdict against the baseline.

    >>> s = StrategySummary("torch", "none", "", (0, 1, 2), Spread(1.0, 0.0),
    ...                     Spread(0.9612, 0.0041), Spread(0.0388, 0.0041), 30, 0, 0, 6)
    >>> print(format_summary_table([s]))
    framework strategy                        acc_train         acc_test         pct_diff epochs   zeros   penalty  acc_test_vs_none  pct_diff_vs_none
    torch     none                      1.0000 ± 0.0000  0.9612 ± 0.0041  0.0388 ± 0.0041     30    0.0%    0.0000  baseline          baseline
    """  # noqa: E501
    width = max([24, *(len(s.strategy) + 1 for s in summaries)])
    baseline = baseline_of(summaries)
    cols = [(k, f"{k}_{baseline}" if k.endswith("_vs") else h,
             width if k == "strategy" else w) for k, h, w in SUMMARY_COLUMNS]

    def line(texts: Mapping[str, str]) -> str:
        parts = []
        for key, _, w in cols:
            if key in ("framework", "strategy"):
                parts.append(texts[key].ljust(w))
            elif key.endswith("_vs"):  # text: left-aligned, two spaces from the numbers
                parts.append(("  " + texts[key]).ljust(w))
            else:
                parts.append(texts[key].rjust(w))
        return "".join(parts).rstrip()

    return "\n".join([line({k: h for k, h, _ in cols}),
                      *(line(summary_cells(s)) for s in summaries)])


def write_summary_csv(path: Path, summaries: Sequence[StrategySummary]) -> None:
    """``summary.csv``: one line per framework × strategy (:meth:`StrategySummary.row`)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        rows = [s.row() for s in summaries]
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["framework"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain_cell(v) for k, v in row.items()})

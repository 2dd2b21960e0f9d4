"""A comparison: every strategy under every framework (and seed), then its files and figures.

Each run is one :func:`~regplug.experiment.training.train_strategy`; the frameworks' runners
come from the registry in :mod:`regplug.experiment.frameworks`, loaded only when their
framework is asked for.

Docs: docs/compare.md
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RegplugError
from ..experiment.datasets import VALIDATION_FRACTION, Splits
from ..experiment.frameworks import FrameworkRunner, TrainSettings, get_runner
from ..experiment.models import ModelChoice, ModelError
from ..experiment.output import StagedOutput
from ..experiment.strategies import Strategy
from ..experiment.training import restored_epoch, train_strategy
from .cli import noise_note
from .progress import Progress
from .results import (
    BASELINE,
    StrategyResult,
    baseline_statement,
    format_summary_table,
    format_table,
    make_result,
    summarize,
    write_csv,
    write_json,
    write_summary_csv,
)

__all__ = ["run_compare", "run_settings", "write_outputs", "CompareError"]

log = logging.getLogger(__name__)

class CompareError(RegplugError, ValueError):
    """A strategy could not be trained (the message names the framework and strategy)."""


def run_compare(*, frameworks: Sequence[str], strategies: Sequence[Strategy], splits: Splits,
                model: ModelChoice, settings: TrainSettings, out: str | Path | None = None,
                progress: Progress | None = None, command: str = "regplug compare",
                seeds: int = 1, splits_for: Callable[[int], Splits] | None = None,
                baseline: str = BASELINE) -> list[StrategyResult]:
    """Train ``model`` under every strategy with every framework, ``seeds`` times; write
    ``out`` if given.

    Run i (from 0) of every strategy uses seed ``settings.seed + i`` for everything random:
    the data split (``splits`` for the first seed, ``splits_for(seed)`` for the others; the
    same ``splits`` for every seed without it), the initial weights, the batch order and the
    dropout masks — so the runs of two strategies pair by seed. The rows come back ordered
    by framework, strategy, then seed.

    Frameworks are imported, and ``out`` is checked for writing, before any training, so
    a mistake costs no time. Files appear in ``out`` all at once, at the end. With several
    seeds every strategy is tested against ``baseline`` (:func:`~.results.summarize`).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"run_compare: 'seeds' must be an integer >= 1, got {seeds!r}")
    runners = {fw: get_runner(fw) for fw in frameworks}
    progress = progress or Progress(enabled=False)
    staged = StagedOutput(out) if out is not None else None
    seed_list = [settings.seed + i for i in range(seeds)]
    data = {settings.seed: splits}
    total = len(runners) * len(strategies) * seeds
    try:
        results: list[StrategyResult] = []
        for framework, runner in runners.items():
            for seed in seed_list:
                if seed not in data:
                    data[seed] = splits_for(seed) if splits_for is not None else splits
                seeded = replace(settings, seed=seed)
                for strategy in strategies:
                    results.append(_train_one(
                        runner, framework, strategy, data[seed], model, seeded, progress,
                        seed=seed, shown=(len(results) + 1, total) if seeds > 1 else None))
        order = {name: i for i, name in enumerate(s.name for s in strategies)}
        results.sort(key=lambda r: (frameworks.index(r.framework), order[r.strategy], r.seed or 0))
        if staged is not None:
            info = run_settings(runners, strategies, splits, model, settings, command,
                                seeds=seed_list)
            write_outputs(staged.path, results, info, runners, settings, command=command,
                          strategies=strategies, baseline=baseline)
            staged.commit()
        return results
    finally:
        progress.close()
        if staged is not None:
            staged.discard()


def _train_one(runner: FrameworkRunner, framework: str, strategy: Strategy, splits: Splits,
               model: ModelChoice, settings: TrainSettings, progress: Progress, *, seed: int,
               shown: tuple[int, int] | None) -> StrategyResult:
    """One run: ``strategy`` in ``framework`` with ``settings`` (whose seed is ``seed``);
    ``shown``: (run, runs) for the progress line, when there are several seeds."""
    progress.start(framework, strategy.name, epochs=settings.epochs,
                   seed=seed if shown else None, run=shown)
    try:
        outcome, plugins = train_strategy(runner, strategy, splits, model, settings,
                                          on_epoch=progress.epoch)
    except ModelError:
        raise  # names the model, the strategy and the framework already
    except (RegplugError, ValueError) as err:  # e.g. a plugin the adapter refuses
        where = f"{framework}, strategy {strategy.name!r}" + (f", seed {seed}" if shown else "")
        raise CompareError(f"{where}: {err}") from err
    result = make_result(framework, strategy.name, strategy.describe(), outcome,
                         strategy.build_plugins(), seed=seed)
    result.restored_epoch = restored_epoch(plugins)
    progress.finish(result)
    return result


def run_settings(runners: Mapping[str, FrameworkRunner], strategies: Sequence[Strategy],
                 splits: Splits, model: ModelChoice, settings: TrainSettings,
                 command: str, *, seeds: Sequence[int] = ()) -> dict[str, Any]:
    """What a reader of the results needs to know to reproduce them (``data`` describes the
    first seed's split; ``train_seeds`` lists every seed run)."""
    return {
        "command": command,
        "data": splits.describe(),
        "validation_fraction": VALIDATION_FRACTION,
        "train_rows": len(splits.x_train) if splits.train_rows_of is not None else None,
        "train_label_noise": splits.label_noise,  # both also in "data"
        **({"acc_train": noise_note(splits.label_noise)} if splits.label_noise else {}),
        "model": str(model),
        "training": settings.describe(),
        **{f"train_{k}": v for k, v in asdict(settings).items()},
        "train_seeds": list(seeds or [settings.seed]),
        "frameworks": {fw: runner.describe() for fw, runner in runners.items()},
        "strategies": [s.to_config() for s in strategies],
        "regplug": __version__,
        "python": platform.python_version(),
    }


def write_outputs(folder: Path, results: Sequence[StrategyResult], info: Mapping[str, Any],
                  runners: Mapping[str, FrameworkRunner], settings: TrainSettings, *,
                  command: str, strategies: Sequence[Strategy] = (),
                  baseline: str = BASELINE) -> None:
    """Figures, CSV, report and (last) results.json into ``folder``.

    Always: the gap per strategy (bars), loss and accuracy curves per framework. With
    several seeds: ``summary.csv`` (mean ± std and the tests against ``none``), a figure of
    every seed's accuracy and gap per strategy, the curves as mean and min–max band; the
    weight histograms show the first seed's runs, and the MC-dropout toy trains once, with
    ``settings.seed``.

    ``strategies`` decide which results the weight histograms show
    (:func:`~regplug.compare.plots.weight_strategies`); without them, every result's.
    """
    from ..experiment.toy import TOY_DROPOUT, regression_toy
    from . import plots
    from .report import write_report

    seeds = sorted({r.seed for r in results if r.seed is not None})
    several = len(seeds) > 1
    summaries = summarize(results, baseline=baseline) if several else []
    by_framework: dict[str, list[StrategyResult]] = {}
    for result in results:
        by_framework.setdefault(result.framework, []).append(result)
    figures: list[tuple[str, str]] = []
    if several:
        plots.plot_seed_spread(summaries, results, folder / "seed_spread.png")
        figures.append(("seed_spread.png", plots.seed_spread_caption(summaries)))
    plots.plot_gap_bars(results, folder / plots.GAP_FIGURE, summaries=summaries)
    figures.append((plots.GAP_FIGURE, plots.gap_caption(results, summaries)))
    for framework, rows in by_framework.items():
        for kind, plot, describe in (
                ("loss", plots.plot_loss_curves, plots.loss_curves_caption),
                ("accuracy", plots.plot_accuracy_curves, plots.accuracy_curves_caption)):
            name = f"{kind}_curves_{framework}.png"
            what = "cross-entropy" if kind == "loss" else "accuracy"
            plot(rows, folder / name, title=f"{framework}: training vs validation {what}"
                                            + (f", {len(seeds)} seeds" if several else ""))
            figures.append((name, describe(framework, seeds=len(seeds))))
    if strategies:
        shown, left_out = plots.weight_strategies(strategies)
    else:
        names = list(dict.fromkeys(r.strategy for r in results))
        shown, left_out = names[:plots.MAX_WEIGHT_PANELS], names[plots.MAX_WEIGHT_PANELS:]
    if shown:
        # one seed's weights (the first): a histogram of every seed would hide the shapes
        first = {fw: [r for r in rows if r.seed in (None, settings.seed)]
                 for fw, rows in by_framework.items()}
        plots.plot_weight_histograms(first, folder / "weight_histograms.png", shown=shown)
        caption = plots.weight_histogram_caption(shown, left_out)
        figures.append(("weight_histograms.png", caption + (
            f" Seed {settings.seed}'s runs." if several else "")))
    else:
        log.info("no strategy penalizes or changes the weights: no weight histogram")
    framework, runner = next(iter(runners.items()))
    toy = regression_toy(settings.seed)
    start = time.perf_counter()
    prediction = runner.mc_dropout(toy, seed=settings.seed)
    log.info("MC-dropout toy trained and sampled in %.1fs", time.perf_counter() - start)
    spread = plots.uncertainty_by_region(toy, prediction)
    plots.plot_uncertainty(toy, prediction, folder / "uncertainty_mc_dropout.png",
                           title=f"MC dropout ({framework}, rate {TOY_DROPOUT:g}): "
                                 f"{prediction.T} stochastic predictions")
    figures.append(("uncertainty_mc_dropout.png",
                    plots.uncertainty_caption(spread, samples=prediction.T)))
    write_csv(folder / "results.csv", results)
    extra: dict[str, Any] = {}
    if several:
        write_summary_csv(folder / "summary.csv", summaries)
        statement = baseline_statement(summaries)
        extra = {"seeds": seeds, "summary": [s.row() for s in summaries], "test": statement,
                 "table": format_summary_table(summaries)}
    write_report(folder / "report.html", results, info, figures, command=command,
                 summaries=summaries)
    write_json(folder / "results.json", results, info,
               extra={"table": format_table(results), **extra,
                      "figures": [n for n, _ in figures],
                      "captions": dict(figures),
                      "uncertainty": {"framework": framework, "mean_std": spread},
                      "restored_epochs": {_run_key(r, several): r.restored_epoch
                                          for r in results if r.restored_epoch is not None}})


def _run_key(result: StrategyResult, several: bool) -> str:
    """``framework/strategy``, and ``/seed N`` with several seeds (``restored_epochs``)."""
    key = f"{result.framework}/{result.strategy}"
    return f"{key}/seed {result.seed}" if several else key

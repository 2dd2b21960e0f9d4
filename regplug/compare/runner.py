"""Run a comparison: every strategy under every framework, then the table, files and figures.

The frameworks' runners (:class:`~regplug.compare.frameworks.FrameworkRunner`) come from the
registry in :mod:`regplug.compare.frameworks`, loaded only when their framework is asked for.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RegplugError
from .datasets import VALIDATION_FRACTION, Splits
from .frameworks import EpochCallback, FrameworkRunner, TrainSettings, get_runner
from .models import ModelChoice, ModelError
from .output import StagedOutput
from .progress import Progress
from .results import StrategyResult, format_table, make_result, write_csv, write_json
from .strategies import Strategy

__all__ = ["TrainSettings", "run_compare", "write_outputs", "EpochCallback", "CompareError"]

log = logging.getLogger(__name__)

class CompareError(RegplugError, ValueError):
    """A strategy could not be trained (the message names the framework and strategy)."""


def run_compare(*, frameworks: Sequence[str], strategies: Sequence[Strategy], splits: Splits,
                model: ModelChoice, settings: TrainSettings, out: str | Path | None = None,
                progress: Progress | None = None, command: str = "regplug compare"
                ) -> list[StrategyResult]:
    """Train ``model`` under every strategy with every framework; write ``out`` if given.

    Frameworks are imported, and ``out`` is checked for writing, before any training, so
    a mistake costs no time. Files appear in ``out`` all at once, at the end.
    """
    runners = {fw: get_runner(fw) for fw in frameworks}
    progress = progress or Progress(enabled=False)
    staged = StagedOutput(out) if out is not None else None
    try:
        results: list[StrategyResult] = []
        for framework, runner in runners.items():
            for strategy in strategies:
                progress.start(framework, strategy.name, epochs=settings.epochs)
                plugins = strategy.build_plugins()
                try:
                    outcome = runner.train_strategy(splits, strategy, plugins,
                                                    model, settings, on_epoch=progress.epoch)
                except ModelError:
                    raise  # names the model, the strategy and the framework already
                except (RegplugError, ValueError) as err:  # e.g. a plugin the adapter refuses
                    raise CompareError(f"{framework}, strategy {strategy.name!r}: "
                                       f"{err}") from err
                result = make_result(framework, strategy.name, strategy.describe(), outcome,
                                     strategy.build_plugins())
                result.restored_epoch = restored_epoch(plugins)
                progress.finish(result)
                results.append(result)
        if staged is not None:
            info = run_settings(runners, strategies, splits, model, settings, command)
            write_outputs(staged.path, results, info, runners, settings, command=command,
                          strategies=strategies)
            staged.commit()
        return results
    finally:
        progress.close()
        if staged is not None:
            staged.discard()


def restored_epoch(plugins: Sequence[object]) -> int | None:
    """The epoch (from 0) whose weights a plugin put back at the end of training — the
    ``restored_epoch`` of :class:`regplug.plugins.EarlyStopping` — else ``None``."""
    for plugin in plugins:
        epoch = getattr(plugin, "restored_epoch", None)
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            return epoch
    return None


def run_settings(runners: Mapping[str, FrameworkRunner], strategies: Sequence[Strategy],
                 splits: Splits, model: ModelChoice, settings: TrainSettings,
                 command: str) -> dict[str, Any]:
    """What a reader of the results needs to know to reproduce them."""
    return {
        "command": command,
        "data": splits.describe(),
        "validation_fraction": VALIDATION_FRACTION,
        "model": str(model),
        "training": settings.describe(),
        **{f"train_{k}": v for k, v in asdict(settings).items()},
        "frameworks": {fw: runner.describe() for fw, runner in runners.items()},
        "strategies": [s.to_config() for s in strategies],
        "regplug": __version__,
        "python": platform.python_version(),
    }


def write_outputs(folder: Path, results: Sequence[StrategyResult], info: Mapping[str, Any],
                  runners: Mapping[str, FrameworkRunner], settings: TrainSettings, *,
                  command: str, strategies: Sequence[Strategy] = ()) -> None:
    """Figures, CSV, report and (last) results.json into ``folder``.

    ``strategies`` decide which results the weight histograms show
    (:func:`~regplug.compare.plots.weight_strategies`); without them, every result's.
    """
    from . import plots
    from .report import write_report
    from .toy import TOY_DROPOUT, regression_toy

    by_framework: dict[str, list[StrategyResult]] = {}
    for result in results:
        by_framework.setdefault(result.framework, []).append(result)
    figures: list[tuple[str, str]] = []
    for framework, rows in by_framework.items():
        name = f"loss_curves_{framework}.png"
        plots.plot_loss_curves(rows, folder / name,
                               title=f"{framework}: training vs validation cross-entropy")
        figures.append((name, f"{framework}: training (blue) and validation (orange) "
                              "cross-entropy per epoch, one panel per strategy; a dotted line "
                              "marks where a run stopped early, a dashed one the epoch whose "
                              "weights early stopping restored"))
    if strategies:
        shown, left_out = plots.weight_strategies(strategies)
    else:
        names = list(dict.fromkeys(r.strategy for r in results))
        shown, left_out = names[:plots.MAX_WEIGHT_PANELS], names[plots.MAX_WEIGHT_PANELS:]
    if shown:
        plots.plot_weight_histograms(by_framework, folder / "weight_histograms.png", shown=shown)
        figures.append(("weight_histograms.png",
                        plots.weight_histogram_caption(shown, left_out)))
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
    write_report(folder / "report.html", results, info, figures, command=command)
    write_json(folder / "results.json", results, info,
               extra={"table": format_table(results), "figures": [n for n, _ in figures],
                      "captions": dict(figures),
                      "uncertainty": {"framework": framework, "mean_std": spread},
                      "restored_epochs": {f"{r.framework}/{r.strategy}": r.restored_epoch
                                          for r in results if r.restored_epoch is not None}})

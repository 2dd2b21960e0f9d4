"""``regplug doctor``: overfit one batch, train a baseline with :class:`LayerMonitor`, judge
the curves (:func:`~regplug.doctor.diagnosis.diagnose`); when it overfits, search a fix with
``regplug tune``'s pruned search and test it against ``none`` over seeds (``compare``'s
paired t-test). Nothing here imports a framework or Optuna at import time.

Docs: docs/doctor.md
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shlex
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import RegplugError
from ..experiment.arguments import add_training_arguments, positive_int

if TYPE_CHECKING:
    from ..experiment.datasets import Splits
    from ..experiment.frameworks import FrameworkRunner, TrainSettings
    from ..experiment.models import ModelChoice
    from ..experiment.strategies import Strategy
    from ..experiment.training import TrainOutcome
    from .diagnosis import Diagnosis

__all__ = ["add_doctor_parser", "cmd_doctor", "DoctorError", "Budget", "parse_budget",
           "DoctorRun", "FixSearch", "SeedTest", "DataCurve", "seed_test_notes",
           "weakest_notes", "run_doctor",
           "DEFAULT_DATA", "DEFAULT_EPOCHS", "DEFAULT_BUDGET", "DEFAULT_SEEDS", "BATCH_STEPS"]

#: The defaults of a plain ``regplug doctor``: the notebook's MLP on the 5,000 MNIST rows.
DEFAULT_DATA = "mnist"
DEFAULT_EPOCHS = 20
DEFAULT_BUDGET = "16"
DEFAULT_SEEDS = 3
#: Steps of the overfit-one-batch check (OverfitBatch's default).
BATCH_STEPS = 100
#: Up to this many trials per strategy, the search is a grid (else TPE).
GRID_TRIALS = 10
#: Fewest validation rows a diagnosis is made on.
MIN_VALIDATION_ROWS = 10
#: The paired test's level: a fix "beats seed noise" when p < this and it lowers pct_diff.
ALPHA = 0.05


class DoctorError(RegplugError, ValueError):
    """A doctor command line that cannot be run (one line, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """``--budget``: a number of trainings, or seconds (``120s``)."""

    trainings: int | None = None
    seconds: float | None = None

    def describe(self) -> str:
        return (f"{self.trainings} trainings" if self.trainings is not None
                else f"{self.seconds:g} s")


def parse_budget(text: str) -> Budget:
    """``"16"`` → 16 trainings; ``"120s"`` → 120 seconds.

    >>> parse_budget("16"), parse_budget("90s")
    (Budget(trainings=16, seconds=None), Budget(trainings=None, seconds=90.0))
    """
    raw = text.strip().lower()
    try:
        if raw.endswith("s"):
            seconds = float(raw[:-1])
            if seconds > 0 and math.isfinite(seconds):
                return Budget(seconds=seconds)
        else:
            trainings = int(raw)
            if trainings > 0:
                return Budget(trainings=trainings)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"must be a positive number of trainings (16) or of "
                                     f"seconds (120s), got {text!r}")


def min_trainings(strategies: int, seeds: int) -> int:
    """Trainings a run needs to reach a verdict on a fix: the baseline, one trial per
    strategy searched, and the seed test (the baseline counts as ``none``'s first seed)."""
    return 1 + strategies + (2 * seeds - 1)


_EPILOG = """\
examples:
  regplug doctor                                    # the notebook's MLP on MNIST
  regplug doctor --data mnist --train-rows 500 --label-noise 0.3 --out doctor-out
  regplug doctor --model my_models:factory --framework keras --budget 120s

Steps: (a) overfit one batch (can the loop learn at all?), (b) a baseline with LayerMonitor
and the verdict from its curves: bug, unstable, overfitting, underfitting or healthy;
(c) overfitting only: a pruned search of the strategies the evidence suggests, then (d) the
best against none over --seeds seeds, a paired t-test on pct_diff. Thresholds: docs/doctor.md.
"""


def add_doctor_parser(sub: Any) -> None:
    """Add ``doctor`` to the ``regplug`` subcommands."""
    from ..experiment.frameworks import TrainSettings

    p = sub.add_parser(
        "doctor", help="diagnose a training setup: bug, unstable, overfitting, underfitting "
                       "or healthy, and which regularizer at which strength",
        description=textwrap.fill(
            "The lecture's checklist as one command: overfit one batch, train a baseline "
            "with per-layer monitoring, judge its curves, and when it overfits search a "
            "regularizer (regplug tune's pruned search) and test it against seed noise "
            "(regplug compare's paired test). Defaults: --data mnist, the notebook's MLP, "
            f"{DEFAULT_EPOCHS} epochs.", width=88),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=("torch", "keras"), default="torch",
                   help="which framework trains (default: torch)")
    add_training_arguments(p, TrainSettings(epochs=DEFAULT_EPOCHS), per="strategy",
                           seed_help="seed of the data split and the baseline (the seed test "
                                     "runs the following ones)", epochs_from_preset=True)
    # the shared options' help says "the preset's" where their default is left open: the
    # doctor's own defaults fill them (cmd_doctor)
    own = {"--data": f"(default: {DEFAULT_DATA})", "--train-rows": "(default: all)",
           "--label-noise": "(default 0)", "--epochs": f"(default {DEFAULT_EPOCHS})"}
    for action in p._actions:
        for option, text in own.items():
            if option in action.option_strings and action.help:
                action.help = action.help.replace("(default: the preset's)", text).replace(
                    "epochs per strategy", "epochs per training")
    p.add_argument("--strategy", default="none", metavar="NAME",
                   help="the setup to diagnose: a strategy of regplug compare --list or of "
                        "--config (default: none)")
    p.add_argument("--config", metavar="FILE.toml", help="custom [[strategies]] for --strategy")
    p.add_argument("--budget", type=parse_budget, default=parse_budget(DEFAULT_BUDGET),
                   metavar="N|Ns",
                   help=f"trainings (default {DEFAULT_BUDGET}) or seconds (120s) for the whole "
                        "run; the search gets what the baseline and the seed test leave")
    p.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                   help=f"seeds of the fix's test against none (default {DEFAULT_SEEDS}; "
                        "at least 2)")
    p.add_argument("--out", metavar="DIR",
                   help="write diagnosis.md, report.html, best.toml, results.json and the "
                        "figures to DIR, all at once at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_doctor)


# -- what a run found ------------------------------------------------------------------------

@dataclasses.dataclass
class FixSearch:
    """Step (c): the strategies searched, each one's best, and the overall best."""

    strategies: list[str]
    trials: int
    rows: list[dict[str, Any]]
    best: Any = None           # BestSetting of the winner, or None
    seconds: float = 0.0
    sampler: str = "tpe"
    ran: int = 0               # trials run, all strategies together


@dataclasses.dataclass
class SeedTest:
    """Step (d): pct_diff of the baseline and of the fix per seed, and the paired test."""

    seeds: list[int]
    baseline: list[dict[str, float]]
    fix: list[dict[str, float]]
    t: float
    p: float
    mean_diff: float
    ci95: tuple[float, float]
    #: The same paired test on test accuracy (a fix can narrow pct_diff by lowering
    #: training accuracy alone: this says whether the test rows gained too).
    acc_p: float = math.nan
    acc_mean_diff: float = math.nan

    @property
    def beats_noise(self) -> bool:
        return self.mean_diff < 0 and self.p < ALPHA

    @property
    def raises_test_accuracy(self) -> bool:
        return self.acc_mean_diff > 0 and self.acc_p < ALPHA

    def mean(self, rows: str, key: str) -> float:
        values = [r[key] for r in (self.baseline if rows == "baseline" else self.fix)]
        return sum(values) / len(values)


@dataclasses.dataclass
class DataCurve:
    """Step (e), where the fix did not raise test accuracy: does more data? The baseline
    on half the training rows (one seed) against all of them (the seed test's seeds)."""

    half_rows: int
    rows: int
    acc_half: float
    acc_full: list[float]

    @property
    def gain(self) -> float:
        return sum(self.acc_full) / len(self.acc_full) - self.acc_half

    @property
    def noise(self) -> float:
        """Two standard deviations of ``gain`` under seed noise alone: the seed-to-seed
        spread of the full-rows runs, for one half-rows run against their mean."""
        k = len(self.acc_full)
        mean = sum(self.acc_full) / k
        sd = math.sqrt(sum((a - mean) ** 2 for a in self.acc_full) / max(k - 1, 1))
        return 2 * sd * math.sqrt(1 + 1 / k)

    @property
    def climbing(self) -> bool:
        return self.gain > self.noise

    def verdict(self) -> str:
        line = (f"data curve (e): test accuracy {self.acc_half:.3f} on {self.half_rows} "
                f"training rows -> {self.gain + self.acc_half:.3f} on {self.rows} (a gain of "
                f"{self.gain:+.3f}, seed noise {self.noise:.3f})")
        return line + (": still climbing: more rows (or augmentation) is the cure here, "
                       "more than a regularizer" if self.climbing else
                       ": flat within seed noise: more rows of the same kind would not help much")


@dataclasses.dataclass
class DoctorRun:
    """Everything one doctor run found."""

    diagnosis: Diagnosis
    history: dict[str, list[float]]
    baseline: Strategy
    splits: Splits
    settings: TrainSettings
    framework: str
    acc_train: float | None = None
    acc_test: float | None = None
    error: str | None = None
    search: FixSearch | None = None
    seeds: SeedTest | None = None
    curve: DataCurve | None = None
    #: ``regplug compare`` arguments that train what the doctor trained (the same data,
    #: rows, labels, model and settings): its preset's own defaults differ.
    compare_args: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        """The printed diagnosis: verdict and evidence, then steps (c) and (d)."""
        lines = [self.diagnosis.text()]
        if self.search is not None:
            each = (f"{self.search.trials} trial(s) each" if self.search.trials
                    else f"{self.search.ran} trial(s) in the time the budget left")
            lines.append(f"search (c): {', '.join(self.search.strategies)}, {each}, "
                         f"{self.search.sampler}, "
                         "median-pruned after a third of the epochs "
                         f"({self.search.seconds:.1f}s)")
            for row in self.search.rows:
                lines.append(f"  {row['strategy']:<16} {row['outcome']}")
        if self.seeds is not None:
            s = self.seeds
            base = sum(r["pct_diff"] for r in s.baseline) / len(s.baseline)
            fix = sum(r["pct_diff"] for r in s.fix) / len(s.fix)
            name = self.search.best.strategy if self.search and self.search.best else "fix"
            lines.append(
                f"seed test (d): pct_diff {base:.3f} ({self.baseline.name}) -> {fix:.3f} "
                f"({name}_tuned), mean difference {s.mean_diff:+.3f} [95% CI "
                f"{s.ci95[0]:+.3f}, {s.ci95[1]:+.3f}], paired t-test p = {s.p:.3g} over "
                f"{len(s.seeds)} seeds: "
                + ("the fix beats seed noise" if s.beats_noise
                   else "not beyond seed noise"))
            if not math.isnan(s.acc_mean_diff):
                lines.append(
                    f"  test accuracy {s.mean('baseline', 'acc_test'):.3f} -> "
                    f"{s.mean('fix', 'acc_test'):.3f} (mean difference {s.acc_mean_diff:+.3f}, "
                    f"p = {s.acc_p:.3g}), training accuracy "
                    f"{s.mean('baseline', 'acc_train'):.3f} -> {s.mean('fix', 'acc_train'):.3f}")
        if self.curve is not None:
            lines.append(self.curve.verdict())
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Checked:
    baseline: Strategy
    model: ModelChoice
    budget: Budget


def _check(args: argparse.Namespace) -> _Checked:
    """Refuse every mistake in the command line before a framework or the data loads."""
    from ..experiment.datasets import check_data_name
    from ..experiment.models import resolve_model
    from ..experiment.output import StagedOutput
    from ..experiment.strategies import load_strategies, select_strategies
    from ..tune.errors import import_optuna

    custom = load_strategies(args.config) if args.config else {}
    chosen = select_strategies(args.strategy, custom)
    if len(chosen) != 1:
        raise DoctorError(f"--strategy {args.strategy!r}: name one strategy (the setup to "
                          "diagnose), e.g. --strategy none")
    if args.seeds < 2:
        raise DoctorError(f"--seeds {args.seeds}: the paired test needs at least 2 seeds; "
                          "give --seeds 2 or more")
    budget: Budget = args.budget
    need = min_trainings(2, args.seeds)
    if budget.trainings is not None and budget.trainings < need:
        raise DoctorError(
            f"--budget {budget.trainings}: too small for step (c): the baseline takes 1 "
            f"training, the search at least 2, the seed test {2 * args.seeds - 1}; give "
            f"--budget {need} or more (or fewer --seeds)")
    import_optuna()  # step (c) searches with Optuna: say so now, not after the baseline
    model = resolve_model(args.model)
    check_data_name(args.data)
    if args.out is not None:
        StagedOutput(args.out).discard()
    return _Checked(chosen[0], model, budget)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check, run the steps, print the diagnosis, write ``--out``."""
    from ..experiment.output import exit_cleanly_on_sigterm

    args.data = args.data if args.data is not None else DEFAULT_DATA
    args.epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS
    checked = _check(args)
    with exit_cleanly_on_sigterm():
        result = run_doctor(
            framework=args.framework, data=args.data, model=checked.model,
            baseline=checked.baseline, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, seed=args.seed, train_rows=args.train_rows,
            label_noise=args.label_noise or 0.0, budget=checked.budget, seeds=args.seeds,
            quiet=args.quiet, announce=True)
        print()
        print(result.text())
        if args.out is not None:
            from .report import write_all

            command = "regplug doctor " + shlex.join(_forwarded(getattr(args, "argv", [])))
            write_all(args.out, result, command=command, model=str(checked.model))
            print(f"wrote {args.out}: diagnosis.md, report.html, best.toml, results.json and "
                  "the figures")
    return 0


def _forwarded(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    return args[args.index("doctor") + 1:] if "doctor" in args else []


def run_doctor(*, framework: str = "torch", data: str | None = DEFAULT_DATA,
               model: ModelChoice | str | None = None, baseline: Strategy | str = "none",
               epochs: int = DEFAULT_EPOCHS, batch_size: int = 128, lr: float = 0.05,
               seed: int = 0, train_rows: int | None = None, label_noise: float = 0.0,
               budget: Budget | None = None, seeds: int = DEFAULT_SEEDS,
               search: bool = True, quiet: bool = True, announce: bool = False,
               stream: Any = None) -> DoctorRun:
    """Run the doctor's steps; what they found (the Python side of ``regplug doctor``).

    ``search=False`` stops after the verdict (steps (a) and (b) only)."""
    from ..compare.progress import Progress
    from ..experiment.datasets import load_splits
    from ..experiment.frameworks import TrainSettings, get_runner
    from ..experiment.models import resolve_model
    from ..experiment.strategies import select_strategies

    start = time.perf_counter()
    out = stream if stream is not None else sys.stdout
    budget = budget or parse_budget(DEFAULT_BUDGET)
    choice = model if not isinstance(model, str) and model is not None else resolve_model(model)
    base = baseline if not isinstance(baseline, str) else select_strategies(baseline)[0]
    splits = load_splits(data, seed=seed, train_rows=train_rows, label_noise=label_noise)
    if len(splits.x_val) < MIN_VALIDATION_ROWS or len(splits.x_train) < 2:
        raise DoctorError(
            f"--data {data}: too small for a validation split: {splits.describe()}; the "
            f"doctor judges the curves on at least {MIN_VALIDATION_ROWS} validation rows: "
            f"give at least {math.ceil(MIN_VALIDATION_ROWS / 0.15)} training rows")
    runner = get_runner(framework)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed)
    progress = Progress(out, enabled=not quiet)
    if announce:
        print(f"data:       {splits.describe()}", file=out)
        print(f"model:      {choice}", file=out)
        print(f"training:   {settings.describe()}, strategy {base.name}", file=out)
        print(f"framework:  {runner.describe()}", file=out)
        print(f"budget:     {budget.describe()}", file=out, flush=True)
    history, outcome, batch, error = _baseline(runner, framework, base, splits, choice,
                                               settings, progress)
    from .diagnosis import diagnose

    regularizers = [str(p["name"]) for p in base.plugins
                    if str(p["name"]) in _regularizing()]
    if base.dropout:
        regularizers.append(f"dropout {base.dropout:g}")
    diagnosis = diagnose(history, batch=batch, n_classes=splits.n_classes,
                         regularizers=regularizers)
    if error is not None and diagnosis.verdict != "bug":
        diagnosis.verdict = "bug"
        diagnosis.evidence.insert(0, f"training raised: {error}")
    result = DoctorRun(diagnosis, history, base, splits, settings, framework,
                       acc_train=outcome.acc_train if outcome else None,
                       acc_test=outcome.acc_test if outcome else None, error=error)
    result.compare_args = [
        "--framework", framework, "--data", data if data is not None else "digits",
        "--train-rows", str(len(splits.x_train)), "--label-noise", f"{label_noise:g}",
        "--model", choice.name, "--epochs", str(epochs), "--batch-size", str(batch_size),
        "--lr", f"{lr:g}", "--seed", str(seed), "--seeds", str(seeds)]
    if search and diagnosis.verdict == "overfitting" and outcome is not None:
        _fix(result, runner, outcome, choice, budget, seeds, progress, out, quiet, start)
    result.seconds = time.perf_counter() - start
    return result


def _regularizing() -> frozenset[str]:
    from .diagnosis import REGULARIZING_PLUGINS

    return REGULARIZING_PLUGINS


def _baseline(runner: FrameworkRunner, framework: str, base: Strategy, splits: Splits,
              choice: ModelChoice, settings: TrainSettings, progress: Any
              ) -> tuple[dict[str, list[float]], TrainOutcome | None, Any, str | None]:
    """Steps (a) and (b) in one training: OverfitBatch runs first (and leaves no trace),
    then the baseline trains with LayerMonitor."""
    from ..experiment.models import ModelError
    from ..experiment.training import train_strategy
    from ..plugins import LayerMonitor, OverfitBatch
    from .diagnosis import BatchCheck

    n = min(settings.batch_size, len(splits.x_train))
    check = OverfitBatch(splits.x_train[:n], splits.y_train[:n], steps=BATCH_STEPS,
                         on_fail="warn", verbose=False)
    monitor = LayerMonitor()
    progress.start(framework, f"baseline {base.name}", epochs=settings.epochs,
                   seed=settings.seed)
    outcome: TrainOutcome | None = None
    error: str | None = None
    sanity_log = logging.getLogger(OverfitBatch.__module__)
    level = sanity_log.level
    sanity_log.setLevel(logging.ERROR)  # its failure is the diagnosis' evidence, not a warning
    try:
        outcome, _ = train_strategy(runner, base, splits, choice, settings,
                                    extra=[check, monitor], on_epoch=progress.epoch)
    except ModelError:
        progress.close()
        raise
    except (RuntimeError, ValueError, ArithmeticError, TypeError, RegplugError) as err:
        progress.close()
        error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    finally:
        sanity_log.setLevel(level)
    if error is not None and not check.verdicts:
        # training stopped before its first hook: the factory or the first forward pass
        raise DoctorError(f"--model {choice.name}: the model cannot be built or run on the "
                          f"data: {error}; fix the factory (regplug compare --model takes "
                          "the same)")
    if outcome is not None:
        progress.finish(_result(framework, f"baseline {base.name}", outcome, settings.seed))
    history = dict(outcome.history) if outcome is not None else {}
    batch = None
    if check.verdicts:
        v = check.verdicts[0]
        batch = BatchCheck(v.initial, v.final, v.passed, v.steps, v.hints)
    elif error is not None:
        batch = BatchCheck(math.nan, math.nan, False, BATCH_STEPS, (), error)
    return history, outcome, batch, error


def _result(framework: str, name: str, outcome: TrainOutcome, seed: int | None) -> Any:
    from ..compare.results import StrategyResult
    from ..functional import pct_diff

    return StrategyResult(framework, name, "", outcome.acc_train, outcome.acc_test,
                          pct_diff(outcome.acc_train, outcome.acc_test), outcome.epochs, 0.0,
                          0.0, outcome.seconds, outcome.stop_reason, seed=seed)


def _fix(result: DoctorRun, runner: FrameworkRunner, baseline: TrainOutcome,
         choice: ModelChoice, budget: Budget, seeds: int, progress: Any, out: Any,
         quiet: bool, start: float) -> None:
    """Steps (c) and (d): search the suggested strategies, test the best against none."""
    from ..experiment.strategies import BUILTIN_STRATEGIES
    from ..tune.search import Objective, Search, format_params
    from ..tune.strategy_space import strategy_space

    names = [s for s in result.diagnosis.strategies if s in BUILTIN_STRATEGIES]
    spaces = [strategy_space(BUILTIN_STRATEGIES[s]) for s in names]
    spaces = [sp for sp in spaces if sp.parameters]
    compare_cost = 2 * seeds - 1
    per = max(baseline.seconds, 1e-3)
    curve = False  # step (e), the half-rows training: only where the budget leaves it room
    if budget.trainings is not None:
        left = budget.trainings - 1 - compare_cost
        curve = left > len(spaces)
        left -= curve
        trials = left // len(spaces)
        if trials < 1:  # fewer strategies then, most suggested first
            spaces = spaces[:max(left, 1)]
            trials = 1
        timeout = None
    else:
        assert budget.seconds is not None
        elapsed = time.perf_counter() - start  # start-up, data and the baseline
        left_s = budget.seconds - elapsed - compare_cost * per
        if left_s < 2 * per:
            need = math.ceil(elapsed + (2 + compare_cost) * per * 1.2) + 5
            raise DoctorError(
                f"--budget {budget.seconds:g}s: too small for step (c): {elapsed:.0f}s went to "
                f"start-up and the baseline ({per:.1f}s a training), the search needs at "
                f"least 2 trainings and the seed test {compare_cost}; give --budget {need}s "
                "or more")
        curve = left_s - per / 2 >= 2 * per
        trials, timeout = 1000, left_s - (per / 2 if curve else 0.0)
    objective = Objective("val_cross_entropy")
    # A few trials per strategy: TPE would still be sampling at random (its first 10 are),
    # so a grid of that many points spreads them evenly over each range instead.
    grid = timeout is None and trials <= GRID_TRIALS
    search = Search(spaces=spaces, runner=runner, splits=result.splits, model=choice,
                    settings=result.settings, objective=objective,
                    sampler="grid" if grid else "tpe", grid_points=max(trials, 2),
                    pruner="median", seed=result.settings.seed,
                    warmup_epochs=result.settings.epochs // 3)
    width = max(len(sp.strategy.name) for sp in spaces) + 2

    def show(record: Any) -> None:
        if not quiet:
            secs = f"{record.seconds:.1f}s" if record.seconds is not None else ""
            print(f"search {record.strategy:<{width}}#{record.number:<3} "
                  f"{format_params(record.params)}  {record.describe_outcome(objective)}  "
                  f"{secs}".rstrip(), file=out, flush=True)

    t0 = time.perf_counter()
    search.run(trials=trials, timeout=timeout, on_trial=show)
    rows, bests = [], []
    for name in search.studies:
        best = search.best(name)
        rows.append({"strategy": name, "value": best.value if best else None,
                     "params": best.params if best else {},
                     "outcome": (f"best val_cross_entropy {best.value:.4f} at "
                                 f"{format_params(best.params)}") if best
                     else "no complete trial"})
        if best is not None:
            bests.append(best)
    fix = FixSearch([sp.strategy.name for sp in spaces], trials if timeout is None else 0, rows)
    fix.seconds = time.perf_counter() - t0
    fix.sampler = "grid" if grid else "tpe"
    fix.ran = sum(len(r) for r in search.records().values())
    if bests:
        fix.best = min(bests, key=lambda b: b.value)
    result.search = fix
    if fix.best is None:
        result.notes.append("no trial of the search completed: no fix to test")
        return
    lows = {prm.name: getattr(prm.space, "low", None) for sp in spaces
            if sp.strategy.name == fix.best.strategy for prm in sp.parameters
            if prm.key.rsplit(".", 1)[-1] in STRENGTH_KEYS}
    result.notes += weakest_notes(fix.best.params, lows)
    result.seeds = _seed_test(result, runner, baseline, choice, fix.best.tuned, seeds,
                              progress)
    if curve and not result.seeds.raises_test_accuracy:
        result.curve = _data_curve(result, runner, choice, progress)
    result.notes += seed_test_notes(result.seeds, len(result.splits.x_train))


def _data_curve(result: DoctorRun, runner: FrameworkRunner, choice: ModelChoice,
                progress: Any) -> DataCurve:
    """Step (e): none on the first half of the training rows, baseline seed; its test
    accuracy against the seed test's none rows (all the training rows)."""
    from ..experiment.training import train_strategy

    assert result.seeds is not None
    half = max(len(result.splits.x_train) // 2, 1)
    splits = dataclasses.replace(result.splits, x_train=result.splits.x_train[:half],
                                 y_train=result.splits.y_train[:half])
    name = f"{result.baseline.name} ({half} rows)"
    progress.start(result.framework, name, epochs=result.settings.epochs,
                   seed=result.settings.seed)
    o, _ = train_strategy(runner, result.baseline, splits, choice, result.settings,
                          on_epoch=progress.epoch)
    progress.finish(_result(result.framework, name, o, result.settings.seed))
    full = [r["acc_test"] for r in result.seeds.baseline]
    return DataCurve(half, len(result.splits.x_train), o.acc_test, full)


def _seed_test(result: DoctorRun, runner: FrameworkRunner, baseline: TrainOutcome,
               choice: ModelChoice, tuned: Strategy, seeds: int, progress: Any) -> SeedTest:
    """Train none and the fix over ``seeds`` seeds (the baseline is none's first); the
    paired t-test of pct_diff (1 − acc_test / acc_train), as ``regplug compare`` runs it."""
    from ..compare.stats import paired_t_test
    from ..experiment.training import train_strategy
    from ..functional import pct_diff

    first = result.settings.seed
    seed_list = [first + k for k in range(seeds)]
    base_rows: list[dict[str, float]] = []
    fix_rows: list[dict[str, float]] = []

    def row(o: TrainOutcome) -> dict[str, float]:
        return {"acc_train": o.acc_train, "acc_test": o.acc_test,
                "pct_diff": pct_diff(o.acc_train, o.acc_test)}

    for s in seed_list:
        settings = dataclasses.replace(result.settings, seed=s)
        if s == first:
            base_rows.append(row(baseline))
        else:
            progress.start(result.framework, result.baseline.name, epochs=settings.epochs,
                           seed=s)
            o, _ = train_strategy(runner, result.baseline, result.splits, choice, settings,
                                  on_epoch=progress.epoch)
            progress.finish(_result(result.framework, result.baseline.name, o, s))
            base_rows.append(row(o))
        name = tuned.name + "_tuned"
        progress.start(result.framework, name, epochs=settings.epochs, seed=s)
        o, _ = train_strategy(runner, tuned, result.splits, choice, settings,
                              on_epoch=progress.epoch)
        progress.finish(_result(result.framework, name, o, s))
        fix_rows.append(row(o))
    test = paired_t_test([r["pct_diff"] for r in fix_rows], [r["pct_diff"] for r in base_rows])
    acc = paired_t_test([r["acc_test"] for r in fix_rows], [r["acc_test"] for r in base_rows])
    return SeedTest(seed_list, base_rows, fix_rows, test.t, test.p, test.mean_diff, test.ci95,
                    acc_p=acc.p, acc_mean_diff=acc.mean_diff)


#: Parameters whose low end is the weakest regularization (a patience's is the strongest).
STRENGTH_KEYS = frozenset({"l2", "l1", "dropout", "weight_decay", "strength"})


def weakest_notes(params: dict[str, Any], lows: dict[str, float | None]) -> list[str]:
    """A note where the search's best is the weakest setting of every range searched: then
    no regularizer helped, and the seed test compares near-equal setups.

    >>> weakest_notes({"l2.l2": 1e-06}, {"l2.l2": 1e-06})[0][:52]
    'the best setting is the weakest of its range (l2.l2='
    >>> weakest_notes({"l2.l2": 0.002}, {"l2.l2": 1e-06})
    []
    """
    if not lows or any(params.get(k) is None or low is None or params[k] > low * (1 + 1e-9)
                       for k, low in lows.items()):
        return []
    shown = ", ".join(f"{k}={params[k]:g}" for k in lows)
    return [f"the best setting is the weakest of its range ({shown}): no regularizer searched "
            "lowered the validation loss below (almost) none's, so the seed test compares "
            "near-equal setups; a larger --budget searches the ranges more finely"]


def seed_test_notes(s: SeedTest, train_rows: int) -> list[str]:
    """What the seed test's numbers say about the fix, in words that follow from them."""
    train_fix = s.mean("fix", "acc_train")
    if s.beats_noise and not s.raises_test_accuracy:
        return [f"the fix narrowed the gap by lowering training accuracy "
                f"({s.mean('baseline', 'acc_train'):.3f} -> {train_fix:.3f}), not by a test "
                f"accuracy gain beyond seed noise (p = {s.acc_p:.3g}): judge it by test "
                "accuracy too"]
    if s.beats_noise:
        return []
    if train_fix >= 0.99:
        return [f"the best setting did not narrow the gap beyond seed noise, and training "
                f"accuracy stays at {train_fix:.3f} with it: the model still fits "
                f"{train_fix:.1%} of its {train_rows} training rows, so the gap is not "
                "memorized noise that a stronger regularizer would remove (the data curve (e) "
                "says whether more rows would)"]
    return [f"the best setting did not narrow the gap beyond seed noise (it lowered training "
            f"accuracy to {train_fix:.3f}): keep the setup, or get more rows"]


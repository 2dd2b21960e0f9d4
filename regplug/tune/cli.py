"""``regplug tune``: the command line of the strength search (registered by :mod:`regplug.cli`).

Nothing here imports Optuna or a framework at import time: ``regplug --help`` stays fast
and works without either.

Docs: docs/tune.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import shlex
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..experiment.arguments import (
    add_training_arguments,
    non_negative_int,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from ..experiment.datasets import Splits
    from ..experiment.frameworks import FrameworkRunner, TrainSettings
    from ..experiment.models import ModelChoice
    from ..experiment.strategies import Strategy
    from .search import BestSetting, Objective, RoundRobin, Search, TrialRecord
    from .strategy_space import StrategySpace, TuneConfig

__all__ = ["add_tune_parser", "cmd_tune", "check_arguments", "wire_search", "print_plan",
           "run_search", "write_outputs", "CheckedArguments", "SearchPlan", "DEFAULT_TRIALS",
           "DEFAULT_GRID_POINTS", "MAX_GRID_POINTS", "MAX_GRID_SIZE", "check_grid",
           "check_storage_outside_out"]

DEFAULT_TRIALS = 20
DEFAULT_GRID_POINTS = 5
#: ``--grid-points``' upper bound: values per range.
MAX_GRID_POINTS = 1000
#: The most settings one strategy's grid may hold: Optuna's grid sampler keeps the whole
#: grid in memory (at this size, some 20 MB and 0.05 s a trial to find an unvisited setting),
#: and a grid is meant to be run through, one trial per setting.
MAX_GRID_SIZE = 100_000
DEFAULT_STUDY_NAME = "regplug-tune"
#: The strategy-name groups ``--strategies`` accepts besides names (as ``regplug compare``).
_GROUPS = ("default", "all")

_EPILOG = """\
examples:
  regplug tune --strategies l2,dropout --trials 40 --out tune-out
  regplug tune --strategies l2 --sampler grid --grid-points 7 --pruner none
  regplug tune --config ranges.toml --timeout 600
  regplug tune --strategies l2 --storage sqlite:///study.db --study-name run1   # on each machine

The objective is a penalty-free validation metric: val_cross_entropy (minimized, default) or
val_accuracy (maximized) at the epoch whose weights the model ends with. Never val_loss: it
includes the penalty, which grows with the strength searched, and would favour the weakest.
The test rows take no part in the search; the best setting's test accuracy is measured once,
after selection.

A --config file gives custom strategies ([[strategies]], as regplug compare reads them) and
ranges that replace a plugin's declared ones ([tune.<plugin registry name>]):
  [tune.l2]
  l2 = {low = 1e-5, high = 1e-2, log = true}
  [tune.model]
  dropout = {low = 0.0, high = 0.6}               # a strategy's own dropout layer rate
"""


def _grid_points(text: str) -> int:
    """``--grid-points``: an integer from 2 (a grid holds both ends of each range) to
    :data:`MAX_GRID_POINTS`.

    >>> _grid_points("7")
    7
    >>> _grid_points("1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be from 2 to 1000 (a grid holds both ends of each range), got 1
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 2 <= value <= MAX_GRID_POINTS:
        raise argparse.ArgumentTypeError(f"must be from 2 to {MAX_GRID_POINTS} (a grid holds "
                                         f"both ends of each range), got {value}")
    return value


def add_tune_parser(sub: Any) -> None:
    """Add ``tune`` to the ``regplug`` subcommands."""
    from ..experiment.frameworks import TrainSettings
    from .search import OBJECTIVES, PRUNERS, SAMPLERS

    defaults = TrainSettings()
    p = sub.add_parser(
        "tune", help="search the strengths of regularization strategies with Optuna "
                     "(pip install 'regplug[tune]')",
        description=textwrap.fill(
            "Search each strategy's tunable plugin arguments (and its dropout layer's rate) "
            "with Optuna: one study per strategy, trials round-robin, each trained as "
            "regplug compare trains, selected on a penalty-free validation metric. Writes "
            "every trial, the best settings as a strategies file regplug compare --config "
            "reads, figures and a report.", width=88),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", metavar="A,B,...",
                   help="comma-separated strategies to tune (see regplug compare --list); "
                        "each named needs something tunable; 'default' and 'all' stand for "
                        "their members that have. Default: the config's strategies, else "
                        "every default strategy that has something to tune")
    p.add_argument("--config", metavar="FILE.toml",
                   help="custom [[strategies]] and [tune.<plugin>] / [tune.model] range tables")
    p.add_argument("--trials", type=positive_int, default=DEFAULT_TRIALS,
                   help=f"trials PER STRATEGY (default {DEFAULT_TRIALS}); with --storage, "
                        "per strategy in this process")
    p.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                   help="stop starting trials after this many seconds for the whole command "
                        "(strategies take turns, one trial each, so every one gets its share; "
                        "a trial started before the timeout finishes)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="tpe (default), random, or grid (--grid-points values per parameter; "
                        "trials beyond the grid's size are not run)")
    p.add_argument("--grid-points", type=_grid_points, metavar="N",
                   help=f"values per range with --sampler grid, 2 to {MAX_GRID_POINTS} "
                        f"(default {DEFAULT_GRID_POINTS}; a choice gives its options); a "
                        f"strategy's grid may hold at most {MAX_GRID_SIZE:,} settings")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="stop unpromising trials early: median (default; after 5 trials, a "
                        "trial worse than the median at the same epoch), hyperband, or none")
    p.add_argument("--warmup-epochs", type=non_negative_int, default=0, metavar="N",
                   help="epochs in which the pruner never stops a trial (default 0: from the "
                        "first epoch on; needs --pruner median or hyperband). Regularization "
                        "pays once the unregularized model starts to overfit, and a stronger "
                        "setting fits more slowly before that: early pruning favours weak "
                        "settings. About a third of the epochs keeps them in the race "
                        "(hyperband: its first rung at epoch N)")
    p.add_argument("--objective", choices=tuple(OBJECTIVES), default="val_cross_entropy",
                   help="val_cross_entropy (default, minimized) or val_accuracy (maximized): "
                        "penalty-free validation metrics. Not val_loss: it includes the "
                        "penalty and so favours small strengths")
    p.add_argument("--framework", choices=("torch", "keras"), default="torch",
                   help="which framework trains (default: torch)")
    add_training_arguments(
        p, defaults, per="trial",
        seed_help="random seed of the data split, the training and the samplers "
                  f"(default {defaults.seed})")
    from ..experiment.finetune import add_task_arguments

    add_task_arguments(p)
    # None: the task's value (--task finetune has its own), filled by check_arguments
    p.set_defaults(epochs=None, batch_size=None, lr=None)
    p.add_argument("--storage", metavar="URL",
                   help="share the studies between processes or machines: an Optuna RDB URL "
                        "(sqlite:///study.db, postgresql://...) or journal:PATH (a journal "
                        "file); each strategy's study is NAME/<strategy>, resumed if it exists")
    p.add_argument("--study-name", metavar="NAME",
                   help=f"the studies' name in --storage (default {DEFAULT_STUDY_NAME})")
    p.add_argument("--out", metavar="DIR",
                   help="write trials.csv, best.toml, results.json, figures (PNG) and "
                        "report.html to DIR, all at once when the search has finished")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no line per finished trial (the summary is still printed)")
    p.set_defaults(func=cmd_tune)


def forwarded_argv(argv: Sequence[str]) -> list[str]:
    """The arguments after ``tune`` (for the command line shown in the report).

    >>> forwarded_argv(["-v", "tune", "--trials", "3"])
    ['--trials', '3']
    """
    args = list(argv)
    return args[args.index("tune") + 1:] if "tune" in args else []


def _resolve_strategies(selection: str | None, config: TuneConfig | None, *,
                        task: str = "classify") -> tuple[list[StrategySpace], list[str]]:
    """The spaces of the strategies to tune, and notes for the user. A strategy named on
    the command line (or written in the config, without --strategies) must have something
    to tune; ``default``, ``all`` and the default selection stand for their members that
    have, and a note names the ones left out. ``task="finetune"``: the strategies of
    ``--task finetune`` instead of the built-in ones."""
    from ..experiment.finetune import (
        FINETUNE_DEFAULT_STRATEGIES,
        FINETUNE_STRATEGIES,
        refuse_finetune_strategies,
    )
    from ..experiment.strategies import BUILTIN_STRATEGIES, select_strategies
    from .errors import SearchError
    from .strategy_space import strategy_space, untunable_error

    custom = config.strategies if config is not None else {}
    ranges = config.ranges if config is not None else {}
    model = config.model if config is not None else {}

    def space_of(strategy: Strategy) -> StrategySpace:
        return strategy_space(strategy, ranges, model)

    builtin: dict[str, Strategy] = dict(BUILTIN_STRATEGIES)
    default: tuple[str, ...] | None = None
    if task == "finetune":
        builtin, default = dict(FINETUNE_STRATEGIES), FINETUNE_DEFAULT_STRATEGIES
    else:
        refuse_finetune_strategies(selection, custom, builtin)

    def tunable() -> list[str]:
        catalogue = {**builtin, **custom}
        return [name for name, s in catalogue.items() if space_of(s).parameters]

    if selection is None:
        named = set(custom)
    else:
        names = [n.strip() for n in selection.split(",") if n.strip()]
        if not names:
            raise SearchError(f"--strategies {selection!r} names no strategy; name at least "
                              f"one that has something to tune, e.g. --strategies "
                              f"{','.join(tunable()[:2])}")
        named = set(names) - set(_GROUPS)
    notes: list[str] = []
    spaces = [space_of(s) for s in select_strategies(selection, custom, builtin=builtin,
                                                     default=default)]
    untunable = [sp.strategy.name for sp in spaces if not sp.parameters]
    refused = [name for name in untunable if name in named]
    if refused or (untunable and len(untunable) == len(spaces)):
        raise untunable_error(refused or untunable, tunable())
    if untunable:
        notes.append(f"left out, nothing to tune: {', '.join(untunable)}")
        spaces = [sp for sp in spaces if sp.parameters]
    used = {str(p["name"]) for sp in spaces for p in sp.strategy.plugins}
    unused = sorted(set(ranges) - used)
    if unused:
        notes.append(f"config ranges unused (no selected strategy has the plugin): "
                     f"{', '.join(f'[tune.{n}]' for n in unused)}")
    if model and not any(sp.strategy.dropout is not None for sp in spaces):
        notes.append("config [tune.model] unused: no selected strategy has a dropout layer")
    return spaces, notes


def cmd_tune(args: argparse.Namespace) -> int:
    """Check everything a mistake could be in, then search, print and write."""
    from ..experiment.output import exit_cleanly_on_sigterm

    plan = wire_search(args, check_arguments(args))
    width = print_plan(args, plan)
    start = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C: no staging folder left
    with exit_cleanly_on_sigterm(), _interrupts_unmasked():
        summary = run_search(args, plan, width=width, start=start)
        print()
        print(summary.text())
        if args.out is not None:
            write_outputs(args, plan, summary)
            print(f"wrote {args.out}: report.html, trials.csv, best.toml, results.json and "
                  "the figures")
    return 0


@dataclasses.dataclass(frozen=True)
class CheckedArguments:
    """What :func:`check_arguments` found in the command line, every mistake refused."""

    objective: Objective
    spaces: list[StrategySpace]
    notes: list[str]
    model: ModelChoice
    grid_points: int
    optuna_version: str


def check_arguments(args: argparse.Namespace) -> CheckedArguments:
    """Refuse every mistake the command line, the config or ``--out`` can hold, before a
    framework is imported or any data loaded (seconds)."""
    from ..experiment.arguments import check_out_folder
    from ..experiment.datasets import check_data_name
    from ..experiment.finetune import (
        check_finetune_model,
        check_task_arguments,
        fill_training_defaults,
    )
    from ..experiment.models import resolve_model
    from ..experiment.output import StagedOutput
    from .errors import SearchError, import_optuna
    from .search import Objective, check_warmup
    from .storage import check_storage_url, check_study_name
    from .strategy_space import load_tune_config

    task = check_task_arguments(args)
    fill_training_defaults(args, task)  # epochs, batch size, lr (and the task's data, shots)
    optuna = import_optuna()
    objective = Objective(args.objective)
    if args.study_name is not None and args.storage is None:
        raise SearchError("--study-name names the studies in a --storage; give --storage "
                          "too (without it the studies live in memory)")
    if args.study_name is not None:
        check_study_name(args.study_name)
    if args.storage is not None:
        check_storage_url(args.storage)
        if args.out is not None:
            check_storage_outside_out(args.storage, args.out)
    if args.grid_points is not None and args.sampler != "grid":
        raise SearchError(f"--grid-points {args.grid_points} needs --sampler grid (it sets the "
                          f"values per range of a grid search; --sampler is {args.sampler})")
    grid_points = args.grid_points if args.grid_points is not None else DEFAULT_GRID_POINTS
    if args.warmup_epochs and args.pruner == "none":
        raise SearchError(f"--warmup-epochs {args.warmup_epochs} needs a pruner (median or "
                          "hyperband); --pruner none never stops a trial")
    check_warmup(args.warmup_epochs, epochs=args.epochs)
    config = load_tune_config(args.config) if args.config else None
    spaces, notes = _resolve_strategies(args.strategies, config, task=task)
    if args.sampler == "grid":
        check_grid(spaces, grid_points)
    model = resolve_model(args.model)
    if task == "finetune":
        check_finetune_model(model)
    check_data_name(args.data)
    if args.out is not None:
        check_out_folder(args.out)
        StagedOutput(args.out).discard()  # refuse an unusable --out before any training
    return CheckedArguments(objective=objective, spaces=spaces, notes=notes, model=model,
                            grid_points=grid_points, optuna_version=optuna.__version__)


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """The search :func:`wire_search` built: its studies, data, runner and settings."""

    checked: CheckedArguments
    search: Search
    splits: Splits
    runner: FrameworkRunner
    settings: TrainSettings
    study_name: str
    notes: list[str]
    command: str


def wire_search(args: argparse.Namespace, checked: CheckedArguments) -> SearchPlan:
    """Open the storage, load the data and the framework's runner, and build the
    :class:`~regplug.tune.search.Search` with one study per strategy."""
    from ..experiment.datasets import load_splits
    from ..experiment.finetune import load_finetune_splits
    from ..experiment.frameworks import TrainSettings, get_runner, runner_log_keys
    from ..experiment.strategies import check_monitors
    from .search import Search
    from .storage import open_storage

    # first: a --train-rows the data cannot give is refused before a framework loads
    splits: Splits
    if getattr(args, "task", None) == "finetune":  # --shots the data cannot give, too
        splits = load_finetune_splits(args.data, seed=args.seed, shots=args.shots)
    else:
        splits = load_splits(args.data, seed=args.seed,
                             train_rows=getattr(args, "train_rows", None),
                             label_noise=getattr(args, "label_noise", None) or 0.0)
    runner = get_runner(args.framework)
    for space in checked.spaces:  # a monitor no log holds would silently do nothing
        check_monitors(space.strategy, runner_log_keys(runner), framework=args.framework)
    storage_notes: list[str] = []  # what opening a journal had to set aside
    storage = open_storage(args.storage, notes=storage_notes)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, seed=args.seed)
    study_name = args.study_name or DEFAULT_STUDY_NAME
    search = Search(spaces=checked.spaces, runner=runner, splits=splits, model=checked.model,
                    settings=settings, objective=checked.objective, sampler=args.sampler,
                    pruner=args.pruner, grid_points=checked.grid_points, seed=args.seed,
                    storage=storage, study_name=study_name,
                    warmup_epochs=args.warmup_epochs,
                    storage_name=f"--storage {args.storage!r}" if args.storage else None)
    notes = [*checked.notes, *storage_notes]
    if args.sampler == "grid":
        for entry in search.studies.values():
            if entry.grid_size is not None and entry.grid_size < args.trials:
                notes.append(f"grid: {entry.name} has {entry.grid_size} setting(s) "
                             f"({checked.grid_points} points per range); --trials "
                             f"{args.trials} runs at most {entry.grid_size}")
    command = "regplug tune " + shlex.join(forwarded_argv(getattr(args, "argv", [])))
    return SearchPlan(checked=checked, search=search, splits=splits, runner=runner,
                      settings=settings, study_name=study_name, notes=notes, command=command)


def print_plan(args: argparse.Namespace, plan: SearchPlan) -> int:
    """Print what will be searched, and how; the width of the strategy-name column."""
    checked = plan.checked
    print(f"data:       {plan.splits.describe()}")
    print(f"model:      {checked.model}")
    print(f"training:   {plan.settings.describe()}")
    print(f"framework:  {plan.runner.describe()}")
    print(f"objective:  {checked.objective.describe()}, on the validation rows")
    print(f"search:     {args.trials} trial(s) per strategy, sampler {args.sampler}, pruner "
          f"{args.pruner}"
          + (f" (warm-up {_count(args.warmup_epochs, 'epoch')})"
             if args.warmup_epochs else "")
          + (f", timeout {args.timeout:g}s" if args.timeout else "")
          + (f", storage {args.storage} (studies {plan.study_name}/<strategy>)"
             if args.storage else ""))
    width = max(len(space.strategy.name) for space in checked.spaces) + 2
    print("strategies:")
    for space in checked.spaces:
        print(f"  {space.strategy.name:<{width}}"
              + "; ".join(p.describe() for p in space.parameters))
    for note in plan.notes:
        print(f"note: {note}")
    sys.stdout.flush()
    return width


def run_search(args: argparse.Namespace, plan: SearchPlan, *, width: int,
               start: float) -> Summary:
    """Run the trials (one line each unless ``--quiet``), then measure each strategy's best
    setting once on the test rows; what was found, timed from ``start``."""
    search = plan.search
    schedule = search.run(trials=args.trials, timeout=args.timeout,
                          on_trial=None if args.quiet
                          else _trial_printer(plan.checked.objective, width))
    records = search.records()
    bests = {name: search.best(name) for name in search.studies}
    for best in bests.values():
        if best is not None:
            search.measure_best(best)
    seconds = time.perf_counter() - start
    return Summary(search, records, bests, schedule, plan.settings, seconds)


def write_outputs(args: argparse.Namespace, plan: SearchPlan, summary: Summary) -> None:
    """Write ``--out`` all at once (:func:`write_all`), with the settings of the run."""
    from ..experiment.output import StagedOutput

    checked = plan.checked
    info = {
        "command": plan.command, "data": plan.splits.describe(), "model": str(checked.model),
        "training": plan.settings.describe(), "framework": plan.runner.describe(),
        "objective": checked.objective.describe(), "trials_per_strategy": args.trials,
        "timeout_s": args.timeout, "sampler": args.sampler,
        "grid_points": checked.grid_points if args.sampler == "grid" else None,
        "pruner": args.pruner,
        "warmup_epochs": args.warmup_epochs, "seed": args.seed, "storage": args.storage,
        "study_name": plan.study_name if args.storage else None,
        "config": args.config, "regplug": _version(),
        "optuna": checked.optuna_version, "python": platform.python_version()}
    with StagedOutput(args.out) as staged:
        write_all(staged.path, summary, info, command=plan.command)
        staged.commit()


def check_grid(spaces: Sequence[StrategySpace], points: int) -> None:
    """Refuse a strategy whose grid of ``points`` per range would hold more than
    :data:`MAX_GRID_SIZE` settings (before Optuna builds it)."""
    from .errors import SearchError

    for space in spaces:
        size = space.grid_size(points)
        if size > MAX_GRID_SIZE:
            raise SearchError(
                f"--sampler grid: strategy {space.strategy.name!r} would have {size:,} "
                f"settings ({points} points per range of {', '.join(space.names)}), more than "
                f"the limit of {MAX_GRID_SIZE:,}; lower --grid-points, or use --sampler tpe "
                "or random")


def check_storage_outside_out(url: str, out: str) -> None:
    """Refuse a ``--storage`` file inside ``--out``: the output folder is written all at once
    at the end, and one holding a file regplug did not write is refused — after the search."""
    from .errors import SearchError
    from .storage import storage_file

    path = storage_file(url)
    if path is None:
        return
    folder = Path(out).resolve()
    if folder == path.resolve() or folder in path.resolve().parents:
        raise SearchError(f"--storage {str(path)!r} lies inside --out {out!r}: the output "
                          "folder is replaced whole when the search has finished, and one "
                          "holding other files is refused then; put the storage file outside "
                          "--out")


@contextlib.contextmanager
def _interrupts_unmasked() -> Iterator[None]:
    """Re-raise a Ctrl-C or SIGTERM (:class:`~regplug.experiment.output.Terminated`) that
    Optuna masked: one arriving while it records a trial's result makes Optuna 5's
    ``_run_trial`` raise ``UnboundLocalError`` from its ``finally`` block instead."""
    try:
        yield
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None:
            if not isinstance(cause, Exception):
                raise cause from None
            cause = cause.__context__
        raise


def _count(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _version() -> str:
    from .. import __version__

    return __version__


def _trial_printer(objective: Objective, width: int) -> Any:
    from .search import format_params

    def show(record: TrialRecord) -> None:
        seconds = f"{record.seconds:.1f}s" if record.seconds is not None else ""
        print(f"{record.strategy:<{width}}#{record.number:<4} {format_params(record.params)}  "
              f"{record.describe_outcome(objective)}  {seconds}".rstrip(), flush=True)

    return show


class Summary:
    """What the search found, per strategy: for the printed summary and every output."""

    def __init__(self, search: Search, records: Mapping[str, list[TrialRecord]],
                 bests: Mapping[str, BestSetting | None], schedule: RoundRobin,
                 settings: Any, seconds: float) -> None:
        self.search, self.records, self.bests = search, records, bests
        self.schedule, self.settings, self.seconds = schedule, settings, seconds
        self.objective: Objective = search.objective

    def counts(self, name: str) -> dict[str, int]:
        rows = self.records[name]
        finished = [r for r in rows if r.state in ("COMPLETE", "PRUNED", "FAIL")]
        return {"complete": sum(r.state == "COMPLETE" for r in rows),
                "pruned": sum(r.state == "PRUNED" for r in rows),
                "failed": sum(r.state == "FAIL" for r in rows),
                "ran_here": sum(r.here for r in rows),
                "epochs_run": sum(r.epochs for r in finished),
                # a failed trial would have run no more without pruning: count what it ran
                "epochs_full": sum(r.epochs if r.state == "FAIL" else self.settings.epochs
                                   for r in finished)}

    def header(self) -> list[str]:
        return ["strategy", f"best {self.objective.metric}", "trial", "complete", "pruned",
                "failed", "epochs run", "best parameters"]

    def rows(self) -> list[list[str]]:
        from .search import format_params

        out = []
        for name in self.records:
            c, best = self.counts(name), self.bests[name]
            share = f" ({c['epochs_run'] / c['epochs_full']:.0%})" if c["epochs_full"] else ""
            out.append([name, f"{best.value:.4f}" if best else "-",
                        str(best.number) if best else "-", str(c["complete"]),
                        str(c["pruned"]), str(c["failed"]),
                        f"{c['epochs_run']} of {c['epochs_full']}{share}",
                        format_params(best.params) if best else "no complete trial"])
        return out

    def notes(self) -> list[str]:
        notes = []
        measured = [(n, b) for n, b in self.bests.items() if b is not None
                    and b.acc_test is not None]
        if measured:
            notes.append("test accuracy of each best setting, measured once after selection "
                         "(the test rows took no part in it): "
                         + ", ".join(f"{n} {b.acc_test:.4f}" for n, b in measured))
        if self.schedule.timed_out:
            ran = ", ".join(f"{n} {k}" for n, k in self.schedule.ran.items())
            notes.append(f"--timeout reached: trials run per strategy: {ran}")
        for name in self.schedule.exhausted:
            notes.append(f"{name}: the grid was run through before --trials")
        notes.append("epochs run: of what the finished trials would have run without "
                     "pruning or early stopping (a failed trial: the epochs it ran)")
        return notes

    def text(self) -> str:
        header, rows = self.header(), self.rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"summary: {self.objective.metric}, {self.objective.direction}d, on the "
                 f"validation rows ({self.seconds:.1f}s)"]
        for row in [header, *rows]:
            cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in
                                                 zip(row[1:-1], widths[1:-1])), row[-1]]
            lines.append("  " + "  ".join(cells))
        lines.extend(self.notes())
        return "\n".join(lines)


def write_all(folder: Path, summary: Summary, info: Mapping[str, Any], *, command: str) -> None:
    """Figures, trials.csv, best.toml, report and (last) results.json into ``folder``."""
    from . import plots
    from .output import (
        strategy_toml,
        tuned_name,
        write_best_toml,
        write_results_json,
        write_trials_csv,
    )
    from .report import write_report
    from .search import format_params

    search, objective = summary.search, summary.objective
    spaces = [entry.space for entry in search.studies.values()]
    plots.plot_parameters(spaces, summary.records, objective, folder / plots.PARAMETERS_FIGURE)
    plots.plot_history(spaces, summary.records, objective, folder / plots.HISTORY_FIGURE)
    figures = [(plots.PARAMETERS_FIGURE, plots.parameters_caption(objective)),
               (plots.HISTORY_FIGURE, plots.history_caption(objective))]
    parameters = list(dict.fromkeys(p.name for s in spaces for p in s.parameters))
    all_records = [r for rows in summary.records.values() for r in rows]
    write_trials_csv(folder / "trials.csv", all_records, parameters, metric=objective.metric)
    blocks = []
    for name, best in summary.bests.items():
        c = summary.counts(name)
        trials = f"{c['complete'] + c['pruned'] + c['failed']} trials run ({c['complete']} " \
                 f"complete, {c['pruned']} pruned, {c['failed']} failed)"
        if best is None:
            blocks.append(f"# {name}: no complete trial of {trials}: nothing to write\n")
            continue
        tuned = dataclasses.replace(best.tuned, name=tuned_name(name), description="")
        blocks.append(strategy_toml(tuned, comment=(
            f"{name}: {objective.describe()} {best.value!r} at trial {best.number} of "
            f"{trials}\n{format_params(best.params)}")))
    header = (f"regplug tune: the best setting of each strategy\n{command}\n"
              f"read back with: regplug compare --config best.toml")
    best_text = write_best_toml(folder / "best.toml", blocks, header=header)
    write_report(folder / "report.html", command=command, settings=info,
                 header=summary.header(), rows=summary.rows(), notes=summary.notes(),
                 figures=figures, best_toml=best_text)
    strategies: dict[str, Any] = {}
    for entry in search.studies.values():
        best = summary.bests[entry.name]
        strategies[entry.name] = {
            "parameters": {p.name: p.space.to_config() for p in entry.space.parameters},
            "strategy": entry.space.strategy.to_config(),
            "counts": summary.counts(entry.name),
            "best": None if best is None else {
                "trial": best.number, "params": best.params, "value": best.value,
                "test_accuracy": best.acc_test, "refit_value": best.refit_value,
                "strategy": best.tuned.to_config()}}
    write_results_json(folder / "results.json", {
        "format": "regplug-tune/1", "settings": dict(info), "objective": {
            "metric": objective.metric, "direction": objective.direction},
        "strategies": strategies,
        "trials": [dataclasses.asdict(r) for r in all_records],
        "timed_out": summary.schedule.timed_out, "seconds": round(summary.seconds, 3),
        "summary": summary.text(), "best_toml": best_text,
        "figures": [n for n, _ in figures], "captions": dict(figures)})

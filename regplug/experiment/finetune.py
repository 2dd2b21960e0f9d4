"""The fine-tuning task (``--task finetune``): pretrain on digits 0–4, fine-tune on 5–9.

One more data and strategy set of the experiment layer: :class:`FinetuneSplits` holds the
few-shot rows of classes 5–9 (``--shots K`` per class; labels 0–4) and the rows of classes
0–4 that every strategy but ``scratch`` is pretrained on. The framework's runner pretrains
once per seed and framework (cached in the splits) and starts each strategy from those
weights with a new head (the layer named :data:`HEAD`). :data:`FINETUNE_STRATEGIES` are the
strategies compared; the paired tests are against :data:`FINETUNE_BASELINE`.

>>> [s.name for s in select_finetune_strategies("finetune,l2")]
['finetune', 'l2']

Docs: docs/compare.md
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .datasets import Splits, load_dataset, per_seed
from .frameworks import TrainSettings
from .loaders import Dataset
from .models import ModelChoice, ModelError
from .strategies import Strategy, StrategyError, select_strategies

__all__ = ["TASKS", "DEFAULT_TASK", "SOURCE_CLASSES", "TARGET_CLASSES", "DEFAULT_SHOTS",
           "HEAD", "FINETUNE_STREAM", "VALIDATION_PER_CLASS", "FinetuneTask", "FINETUNE",
           "FinetuneSplits",
           "finetune_splits", "load_finetune_splits", "finetune_splits_per_seed",
           "FinetuneStrategy", "starts_pretrained", "FINETUNE_STRATEGIES",
           "FINETUNE_DEFAULT_STRATEGIES", "FINETUNE_BASELINE", "select_finetune_strategies",
           "check_task_name", "add_task_arguments", "check_task_arguments",
           "refuse_finetune_strategies", "fill_training_defaults", "check_finetune_model"]

#: The tasks ``--task`` names: ``classify`` (every class, the presets) and ``finetune``.
TASKS: tuple[str, ...] = ("classify", "finetune")
DEFAULT_TASK = "classify"
#: Pretraining classes (labels kept) and fine-tuning classes (labels minus 5: 0–4).
SOURCE_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4)
TARGET_CLASSES: tuple[int, ...] = (5, 6, 7, 8, 9)
DEFAULT_SHOTS = 20
#: The name of the built-in model's output layer, replaced (re-initialised) after
#: pretraining: the new parameters are ``head.*`` in every framework (``head.weight`` in
#: torch, ``head.kernel`` in Keras); the hidden layers are ``layers.0``, ``layers.1``, ...
HEAD = "head"
#: The few-shot rows of a seed come from ``numpy.random.default_rng([seed, FINETUNE_STREAM])``.
FINETUNE_STREAM = 19
#: At most this many validation rows of each class 5-9 (drawn with the shots): enough for
#: early stopping and ``regplug tune``'s objective, and every epoch validates on them.
VALIDATION_PER_CLASS = 100


@dataclass(frozen=True)
class FinetuneTask:
    """The settings ``--task finetune`` runs with where an option is not given."""

    data: str
    shots: int
    epochs: int
    batch_size: int
    learning_rate: float
    seeds: int
    framework: str
    #: How every strategy but ``scratch`` is pretrained (its seed: the run's).
    pretrain: TrainSettings

    def about(self) -> str:
        """The defaults in a line (``--help``, ``--list``).

        >>> FINETUNE.about()
        'mnist, pretrained 10 epochs, 20 shots, 30 epochs, batch 25, lr 0.05; compare: 10 seeds, torch'
        """  # noqa: E501
        return (f"{self.data}, pretrained {self.pretrain.epochs} epochs, {self.shots} shots, "
                f"{self.epochs} epochs, batch {self.batch_size}, lr {self.learning_rate:g}; "
                f"compare: {self.seeds} seeds, {self.framework}")


#: ``--task finetune``'s defaults (a plain ``regplug compare --task finetune``).
FINETUNE = FinetuneTask(data="mnist", shots=DEFAULT_SHOTS, epochs=30, batch_size=25,
                        learning_rate=0.05, seeds=10, framework="torch",
                        pretrain=TrainSettings(epochs=10, batch_size=64, learning_rate=0.05))


@dataclass(frozen=True)
class FinetuneSplits(Splits):
    """The few-shot rows of classes 5–9 (labels 0–4) and the pretraining rows.

    ``x_train`` holds ``shots`` rows of each class 5–9 (drawn per seed), ``x_val`` up to
    :data:`VALIDATION_PER_CLASS` other training rows of each, ``x_test`` the data's test
    rows of those classes.
    ``pretrain`` holds the training rows of classes 0–4 (``x_val``/``x_test``: their test
    rows). ``cache`` is where a runner keeps its pretrained weights for these splits, so
    every strategy of a seed starts from the same ones and pretraining runs once.
    """

    pretrain: Splits | None = None
    shots: int = 0
    pretrain_settings: TrainSettings = field(default_factory=TrainSettings)
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        """One line: the few-shot rows and what is pretrained on.

        >>> x = np.zeros((60, 3), np.float32)
        >>> s = finetune_splits(Dataset("toy", x, np.arange(60) % 10, x[:20], np.arange(20) % 10),
        ...                     shots=2, seed=0)
        >>> s.describe()
        'toy classes 5-9, 2 shots: 10 train / 20 validation / 10 test rows, 3 features, 5 classes; pretrained on classes 0-4: 30 rows, 10 epochs'
        """  # noqa: E501
        pre = self.pretrain
        rows = 0 if pre is None else len(pre.x_train)
        return (f"{self.name} classes 5-9, {self.shots} shot{'' if self.shots == 1 else 's'}: "
                f"{len(self.x_train)} train / {len(self.x_val)} validation / "
                f"{len(self.x_test)} test rows, {self.n_features} features, {self.n_classes} "
                f"classes; pretrained on classes 0-4: {rows} rows, "
                f"{self.pretrain_settings.epochs} epochs")


def finetune_splits(data: Dataset, *, shots: int, seed: int,
                    pretrain: TrainSettings | None = None) -> FinetuneSplits:
    """Split ``data`` for fine-tuning: ``shots`` training rows of each class 5–9, drawn
    from ``default_rng([seed, FINETUNE_STREAM])``, up to :data:`VALIDATION_PER_CLASS` others
    of each for validation, their test rows for testing; the training rows of classes 0–4 to pretrain
    on. Labels 5–9 become 0–4.

    >>> x = np.zeros((60, 3), np.float32)
    >>> d = Dataset("toy", x, np.arange(60) % 10, x[:20], np.arange(20) % 10)
    >>> finetune_splits(d, shots=6, seed=0)
    Traceback (most recent call last):
    ValueError: --shots 6: at most 5 per class: class 5 of 'toy' has 6 training rows, and one of each class is kept for validation
    """  # noqa: E501
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"--shots {shots!r}: must be an integer of at least 1")
    labels = set(np.unique(data.y_train).tolist()) | set(np.unique(data.y_test).tolist())
    missing = sorted(set(SOURCE_CLASSES + TARGET_CLASSES) - labels)
    if missing or data.n_classes != 10:
        raise ValueError(f"--task finetune needs a data set of the 10 classes 0-9 (0-4 to "
                         f"pretrain on, 5-9 to fine-tune on); {data.name!r} has "
                         f"{data.n_classes} classes"
                         + (f" and no rows of class {', '.join(map(str, missing))}"
                            if missing else ""))
    rng = np.random.default_rng([seed, FINETUNE_STREAM])
    train, val = [], []
    for label in TARGET_CLASSES:
        rows = np.flatnonzero(data.y_train == label)
        if shots > len(rows) - 1:
            raise ValueError(f"--shots {shots}: at most {_most_shots(data)} per class: class "
                             f"{label} of {data.name!r} has {len(rows)} training rows, and one "
                             "of each class is kept for validation")
        rows = rng.permutation(rows)
        train.append(rows[:shots])
        val.append(rows[shots:shots + VALIDATION_PER_CLASS])
    first = TARGET_CLASSES[0]
    train_rows = rng.permutation(np.concatenate(train))
    val_rows = np.sort(np.concatenate(val))
    test_rows = np.flatnonzero(data.y_test >= first)
    source = data.y_train < first
    source_test = data.y_test < first
    pre = Splits(f"{data.name} classes 0-4", data.x_train[source], data.y_train[source],
                 data.x_test[source_test], data.y_test[source_test], data.x_test[source_test],
                 data.y_test[source_test], len(SOURCE_CLASSES))
    return FinetuneSplits(
        data.name, data.x_train[train_rows], data.y_train[train_rows] - first,
        data.x_train[val_rows], data.y_train[val_rows] - first,
        data.x_test[test_rows], data.y_test[test_rows] - first, len(TARGET_CLASSES),
        pretrain=pre, shots=shots,
        pretrain_settings=pretrain if pretrain is not None else FINETUNE.pretrain)


def _most_shots(data: Dataset) -> int:
    return min(int((data.y_train == label).sum()) for label in TARGET_CLASSES) - 1


def load_finetune_splits(spec: str | None, *, seed: int, shots: int = DEFAULT_SHOTS,
                         pretrain: TrainSettings | None = None) -> FinetuneSplits:
    """The fine-tuning splits of ``--data spec`` for ``seed`` (:func:`finetune_splits`)."""
    return finetune_splits(load_dataset(spec, seed=seed), shots=shots, seed=seed, pretrain=pretrain)


def finetune_splits_per_seed(spec: str | None, *, shots: int = DEFAULT_SHOTS,
                             pretrain: TrainSettings | None = None
                             ) -> Callable[[int], FinetuneSplits]:
    """The fine-tuning splits of ``--data spec`` for a seed (``regplug compare --seeds``): a
    bundled data set draws its test rows from the seed, a file's or a function's data are
    read once; the few-shot rows are drawn afresh for every seed. Each call builds new
    splits, so a seed's pretrained weights are cached in the splits the comparison keeps
    for that seed."""
    return per_seed(
        spec,
        lambda seed: load_finetune_splits(spec, seed=seed, shots=shots, pretrain=pretrain),
        lambda data, seed: finetune_splits(data, shots=shots, seed=seed, pretrain=pretrain))


@dataclass(frozen=True)
class FinetuneStrategy(Strategy):
    """A strategy of the fine-tuning task: ``pretrained=False`` starts from random weights
    (``scratch``); every other strategy, and a ``--config`` strategy, from the pretrained."""

    pretrained: bool = True


def starts_pretrained(strategy: Strategy) -> bool:
    """Whether ``strategy`` starts from the pretrained weights (all but ``scratch``)."""
    return bool(getattr(strategy, "pretrained", True))


def _strategy(name: str, *plugins: Mapping[str, Any], description: str = "",
              pretrained: bool = True) -> FinetuneStrategy:
    return FinetuneStrategy(name, tuple(plugins), description=description, builtin=True,
                            pretrained=pretrained)


#: The name the paired tests compare every strategy with: all layers fine-tuned, no
#: regularization.
FINETUNE_BASELINE = "finetune"
#: The strategies ``--task finetune`` can name, in table order. The strengths of llrd, l2sp
#: (alpha), ema and l2 are the best of ``regplug tune --task finetune --sampler grid
#: --grid-points 7`` (the least validation cross-entropy, averaged over tune seeds 100 to
#: 102, none of them a compare seed; docs/compare.md); freeze and gradual_unfreeze are
#: fixed schedules: the backbone frozen throughout, or for 5 epochs and then one block per
#: epoch from the top.
FINETUNE_STRATEGIES: dict[str, FinetuneStrategy] = {s.name: s for s in (
    _strategy("scratch", description="no pretraining: random weights, no regularization",
              pretrained=False),
    _strategy("finetune", description="pretrained on 0-4, new head, every layer trained, "
                                      "no regularization"),
    _strategy("freeze", {"name": "freeze", "epochs": None, "exclude": f"{HEAD}.*"}),
    _strategy("gradual_unfreeze", {"name": "freeze", "epochs": 5, "gradual": True,
                                   "exclude": f"{HEAD}.*"}),
    _strategy("llrd", {"name": "layerwise_lr", "decay": 0.667}),
    _strategy("l2sp", {"name": "l2sp", "alpha": 0.00215, "beta": 1e-3, "new": f"{HEAD}.*"}),
    _strategy("ema", {"name": "ema", "decay": 0.99, "evaluate_on_average": True}),
    _strategy("l2", {"name": "l2", "l2": 0.0147}),
)}
#: The strategies of a plain ``regplug compare --task finetune``.
FINETUNE_DEFAULT_STRATEGIES: tuple[str, ...] = tuple(FINETUNE_STRATEGIES)


def select_finetune_strategies(selection: str | Sequence[str] | None,
                               custom: Mapping[str, Strategy] | None = None) -> list[Strategy]:
    """:func:`~regplug.experiment.strategies.select_strategies` over
    :data:`FINETUNE_STRATEGIES` (``default``: :data:`FINETUNE_DEFAULT_STRATEGIES`)."""
    return select_strategies(selection, custom, builtin=FINETUNE_STRATEGIES,
                             default=FINETUNE_DEFAULT_STRATEGIES)


def check_finetune_model(model: ModelChoice) -> None:
    """Refuse a built-in model without hidden layers (``--model linear``): fine-tuning
    replaces its only layer, so there is nothing to pretrain.

    >>> from regplug.experiment.models import BUILTIN_MODELS
    >>> check_finetune_model(BUILTIN_MODELS["linear"])
    Traceback (most recent call last):
    regplug.experiment.models.ModelError: --task finetune: --model 'linear' has no hidden layer to pretrain (only its head, which fine-tuning replaces); use mlp or wide_mlp
    """  # noqa: E501
    if model.factory is None and not model.hidden:
        raise ModelError(f"--task finetune: --model {model.name!r} has no hidden layer to "
                         "pretrain (only its head, which fine-tuning replaces); use mlp or "
                         "wide_mlp")


def check_task_name(text: str | None) -> str:
    """The task ``--task text`` names (``None``: the default); a misspelt one is refused.

    >>> check_task_name(None), check_task_name("finetune")
    ('classify', 'finetune')
    >>> check_task_name("fine-tune")
    Traceback (most recent call last):
    ValueError: --task 'fine-tune': no task is called that (did you mean 'finetune'?); give 'classify' (default) or 'finetune'
    """  # noqa: E501
    if text is None:
        return DEFAULT_TASK
    if text in TASKS:
        return text
    close = difflib.get_close_matches(text.strip().lower(), TASKS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"--task {text!r}: no task is called that{hint}; give "
                     f"{TASKS[0]!r} (default) or {' or '.join(map(repr, TASKS[1:]))}")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--task`` and ``--shots`` (both ``None`` when not given)."""
    from .arguments import positive_int

    parser.add_argument(
        "--task", metavar="NAME",
        help="classify (default): train on every class; finetune: pretrain on classes 0-4, "
             f"fine-tune on --shots rows of each of 5-9 (defaults: {FINETUNE.about()})")
    parser.add_argument(
        "--shots", type=positive_int, metavar="K",
        help=f"--task finetune: training rows per class 5-9 (default {DEFAULT_SHOTS})")


def check_task_arguments(args: argparse.Namespace) -> str:
    """Refuse options that do not go with ``--task`` (one line each); the task's name.

    ``--shots`` needs ``--task finetune``; the fine-tuning task takes no ``--preset``,
    ``--train-rows`` or ``--label-noise`` (its rows are ``--shots`` per class)."""
    task = check_task_name(getattr(args, "task", None))
    if task != "finetune":
        if getattr(args, "shots", None) is not None:
            raise ValueError(f"--shots {args.shots}: only --task finetune has shots (rows per "
                             "class to fine-tune on); add --task finetune, or use --train-rows")
        return task
    for option, value in (("--preset", getattr(args, "preset", None)),
                          ("--train-rows", getattr(args, "train_rows", None)),
                          ("--label-noise", getattr(args, "label_noise", None))):
        if value is not None:
            fix = "--shots K (rows per class)" if option != "--preset" else \
                "the task's own defaults, or give the options"
            raise ValueError(f"{option} {value}: not with --task finetune (its training rows "
                             f"are --shots per class 5-9); use {fix}")
    return task


def refuse_finetune_strategies(selection: str | None, custom: Mapping[str, Strategy],
                               catalogue: Mapping[str, Strategy]) -> None:
    """Refuse, with ``--task finetune`` named as the fix, a strategy of the fine-tuning task
    selected for another task (``regplug compare --strategies l2sp``): it needs pretrained
    weights, which only that task makes."""
    if selection is None:
        return
    for name in (n.strip() for n in selection.split(",")):
        if name in FINETUNE_STRATEGIES and name not in catalogue and name not in custom:
            raise StrategyError(f"strategy {name!r} belongs to --task finetune (it starts "
                                "from, or is compared with, pretrained weights); add --task "
                                "finetune")


def fill_training_defaults(args: argparse.Namespace, task: str) -> list[str]:
    """Fill the options not given (``None``) with the fine-tuning task's values
    (:data:`FINETUNE`): data, shots, epochs, batch size, learning rate, and where ``args``
    has them, seeds and framework; for another task, epochs, batch size and learning rate
    with :class:`~regplug.experiment.frameworks.TrainSettings`' defaults. The options
    filled."""
    filled = []
    plain = TrainSettings()
    values: tuple[tuple[str, object], ...] = (
        ("epochs", plain.epochs), ("batch_size", plain.batch_size),
        ("lr", plain.learning_rate))
    if task == "finetune":
        values = (("data", FINETUNE.data), ("shots", FINETUNE.shots),
                  ("epochs", FINETUNE.epochs), ("batch_size", FINETUNE.batch_size),
                  ("lr", FINETUNE.learning_rate), ("seeds", FINETUNE.seeds),
                  ("framework", FINETUNE.framework))
    for option, value in values:
        if hasattr(args, option) and getattr(args, option) is None:
            setattr(args, option, value)
            filled.append(option)
    return filled

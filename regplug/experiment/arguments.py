"""The options both ``regplug compare`` and ``regplug tune`` take, and their argument types.

:func:`add_training_arguments` adds the data, model and training options both commands take.
The argument types each take the option's text and return its value, or raise
``argparse.ArgumentTypeError`` with the allowed range (argparse adds the option's name).

>>> positive_int("3"), seed("0"), positive_float("0.05")
(3, 0, 0.05)
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be at least 1, got 0

Docs: docs/compare.md, docs/tune.md
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .frameworks import TrainSettings

__all__ = ["SEED_MAX", "positive_int", "seed", "positive_float", "label_noise",
           "add_training_arguments"]

#: ``--seed``'s range: what NumPy's legacy global seed (Keras' ``set_random_seed``), torch's
#: ``manual_seed`` and NumPy's generators all accept.
SEED_MAX = 2**32 - 1


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer of at least 1 (``--epochs``, ``--batch-size``, ``--seeds``, ``--trials``)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (``--warmup-epochs``)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def seed(text: str) -> int:
    """An integer from 0 to :data:`SEED_MAX` (``--seed``)."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {SEED_MAX} (2**32 - 1, the seeds NumPy, torch and "
            f"Keras all accept), got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (``--lr``, ``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def label_noise(text: str) -> float:
    """A fraction from 0 to below 1 (``--label-noise``).

    >>> label_noise("0.3")
    0.3
    >>> label_noise("1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a fraction from 0 to below 1 (0 <= F < 1), got 1
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be a fraction from 0 to below 1 (0 <= F < 1), got {text}")
    return value


def add_training_arguments(parser: argparse.ArgumentParser, defaults: TrainSettings, *,
                           per: Literal["strategy", "trial"], seed_help: str,
                           epochs_from_preset: bool = False) -> None:
    """Add ``--data``, ``--train-rows``, ``--label-noise``, ``--model``, ``--epochs``,
    ``--batch-size``, ``--lr`` and ``--seed``.

    ``per`` is what one run of ``--epochs`` trains (a strategy in ``compare``, a trial in
    ``tune``); ``seed_help`` is ``--seed``'s help, as what the seed seeds differs. With
    ``epochs_from_preset`` (``compare --preset``), ``--epochs``, ``--data``, ``--train-rows``
    and ``--label-noise`` not given are ``None``, for the preset to fill.
    """
    from .datasets import bundled_data_help  # imports NumPy: only when the parser is built

    preset = " (default: the preset's)" if epochs_from_preset else ""
    names = bundled_data_help()
    if preset:  # the preset chooses the data, not BUNDLED_DATA[None]
        names = names.replace("(default: ", "(")
    parser.add_argument("--data", metavar="SPEC",
                        help=f"{names}: pip install 'regplug[data]'; an "
                             "MNIST-style FILE.npz (x_train, y_train, x_test, y_test); or "
                             f"module:function{preset}")
    parser.add_argument("--train-rows", type=positive_int, metavar="N",
                        help="train on the first N training rows left after the validation "
                             "split (a random subset: the split is a seeded permutation); "
                             "validation and test rows stay as they are "
                             + ("(default: the preset's)" if preset else "(default: all)"))
    parser.add_argument("--label-noise", type=label_noise, metavar="F",
                        help="give this fraction of the training rows (0 <= F < 1) another "
                             "class, drawn uniformly from the other classes; fresh rows and "
                             "labels per seed (numpy default_rng([seed, 18])), the same in "
                             "every framework; validation and test labels stay clean "
                             + ("(default: the preset's)" if preset else "(default 0)"))
    parser.add_argument("--model", metavar="SPEC",
                        help="a built-in model (mlp: the notebook's Dense 50 -> 250 -> "
                             "classes; wide_mlp; linear) or module:factory taking a "
                             "regplug.experiment.ModelSpec")
    parser.add_argument("--epochs", type=positive_int,
                        default=None if epochs_from_preset else defaults.epochs,
                        help=f"epochs per {per}" + (preset or f" (default {defaults.epochs})"))
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help=f"mini-batch size (default {defaults.batch_size})")
    parser.add_argument("--lr", type=positive_float, default=defaults.learning_rate,
                        help=f"SGD learning rate (default {defaults.learning_rate:g}; "
                             f"momentum {defaults.momentum:g})")
    parser.add_argument("--seed", type=seed, default=defaults.seed, help=seed_help)

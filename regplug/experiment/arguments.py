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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .frameworks import TrainSettings

__all__ = ["SEED_MAX", "MAX_BATCH_SIZE", "MAX_SEEDS", "positive_int", "seed", "seed_count",
           "batch_size", "positive_float", "label_noise", "add_training_arguments",
           "check_out_folder"]

#: ``--seed``'s range: what NumPy's legacy global seed (Keras' ``set_random_seed``), torch's
#: ``manual_seed`` and NumPy's generators all accept.
SEED_MAX = 2**32 - 1


#: ``--batch-size``' upper bound: 2**24 rows in one batch (more than any data set these
#: commands hold in memory; a larger one trains the same full batch).
MAX_BATCH_SIZE = 2**24
#: ``regplug compare --seeds``' upper bound: every strategy is trained once per seed, and a
#: paired test over a thousand seeds is as sure as it gets.
MAX_SEEDS = 1000
#: What the staging folder's name adds to ``--out``'s last name (".", ".partial-" and
#: mkdtemp's 8 characters; see :mod:`.output`).
_STAGING_EXTRA = 18


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


def _bounded(text: str, maximum: int) -> int:
    value = _int(text)
    if not 1 <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be from 1 to {maximum:,}, got {value}")
    return value


def batch_size(text: str) -> int:
    """An integer from 1 to :data:`MAX_BATCH_SIZE` (``--batch-size``).

    >>> batch_size("10" + "0" * 11)
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be from 1 to 16,777,216, got 1000000000000
    """
    return _bounded(text, MAX_BATCH_SIZE)


def seed_count(text: str) -> int:
    """An integer from 1 to :data:`MAX_SEEDS` (``regplug compare --seeds``)."""
    return _bounded(text, MAX_SEEDS)


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
    parser.add_argument("--batch-size", type=batch_size, default=defaults.batch_size,
                        help=f"mini-batch size, at most {MAX_BATCH_SIZE:,} (default "
                             f"{defaults.batch_size})")
    parser.add_argument("--lr", type=positive_float, default=defaults.learning_rate,
                        help=f"SGD learning rate (default {defaults.learning_rate:g}; "
                             f"momentum {defaults.momentum:g})")
    parser.add_argument("--seed", type=seed, default=defaults.seed, help=seed_help)


def check_out_folder(text: str) -> None:
    """Refuse an ``--out`` that can never be an output folder, naming it: the file-system
    root, or a name longer than the file system allows (before any training).

    >>> check_out_folder("/")
    Traceback (most recent call last):
    ValueError: --out '/': the file-system root cannot be an output folder (it is replaced whole when the run has finished); give a folder below it
    """  # noqa: E501
    path = Path(text)
    if not text.strip():
        raise ValueError("--out '': give a folder name")
    if path.resolve() == Path(path.resolve().anchor):
        raise ValueError(f"--out {text!r}: the file-system root cannot be an output folder (it "
                         "is replaced whole when the run has finished); give a folder below it")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows): the usual limit
        name_max = 255
    parts = path.parts
    for index, part in enumerate(parts):
        # the last name is also the staging folder's, ".NAME.partial-XXXXXXXX" (output.py)
        room = name_max - (_STAGING_EXTRA if index == len(parts) - 1 else 0)
        if len(part.encode()) > room:
            shown = part if len(part) <= 24 else part[:20] + "..."
            raise ValueError(f"--out {shown!r}: a name of {len(part)} characters; the file "
                             f"system allows {name_max} bytes per name, and the folder's "
                             f"name is written with {_STAGING_EXTRA} more while the run "
                             f"writes it (at most {room} here)")

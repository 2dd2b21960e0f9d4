"""Argument types of the ``regplug compare`` and ``regplug tune`` command lines.

Each takes the option's text and returns its value, or raises
``argparse.ArgumentTypeError`` with the allowed range (argparse adds the option's name).

>>> positive_int("3"), seed("0"), positive_float("0.05")
(3, 0, 0.05)
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be at least 1, got 0
"""

from __future__ import annotations

import argparse
import math

__all__ = ["SEED_MAX", "positive_int", "seed", "positive_float"]

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

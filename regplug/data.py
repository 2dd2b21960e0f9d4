"""Data sets for the examples: scikit-learn's digits (embedded, offline) or an MNIST-style .npz.

Nothing here downloads anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """Flattened float32 features in [0, 1] and integer labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """The 1,797 8×8 digit images that ship with scikit-learn, split train/test."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    # int(): with NumPy < 2, round() of a NumPy float (test_fraction may be one) is a float
    n_test = int(round(len(x) * test_fraction))  # noqa: RUF046
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def load_npz(path: str | Path) -> Dataset:
    """An MNIST-style ``.npz`` with ``x_train, y_train, x_test, y_test`` (Keras' mnist.npz)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file {str(path)!r} does not exist")
    try:
        archive = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"data file {str(path)!r} cannot be read as .npz: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"data file {str(path)!r} holds a single array, not an .npz archive "
                         f"with {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"data file {str(path)!r} lacks {missing}; it has {archive.files}")
        try:
            arrays = {k: archive[k] for k in NPZ_KEYS}
        except (OSError, ValueError) as err:  # object arrays need pickle; truncated files
            raise ValueError(f"data file {str(path)!r} cannot be read: {err}") from None
    return from_arrays(path.stem, arrays, source=f"data file {str(path)!r}", pixels=True)


def from_arrays(name: str, arrays: Mapping[str, ArrayLike], *, source: str = "data",
                pixels: bool = False) -> Dataset:
    """A :class:`Dataset` from the four arrays, checked: rows of x and y agree, train and
    test rows have the same number of features, labels are integers ``>= 0``.

    Images are flattened to rows. With ``pixels``, features above 1 are taken as 0–255
    pixel values and scaled to [0, 1]; otherwise they are kept as given (as float32).

    >>> d = from_arrays("tiny", {"x_train": np.ones((4, 2, 2)), "y_train": [0, 1, 1, 0],
    ...                          "x_test": np.ones((2, 2, 2)), "y_test": [1, 0]})
    >>> d.x_train.shape, d.n_classes
    ((4, 4), 2)
    """
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{source} lacks {missing}; it has {sorted(arrays)}")
    xs, ys = {}, {}
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"{source}: x_{split} is empty")
        if len(x) != len(y):
            raise ValueError(f"{source}: x_{split} has {len(x)} rows but "
                             f"y_{split} has {len(y)}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{source}: y_{split} must hold one integer label per row, got "
                             f"shape {y.shape} (one-hot labels: take their argmax)")
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)
                or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
            raise ValueError(f"{source}: y_{split} must hold integer class labels, got "
                             f"dtype {y.dtype}")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{source}: x_{split} must be numeric, got dtype {x.dtype}")
        if y.min() < 0:
            raise ValueError(f"{source}: y_{split} has negative labels (min {y.min()})")
        xs[split], ys[split] = x.reshape(len(x), -1), y.astype(np.int64)
    if xs["train"].shape[1] != xs["test"].shape[1]:
        raise ValueError(f"{source}: train rows have {xs['train'].shape[1]} "
                         f"features, test rows {xs['test'].shape[1]}")
    if not (np.isfinite(xs["train"]).all() and np.isfinite(xs["test"]).all()):
        raise ValueError(f"{source}: the features hold NaN or infinite values")
    scale = 255.0 if pixels and xs["train"].max() > 1.0 else 1.0
    return Dataset(name, (xs["train"] / scale).astype(np.float32), ys["train"],
                   (xs["test"] / scale).astype(np.float32), ys["test"])

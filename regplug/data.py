"""Data sets for the examples: scikit-learn's digits (embedded, offline) or an MNIST-style .npz.

Nothing here downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def load_npz(path: str | Path) -> Dataset:
    """An MNIST-style ``.npz`` with ``x_train, y_train, x_test, y_test`` (Keras' mnist.npz)."""
    path = Path(path)
    try:
        archive = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"data file {str(path)!r} cannot be read as .npz: {err}") from None
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"data file {str(path)!r} lacks {missing}; it has {archive.files}")
        arrays = {k: archive[k] for k in NPZ_KEYS}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ValueError(f"data file {str(path)!r}: x_{split} has {len(x)} rows but "
                             f"y_{split} has {len(y)}")
    x_train = arrays["x_train"].reshape(len(arrays["x_train"]), -1)
    x_test = arrays["x_test"].reshape(len(arrays["x_test"]), -1)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"data file {str(path)!r}: train rows have {x_train.shape[1]} "
                         f"features, test rows {x_test.shape[1]}")
    scale = 255.0 if x_train.max() > 1.0 else 1.0
    return Dataset(path.stem, (x_train / scale).astype(np.float32),
                   arrays["y_train"].astype(np.int64).ravel(),
                   (x_test / scale).astype(np.float32), arrays["y_test"].astype(np.int64).ravel())

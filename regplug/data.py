"""Deprecated: the data sets moved to :mod:`regplug.experiment.loaders` (the same names).

``load_digits``, ``load_mnist``, ``load_npz``, ``from_arrays`` and ``Dataset`` are read
from there; this module re-exports them and warns once at import.

Docs: docs/compare.md
"""

from __future__ import annotations

import warnings

from .experiment.loaders import Dataset, from_arrays, load_digits, load_mnist, load_npz

__all__ = ["Dataset", "load_digits", "load_mnist", "load_npz", "from_arrays"]

warnings.warn("regplug.data is deprecated: import from regplug.experiment.loaders "
              "(the same names)", DeprecationWarning, stacklevel=2)

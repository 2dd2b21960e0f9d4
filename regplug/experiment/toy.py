"""A 1-D regression toy for the MC-dropout uncertainty figure (every runner's ``mc_dropout``).

Noisy samples of a smooth curve on two intervals with a gap between them; predictions are
drawn on a grid that also covers the gap and both sides beyond the data, where a network
trained with dropout might be expected to be less certain. Beyond the data it is; in the
gap it is not (:func:`regplug.compare.plots.uncertainty_by_region` measures it, and the
figure's caption says what it measured).

Docs: docs/compare.md
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RegressionToy", "regression_toy", "TOY_HIDDEN", "TOY_DROPOUT", "TOY_EPOCHS",
           "TOY_SAMPLES", "TOY_LEARNING_RATE", "TOY_INTERVALS", "TOY_GRID"]

#: The toy network: 1 → 128 → 128 → 1, ReLU, dropout after each hidden layer; full-batch
#: Adam. Frameworks' runners build it from these numbers so both draw the same figure.
TOY_HIDDEN = (128, 128)
TOY_DROPOUT = 0.2
TOY_EPOCHS = 400
TOY_LEARNING_RATE = 0.01
TOY_SAMPLES = 200
#: Where the training points lie (two intervals with a gap between them), and the grid.
TOY_INTERVALS = ((-3.0, -1.0), (0.5, 2.5))
TOY_GRID = (-5.0, 5.0)


@dataclass(frozen=True)
class RegressionToy:
    """Training points ``(x_train, y_train)`` and the prediction grid ``x_grid``,
    all float32 columns of shape ``(n, 1)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_grid: np.ndarray


def regression_toy(seed: int = 0, n: int = 60) -> RegressionToy:
    """``y = sin(x) + x/4 + noise`` for ``x`` in [-3, -1] ∪ [0.5, 2.5]; grid over [-5, 5].

    >>> toy = regression_toy(0)
    >>> toy.x_train.shape, toy.x_grid.shape, toy.x_train.dtype.name
    ((60, 1), (400, 1), 'float32')
    """
    rng = np.random.default_rng(seed)
    half = n // 2
    (a, b), (c, d) = TOY_INTERVALS
    x = np.concatenate([rng.uniform(a, b, half), rng.uniform(c, d, n - half)])
    y = np.sin(x) + x / 4 + rng.normal(0.0, 0.1, n)
    grid = np.linspace(*TOY_GRID, 400)
    return RegressionToy(x.astype(np.float32)[:, None], y.astype(np.float32)[:, None],
                         grid.astype(np.float32)[:, None])

"""Watching one metric: its direction, its best value, and what counts as an improvement.

Shared by the plugins that follow a metric from epoch to epoch (early stopping, the
generalization-gap monitor), so "better" means the same thing everywhere.

Docs: docs/plugins/early-stopping.md
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping

import numpy as np

from regplug.errors import RegplugWarning
from regplug.validation import check_choice, check_real

# Name parts that say which way a metric should go (after removing a "val_" prefix).
_LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "mape", "rmse", "msle",
                    "crossentropy", "hinge", "perplexity", "divergence", "gap", "pct_diff")
_HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "precision", "recall", "f1", "f1_score", "iou",
                     "r2", "r2_score", "top_k", "dice", "map", "psnr", "ssim")


def infer_mode(monitor: str) -> str | None:
    """``"min"`` or ``"max"`` from the metric's name, ``None`` when the name does not tell.

    >>> (infer_mode("val_loss"), infer_mode("val_accuracy"),
    ...  infer_mode("sparse_categorical_accuracy"))
    ('min', 'max', 'max')
    >>> infer_mode("throughput") is None
    True
    """
    name = monitor.lower().removeprefix("val_")
    words = set(re.split(r"[^a-z0-9]+", name)) | {name}
    if words & set(_LOWER_IS_BETTER):
        return "min"
    if words & set(_HIGHER_IS_BETTER):
        return "max"
    return None


def improves_like_keras(value: float, reference: float, min_delta: float, mode: str) -> bool:
    """Keras' improvement test (``MonitorCallback._is_improvement``), to the last bit.

    Keras shifts the value by ``min_delta`` in Python floats (float64), then compares with
    ``ops.less``/``ops.greater``, which turn both sides into float32 tensors on the
    TensorFlow, JAX and torch backends. So a tie in float32 is no improvement, although the
    float64 numbers differ: ``0.4 - 0.1 > 0.3`` is true in float64, false here.

    >>> improves_like_keras(0.4, 0.3, 0.1, "max"), 0.4 - 0.1 > 0.3
    (False, True)
    >>> improves_like_keras(0.19, 0.3, 0.1, "min"), improves_like_keras(0.2, 0.3, 0.1, "min")
    (True, False)
    """
    with np.errstate(over="ignore"):  # beyond float32's range is ±inf, as in Keras
        if mode == "min":
            return bool(np.float32(value + min_delta) < np.float32(reference))
        return bool(np.float32(value - min_delta) > np.float32(reference))


class MetricTracker:
    """One monitored metric: direction, ``min_delta`` and the improvement test.

    The rule is Keras': a value improves on a reference when it is better by more than
    ``min_delta`` (``value + min_delta < reference`` in ``min`` mode, compared in float32 as
    Keras does: :func:`improves_like_keras`); any value improves on no reference at all.

    :param owner: plugin name, for messages.
    :param monitor: the key in the epoch's logs, e.g. ``"val_loss"``.
    :param mode: ``"min"``, ``"max"`` or ``"auto"`` (from the name: losses and errors go down,
        accuracies and AUCs go up). An explicit mode that contradicts the name is a warning.
    :param min_delta: smallest change that counts as an improvement (``>= 0``).

    >>> t = MetricTracker("early_stopping", "val_loss", min_delta=0.01)
    >>> t.mode, t.improves(0.50, None), t.improves(0.495, 0.50), t.improves(0.48, 0.50)
    ('min', True, False, True)
    """

    def __init__(self, owner: str, monitor: str, mode: str = "auto",
                 min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{owner}: argument 'monitor' must be a metric name such as "
                            f"'val_loss', got {monitor!r}")
        mode = check_choice(owner, "mode", mode, ("auto", "min", "max"))
        inferred = infer_mode(monitor)
        if mode == "auto":
            if inferred is None:
                raise ValueError(
                    f"{owner}: cannot tell from its name whether {monitor!r} should go down or "
                    "up; pass mode='min' (losses, errors) or mode='max' (accuracies, scores)")
            mode = inferred
        elif inferred is not None and inferred != mode:
            warnings.warn(
                f"{owner}: mode={mode!r} treats {'lower' if mode == 'min' else 'higher'} "
                f"{monitor!r} as better, but its name says it should go "
                f"{'down' if inferred == 'min' else 'up'}; pass mode={inferred!r} or "
                "mode='auto' unless this is intended", RegplugWarning, stacklevel=3)
        self.owner = owner
        self.monitor = monitor
        self.mode = mode
        self.min_delta = check_real(owner, "min_delta", min_delta)

    def improves(self, value: float, reference: float | None) -> bool:
        """Whether ``value`` is better than ``reference`` by more than ``min_delta``, decided
        in float32 as Keras decides (:func:`improves_like_keras`)."""
        if reference is None:
            return True
        return improves_like_keras(value, reference, self.min_delta, self.mode)

    def better(self, value: float, reference: float) -> bool:
        """Whether ``value`` is strictly better than ``reference`` (no ``min_delta``)."""
        return value < reference if self.mode == "min" else value > reference

    def read(self, logs: Mapping[str, float]) -> float | None:
        """The monitored value in ``logs``, or ``None`` when the epoch did not log it."""
        value = logs.get(self.monitor)
        return None if value is None else float(value)

    @staticmethod
    def finite(value: float) -> bool:
        return math.isfinite(value)

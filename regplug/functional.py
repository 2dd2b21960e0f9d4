"""The math of the built-in plugins as pure NumPy functions: the reference semantics.

Each adapter's fused implementation is tested against these; the numpy backend uses them
directly. Conventions follow Keras so numbers carry over: ``l2_penalty`` has no ½.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def l1_penalty(weights: list[ArrayLike], l1: float) -> float:
    """``l1 · Σ|θ|`` (Keras ``regularizers.L1(l1)``)."""
    return l1 * float(sum(np.abs(np.asarray(w, dtype=np.float64)).sum() for w in weights))


def l2_penalty(weights: list[ArrayLike], l2: float) -> float:
    """``l2 · Σθ²`` (Keras ``regularizers.L2(l2)``; its gradient is ``2·l2·θ``)."""
    return l2 * float(sum(np.square(np.asarray(w, dtype=np.float64)).sum() for w in weights))


def soft_threshold(x: ArrayLike, threshold: float) -> NDArray[Any]:
    """``sign(x) · max(|x| − t, 0)``: the proximal operator of ``t·|x|``; gives exact zeros.

    >>> soft_threshold(np.array([-2.0, -0.5, 0.0, 0.3, 1.5]), 1.0).tolist()
    [-1.0, 0.0, 0.0, 0.0, 0.5]
    """
    x = np.asarray(x)
    out: NDArray[Any] = (np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0)).astype(x.dtype)
    return out + 0.0


def max_norm_scale(norms: ArrayLike, max_norm: float, eps: float = 1e-7) -> NDArray[Any]:
    """Factor that brings each unit's norm to at most ``max_norm``; 1 where already within."""
    norms = np.asarray(norms)
    scale: NDArray[Any] = np.where(norms > max_norm, max_norm / (norms + eps), 1.0)
    return scale.astype(norms.dtype)


def clip_unit_norms(w: ArrayLike, max_norm: float, unit_axis: int | None) -> NDArray[Any]:
    """Rescale each unit (an index along ``unit_axis``) to L2 norm ``<= max_norm``."""
    w = np.asarray(w)
    if unit_axis is None:
        norms = np.sqrt(np.sum(w * w))
    else:
        axes = tuple(a for a in range(w.ndim) if a != unit_axis % w.ndim)
        norms = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
    clipped: NDArray[Any] = w * max_norm_scale(norms, max_norm)
    return clipped


def decoupled_decay_factor(learning_rate: float, weight_decay: float) -> float:
    """``1 − lr·wd``: the factor AdamW multiplies the weights by before each update."""
    return 1.0 - learning_rate * weight_decay


# -- early stopping criteria (Prechelt, "Early Stopping — But When?", 1998) ------------------
def generalization_loss(val_error: float, best_val_error: float) -> float:
    """``GL = 100 · (E_va / E_opt − 1)``: how far (in percent) validation error rose above its
    lowest value so far.

    >>> round(generalization_loss(0.22, 0.20), 6)
    10.0
    """
    if best_val_error <= 0:
        return 0.0 if val_error <= best_val_error else float("inf")
    return 100.0 * (val_error / best_val_error - 1.0)


def training_progress(strip: list[float]) -> float:
    """``P_k = 1000 · (Σ E_tr / (k · min E_tr) − 1)`` over the last strip of ``k`` epochs'
    training errors: large while training error still falls fast, 0 when it is flat.

    >>> round(training_progress([0.3, 0.2, 0.1]), 6)
    1000.0
    """
    lowest = min(strip)
    if lowest <= 0:
        return 0.0 if max(strip) <= 0 else float("inf")
    return 1000.0 * (sum(strip) / (len(strip) * lowest) - 1.0)


def progress_quotient(val_error: float, best_val_error: float, strip: list[float]) -> float:
    """``PQ = GL / P_k``: generalization loss per unit of training progress (0 when there is
    no generalization loss; infinite when training has stalled while validation got worse)."""
    gl = generalization_loss(val_error, best_val_error)
    if gl <= 0:
        return 0.0
    progress = training_progress(strip)
    return float("inf") if progress <= 0 else gl / progress


def pct_diff(acc_train: float, acc_test: float) -> float:
    """``1 − acc_test / acc_train``: the relative generalization gap of the comparison notebook.

    >>> round(pct_diff(0.99, 0.95), 4)
    0.0404
    """
    if acc_train == 0:
        return 0.0 if acc_test == 0 else float("-inf")
    return 1.0 - acc_test / acc_train

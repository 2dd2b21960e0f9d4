"""The reference backend: :class:`regplug.Ops` over NumPy arrays, changed in place.

Used by :mod:`regplug.testing` so plugins are specified and tested without a framework.
Gradients live in :attr:`NumpyOps.grads`, keyed by parameter name.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import functional as F
from .ops import check_copies
from .run import ParamHandle


class NumpyOps:
    """:class:`regplug.Ops` for ``numpy.ndarray`` parameters."""

    framework = "numpy"

    def __init__(self) -> None:
        self.grads: dict[str, np.ndarray] = {}
        #: Names of the parameters :meth:`set_trainable_` switched off.
        self.frozen: set[str] = set()

    def _with_grad(self, params: Sequence[ParamHandle]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(p.tensor, self.grads[p.name]) for p in params if p.name in self.grads]

    # The reference sums in float64: adapters' float32 results are compared against it.
    def sum_squares(self, params: Sequence[ParamHandle]) -> np.float64:
        total: np.float64 = np.float64(F.l2_penalty([p.tensor for p in params], 1.0))
        return total

    def sum_abs(self, params: Sequence[ParamHandle]) -> np.float64:
        total: np.float64 = np.float64(F.l1_penalty([p.tensor for p in params], 1.0))
        return total

    def add_to_grad_(self, params: Sequence[ParamHandle], alpha: float) -> None:
        for theta, grad in self._with_grad(params):
            grad += alpha * theta

    def add_sign_to_grad_(self, params: Sequence[ParamHandle], alpha: float) -> None:
        for theta, grad in self._with_grad(params):
            grad += alpha * np.sign(theta)

    def scale_(self, params: Sequence[ParamHandle], factor: float) -> None:
        for p in params:
            np.multiply(p.tensor, factor, out=p.tensor)

    def soft_threshold_(self, params: Sequence[ParamHandle], threshold: float) -> None:
        for p in params:
            p.tensor[...] = F.soft_threshold(p.tensor, threshold)

    def clip_unit_norms_(self, params: Sequence[ParamHandle], max_norm: float) -> None:
        for p in params:
            p.tensor[...] = F.clip_unit_norms(p.tensor, max_norm, p.unit_axis)

    def clone(self, params: Sequence[ParamHandle]) -> list[np.ndarray]:
        return [np.array(p.tensor, copy=True) for p in params]

    def copy_into_(self, dst: Sequence[np.ndarray], params: Sequence[ParamHandle]) -> None:
        check_copies("copy_into_", dst, params)
        for target, p in zip(dst, params):
            np.copyto(target, p.tensor)

    def copy_from_(self, params: Sequence[ParamHandle], src: Sequence[Any]) -> None:
        check_copies("copy_from_", src, params)
        for p, source in zip(params, src):
            np.copyto(p.tensor, source)

    def scale_update_(self, params: Sequence[ParamHandle], before: Sequence[np.ndarray],
                      factors: Sequence[float]) -> None:
        check_copies("scale_update_", before, params)
        for p, b, f in zip(params, before, factors, strict=True):
            if p.name in self.grads and p.name not in self.frozen:
                p.tensor[...] = b + f * (p.tensor - b)

    def set_trainable_(self, params: Sequence[ParamHandle], trainable: bool) -> bool:
        for p in params:
            (self.frozen.discard if trainable else self.frozen.add)(p.name)
        return True

    def zero_grads_(self, params: Sequence[ParamHandle], where: float) -> None:
        if where:
            for p in params:
                if p.name in self.grads:
                    self.grads[p.name][...] = 0.0

    def hold(self, params: Sequence[ParamHandle]) -> list[np.ndarray]:
        return [np.array(p.tensor, copy=True) for p in params]

    def put_back_(self, params: Sequence[ParamHandle], held: Sequence[np.ndarray],
                  where: float) -> None:
        check_copies("put_back_", held, params)
        if where:
            for p, value in zip(params, held):
                np.copyto(p.tensor, value)

    def moving_average_(self, averages: Sequence[ParamHandle], params: Sequence[ParamHandle],
                        momentum: float) -> None:
        # Keras' use_ema formula, term for term: momentum 0 gives θ exactly.
        for a, p in zip(averages, params, strict=True):
            a.tensor[...] = momentum * a.tensor + (1 - momentum) * p.tensor

    def load_copies_(self, copies: Sequence[ParamHandle], arrays: Sequence[object]) -> None:
        for c, array in zip(copies, arrays, strict=True):
            np.copyto(c.tensor, np.asarray(array, dtype=c.tensor.dtype))

    def sum_squares_diff(self, params: Sequence[ParamHandle],
                         reference: Sequence[np.ndarray]) -> np.float64:
        check_copies("sum_squares_diff", reference, params)
        total: np.float64 = np.float64(F.l2_penalty(
            [np.asarray(p.tensor, np.float64) - np.asarray(r, np.float64)
             for p, r in zip(params, reference)], 1.0))
        return total

    def add_diff_to_grad_(self, params: Sequence[ParamHandle], reference: Sequence[np.ndarray],
                          alpha: float) -> None:
        check_copies("add_diff_to_grad_", reference, params)
        for p, r in zip(params, reference):
            grad = self.grads.get(p.name)
            if grad is not None:
                grad += alpha * (p.tensor - r)

    def to_float(self, value: object) -> float:
        return float(value)  # type: ignore[arg-type]

    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        return (sum(int(np.count_nonzero(p.tensor == 0)) for p in params),
                sum(p.size for p in params))

    def to_numpy(self, params: Sequence[ParamHandle]) -> list[np.ndarray]:
        return [np.array(p.tensor, copy=True) for p in params]

    def grad_norms(self, params: Sequence[ParamHandle]) -> list[np.float32]:
        return [np.float32(np.linalg.norm(self.grads[p.name])) if p.name in self.grads
                else np.float32(0.0) for p in params]

    def zero_grad_units(self, params: Sequence[ParamHandle]) -> list[np.float32]:
        out = []
        for p in params:
            grad = self.grads.get(p.name)
            if grad is None or p.unit_axis is None or np.ndim(grad) < 2:
                out.append(np.float32(1.0 if grad is None else np.nan))
                continue
            axis = p.unit_axis % np.ndim(grad)
            rows = np.moveaxis(np.asarray(grad), axis, 0).reshape(np.shape(grad)[axis], -1)
            out.append(np.float32(np.mean(~np.any(rows != 0, axis=1))))
        return out


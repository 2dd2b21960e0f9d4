"""Loss penalties on the weights: L1, L2 and their sum (elastic net), with Keras' conventions.

``L2(l2)`` adds ``l2 · Σθ²`` (no ½), ``L1(l1)`` adds ``l1 · Σ|θ|``: the same numbers as
``keras.regularizers.L2/L1/L1L2``, so a Keras user's strengths carry over unchanged. In a
plain SGD loop, ``L2(λ)`` equals ``torch.optim.SGD(weight_decay=2λ)`` on the selected
parameters. The math is in :mod:`regplug.functional`; here only when and on what.

Docs: docs/plugins/penalties.md
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, cast

from regplug.hookspecs import hookimpl
from regplug.penalty import Penalty
from regplug.ranges import FloatRange, SearchRange
from regplug.run import Run

from ._base import Binding, ParameterPlugin, Strength

# Search ranges for ``regplug tune``, judged on the comparison notebook's MLP (plain SGD,
# lr 0.05, cross-entropy, ~10^5 weights). Strengths are searched on a log scale: what matters
# is the decade. The low end changes nothing measurable, the high end visibly underfits.
#: L2 adds 2·l2·θ to each gradient: at 1e-6 the decay per step (lr·2·l2 = 1e-7) is nothing,
#: at 1e-1 it is 1% of every weight per step, which flattens the network within an epoch.
L2_RANGE = FloatRange(1e-6, 1e-1, log=True)
#: L1 shifts each weight by lr·l1 per step towards 0 and adds l1·Σ|θ| (~10^3·l1 for this MLP)
#: to a loss of order 1: at 1e-2 the penalty dominates the data term.
L1_RANGE = FloatRange(1e-6, 1e-2, log=True)


class _PenaltyPlugin(ParameterPlugin):
    """A penalty built once per run from the selection and strengths, returned every step."""

    @hookimpl
    def on_loss(self, run: Run) -> Penalty:
        return cast("Penalty", self._prepared(run)["on_loss"]())

    def _prepare(self, bound: Binding) -> dict[str, Callable[[], object]]:
        penalty = self._penalty(bound)
        return {"on_loss": lambda: penalty}

    def _penalty(self, bound: Binding) -> Penalty:
        raise NotImplementedError


class L2(_PenaltyPlugin):
    """Add ``l2 · Σθ²`` over the selected parameters to the loss (a Gaussian prior).

    :param l2: strength, a number ``>= 0`` or a schedule (default 0.01, as Keras).
    :param kinds: parameter kinds to act on (default weights only: biases, normalization
        parameters and embeddings are left alone); ``"all"`` for every kind.
    :param include: name patterns (globs) a parameter must match, e.g. ``"encoder.*"``.
    :param exclude: name patterns of parameters to leave alone.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.array([[3.0]]), "bias": np.array([3.0])}, [L2(0.1)])
    >>> round(loop.penalty(), 9)  # 0.1 * 3² — the bias is not selected
    0.9
    """

    tunable: ClassVar[Mapping[str, SearchRange]] = {"l2": L2_RANGE}

    def __init__(self, l2: Strength = 0.01, *, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("l2", l2)

    def _penalty(self, bound: Binding) -> Penalty:
        params, ops, l2 = bound.params, bound.run.ops, bound.values["l2"]
        return Penalty(
            name=f"{self.name}_penalty",
            value=lambda: l2.value * ops.sum_squares(params),
            add_grad=lambda: ops.add_to_grad_(params, 2.0 * l2.value),
        )


class L1(_PenaltyPlugin):
    """Add ``l1 · Σ|θ|`` over the selected parameters to the loss (a Laplace prior).

    Pushes small weights towards zero; with a gradient optimizer they oscillate around zero
    rather than reaching it — use :class:`~regplug.plugins.ProximalL1` for exact zeros.
    Arguments as :class:`L2` (default ``l1=0.01``, as Keras). The gradient at ``θ = 0`` is 0.
    """

    tunable: ClassVar[Mapping[str, SearchRange]] = {"l1": L1_RANGE}

    def __init__(self, l1: Strength = 0.01, *, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("l1", l1)

    def _penalty(self, bound: Binding) -> Penalty:
        params, ops, l1 = bound.params, bound.run.ops, bound.values["l1"]
        return Penalty(
            name=f"{self.name}_penalty",
            value=lambda: l1.value * ops.sum_abs(params),
            add_grad=lambda: ops.add_sign_to_grad_(params, l1.value),
        )


class ElasticNet(_PenaltyPlugin):
    """Add ``l1 · Σ|θ| + l2 · Σθ²`` (Keras ``regularizers.L1L2``; both default to 0)."""

    # Each part over its own range: the two act on different scales (|θ| and θ²).
    tunable: ClassVar[Mapping[str, SearchRange]] = {"l1": L1_RANGE, "l2": L2_RANGE}

    def __init__(self, l1: Strength = 0.0, l2: Strength = 0.0, *,
                 kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("l1", l1)
        self._strength("l2", l2)

    def _penalty(self, bound: Binding) -> Penalty:
        params, ops = bound.params, bound.run.ops
        l1, l2 = bound.values["l1"], bound.values["l2"]

        def add_grad() -> None:
            ops.add_sign_to_grad_(params, l1.value)
            ops.add_to_grad_(params, 2.0 * l2.value)

        return Penalty(
            name=f"{self.name}_penalty",
            value=lambda: l1.value * ops.sum_abs(params) + l2.value * ops.sum_squares(params),
            add_grad=add_grad,
        )


__all__ = ["L1", "L2", "ElasticNet"]

"""Group lasso with one group per parameter tensor, written only against regplug's Run and ops.

The penalty is ``strength · Σ_g √|g| · ‖θ_g‖₂`` (Yuan & Lin's group lasso, each group
weighted by the square root of its size). Unlike L1, which shrinks single weights, it
shrinks a whole tensor towards zero *together*: the tensors that do not pay for themselves
in the loss fade out as a unit. With one group per tensor that means whole layers, branches,
experts, or per-feature embedding tables.

Nothing here imports a framework: the math goes through ``run.ops`` and a strength from
``run.scalar``, so the same plugin object trains a PyTorch loop, Keras' ``model.fit`` and
regplug's NumPy test loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import regplug
from regplug.ranges import FloatRange, SearchRange
from regplug.schedules import Schedule, as_schedule

#: Added to each ``Σθ_g²`` under the square root, so that the penalty has a gradient (zero)
#: at ``θ_g = 0`` instead of a division by zero; it adds ``√EPS = 1e-12`` per group.
EPS = 1e-24

#: One group: the handles whose elements form it, and the group's weight ``√|g|``.
Group = tuple[Sequence[regplug.ParamHandle], float]


def group_lasso_value(ops: regplug.Ops, groups: Sequence[Group], strength: Any) -> Any:
    """``strength · Σ_g w_g · √(Σθ_g² + EPS)`` as a framework scalar, through ``ops``.

    Differentiable and traceable: only ``ops`` values and arithmetic on them, no host reads.
    """
    return strength * sum(weight * (ops.sum_squares(group) + EPS) ** 0.5
                          for group, weight in groups)


def add_group_lasso_grad(ops: regplug.Ops, groups: Sequence[Group], strength: Any) -> None:
    """Add the exact gradient of :func:`group_lasso_value` to the parameters' gradients.

    ``∂/∂θ_g = strength · w_g · θ_g / √(Σθ_g² + EPS)``: each group's gradient grows by
    its own weights times one factor, which is what ``ops.add_to_grad_`` does.
    """
    for group, weight in groups:
        ops.add_to_grad_(group, strength * weight / (ops.sum_squares(group) + EPS) ** 0.5)


class GroupLasso(regplug.Plugin):
    """Add ``strength · Σ_g √|g| · ‖θ_g‖₂`` to the loss, one group per selected tensor.

    :param strength: a number ``>= 0``, a :class:`regplug.Schedule`, or a schedule config
        such as ``{"schedule": "linear_warmup", "value": 1e-3, "warmup_steps": 500}``
        (default 1e-3).
    :param kinds: parameter kinds to act on (default weights only); ``"all"`` for every kind.
    :param include: name patterns (globs) a parameter must match, e.g. ``"branch_*.weight"``.
    :param exclude: name patterns of parameters to leave alone.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"a.weight": np.full((2, 2), 3.0), "b.weight": np.zeros((1, 3)),
    ...                   "a.bias": np.ones(2)}, [GroupLasso(0.1)])
    >>> round(loop.penalty(), 6)  # 0.1 · √4 · ‖a.weight‖; b.weight is 0; biases are not selected
    1.2
    """

    # What ``regplug tune`` searches (regplug reads this attribute; the plugin needs nothing
    # else to be tunable). The penalty grows as strength · √|g| · ‖θ_g‖, about 2·10³·strength
    # for a 784×128 layer at initialization: 1e-6 adds ~2e-3 to a loss of order 1 (no
    # effect), 1e-1 ~200 (every tensor driven to zero). Log scale: the decade matters.
    tunable: ClassVar[Mapping[str, SearchRange]] = {
        "strength": FloatRange(1e-6, 1e-1, log=True)}

    def __init__(self, strength: float | Schedule | dict[str, Any] = 1e-3, *,
                 kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        self.strength = as_schedule(strength, owner="GroupLasso", arg="strength")
        self.selection = regplug.Selection.build("GroupLasso", kinds=kinds, include=include,
                                                 exclude=exclude)
        self._run: regplug.Run | None = None
        self._penalty: regplug.Penalty | None = None

    # -- hooks ---------------------------------------------------------------------------
    @regplug.hookimpl
    def on_train_begin(self, run: regplug.Run) -> None:
        self._bind(run)

    @regplug.hookimpl
    def on_loss(self, run: regplug.Run) -> regplug.Penalty:
        # Built once per run and returned every time: in Keras this body runs while the
        # train step is traced, so it must not depend on anything that changes per step.
        if self._run is not run or self._penalty is None:
            return self._bind(run)
        return self._penalty

    @regplug.hookimpl
    def on_train_end(self, run: regplug.Run) -> None:
        self._run = self._penalty = None  # keep no reference to the model's tensors

    def _bind(self, run: regplug.Run) -> regplug.Penalty:
        groups: list[Group] = [([p], math.sqrt(p.size)) for p in run.parameters(self.selection)]
        strength = run.scalar(self.strength)  # a float in PyTorch, a variable in Keras
        ops = run.ops
        self._run = run
        self._penalty = regplug.Penalty(
            name=f"{self.name}_penalty",
            value=lambda: group_lasso_value(ops, groups, strength.value),
            add_grad=lambda: add_group_lasso_grad(ops, groups, strength.value),
        )
        return self._penalty

    # -- description and checkpoints --------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The arguments the plugin was built with, as plain values."""
        return {"strength": self.strength.to_config(),
                "kinds": list(self.selection.kinds), "include": list(self.selection.include),
                "exclude": list(self.selection.exclude)}

    def state_dict(self) -> dict[str, Any]:
        """Nothing changes during training; the config is kept to detect a mismatched resume."""
        return {"config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        if saved is not None and saved != self.config():
            raise ValueError(f"{self!r}: the checkpoint was written by a GroupLasso configured "
                             f"differently: {saved}")

    def __repr__(self) -> str:
        shown = (self.strength.value if isinstance(self.strength, regplug.Constant)
                 else self.strength)
        parts = [f"strength={shown!r}"]
        if self.selection != regplug.Selection():
            parts.append(self.selection.describe())
        return f"GroupLasso({', '.join(parts)})"

"""Proximal L1: soft-thresholding after each update, which makes small weights exactly 0.

Docs: docs/plugins/update-rules.md
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar

from regplug.hookspecs import hookimpl
from regplug.ranges import FloatRange, SearchRange
from regplug.run import Run

from ._base import Binding, ParameterPlugin, Strength


class ProximalL1(ParameterPlugin):
    """After every optimizer update, ``θ ← sign(θ)·max(|θ| − lr·l1, 0)``.

    This is the proximal step of ``l1·Σ|θ|`` (ISTA): with plain SGD it minimises the same
    objective as :class:`~regplug.plugins.L1`, but weights whose magnitude falls below the
    threshold become *exactly* zero instead of oscillating around it — a sparse model.
    With adaptive optimizers (Adam) the threshold ``lr·l1`` is applied as is; it is then a
    sparsifying heuristic, not an exact proximal step.

    :param l1: strength ``>= 0`` or a schedule (default 0.01, as ``L1``).
    :param kinds, include, exclude: parameter selection, as for :class:`~regplug.plugins.L2`.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.array([[0.05, -1.0]])}, [ProximalL1(1.0)], lr=0.1)
    >>> loop.step({"w": np.zeros((1, 2))}); loop.params["w"].tolist()
    [[0.0, -0.9]]
    """

    # The threshold per update is lr·l1. For the notebook MLP (SGD, lr 0.05) 1e-5 zeroes
    # only weights below 5e-7 (nothing), 1e-1 removes 5e-3 a step, which zeroes every weight
    # of a unit's initial size (~0.03) within a few dozen steps.
    tunable: ClassVar[Mapping[str, SearchRange]] = {"l1": FloatRange(1e-5, 1e-1, log=True)}

    def __init__(self, l1: Strength = 0.01, *, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("l1", l1)

    @hookimpl
    def on_step(self, run: Run) -> None:
        self._prepared(run)["on_step"]()

    def _prepare(self, bound: Binding) -> dict[str, Callable[[], object]]:
        params, ops, groups = bound.params, bound.run.ops, bound.run.learning_rate_groups
        strength = bound.values["l1"]

        def shrink() -> None:
            l1 = strength.value
            for lr, group in groups(params):
                ops.soft_threshold_(group, lr * l1)

        return {"on_step": shrink}

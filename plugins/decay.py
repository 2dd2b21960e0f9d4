"""Decoupled weight decay (Loshchilov & Hutter, 2019): shrink the weights, not the gradient.

Docs: docs/plugins/update-rules.md
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar

from regplug.functional import decoupled_decay_factor
from regplug.hookspecs import hookimpl
from regplug.ranges import FloatRange, SearchRange
from regplug.run import Run

from ._base import Binding, ParameterPlugin, Strength


class DecoupledWeightDecay(ParameterPlugin):
    """Multiply the selected weights by ``1 − lr·weight_decay`` at every optimizer update.

    Acts right before the update, after the gradients are computed, with the learning rate
    each parameter's optimizer group has at that step — the rule of ``torch.optim.AdamW``, so
    ``Adam`` + ``DecoupledWeightDecay(wd)`` gives the weights of an AdamW that decays the same
    parameters. Unlike an L2 penalty, the decay does not pass through the optimizer's adaptive
    scaling. The default selection (weights only: biases and normalization parameters are not
    decayed) is what most AdamW recipes configure by hand with parameter groups;
    ``AdamW(model.parameters())`` decays every parameter, as ``kinds="all"`` does (see
    docs/plugins/update-rules.md).

    :param weight_decay: ``>= 0`` or a schedule (default 0.01, as ``torch.optim.AdamW``).
    :param kinds, include, exclude: parameter selection, as for :class:`~regplug.plugins.L2`.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.ones((1, 1))}, [DecoupledWeightDecay(0.5)], lr=0.1)
    >>> loop.step({"w": np.zeros((1, 1))}); loop.params["w"].item()  # 1 - 0.1 * 0.5
    0.95
    """

    # Each update multiplies the weights by 1 - lr·wd. For the notebook MLP (SGD, lr 0.05):
    # 1e-5 shrinks them by 5e-7 a step (nothing), 1.0 by 5% a step (they collapse to zero
    # within an epoch). AdamW's usual 0.01..0.1 sits in the middle decades.
    tunable: ClassVar[Mapping[str, SearchRange]] = {
        "weight_decay": FloatRange(1e-5, 1.0, log=True)}

    def __init__(self, weight_decay: Strength = 0.01, *,
                 kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("weight_decay", weight_decay)

    @hookimpl
    def on_before_step(self, run: Run) -> None:
        self._prepared(run)["on_before_step"]()

    def _prepare(self, bound: Binding) -> dict[str, Callable[[], object]]:
        params, ops, groups = bound.params, bound.run.ops, bound.run.learning_rate_groups
        weight_decay = bound.values["weight_decay"]

        def decay() -> None:
            wd = weight_decay.value
            for lr, group in groups(params):
                ops.scale_(group, decoupled_decay_factor(lr, wd))

        return {"on_before_step": decay}

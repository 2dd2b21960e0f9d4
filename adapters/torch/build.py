"""Building the :class:`regplug.Run` of a PyTorch model and its optimizer (:func:`build_run`):
what every torch event source (the hand-written loop's :func:`~regplug.adapters.torch.attach`,
a trainer's callback) hands to the plugins.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regplug.run import ParamHandle, Run, TrialTraining

from .discovery import discover_dropout, discover_parameters
from .ops import TorchOps
from .state import TorchModelState
from .world import default_world

__all__ = ["LearningRates", "build_run"]


class LearningRates:
    """The optimizer's current learning rate for each group of parameters
    (:meth:`regplug.Run.group_by_learning_rate`), read at every call."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._group_of = {id(p): i for i, g in enumerate(optimizer.param_groups)
                          for p in g["params"]}
        self._cache: dict[int, tuple[Sequence[ParamHandle], list[tuple[int, list[ParamHandle]]]]]
        self._cache = {}

    def groups(self, params: Sequence[ParamHandle]) -> list[tuple[Any, list[ParamHandle]]]:
        groups = self.optimizer.param_groups
        if len(groups) == 1:  # the common case: one learning rate for everything
            return [(groups[0]["lr"], params)] if params else []  # type: ignore[list-item]
        cached = self._cache.get(id(params))
        if cached is None or cached[0] is not params:
            if len(self._cache) > 64:  # a plugin passing fresh lists every step
                self._cache.clear()
            by_group: dict[int, list[ParamHandle]] = {}
            for p in params:
                by_group.setdefault(self._group_of[id(p.tensor)], []).append(p)
            cached = (params, list(by_group.items()))
            self._cache[id(params)] = cached
        return [(groups[i]["lr"], ps) for i, ps in cached[1]]


def build_run(model: nn.Module, optimizer: torch.optim.Optimizer, *, world: Any = None,
              trial: TrialTraining | None = None) -> Run:
    """A run over the parameters ``optimizer`` updates, named and typed from ``model``.

    :param world: the processes' vote collector; by default ``torch.distributed`` when it is
        initialised, else a single process.
    :param trial: what serves ``run.trial_training``, if anything.

    >>> model = torch.nn.Linear(3, 2)
    >>> run = build_run(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> [(p.name, p.kind) for p in run.parameters()], run.framework
    ([('weight', 'weight')], 'torch')
    """
    params = discover_parameters(model, optimizer)
    device = params[0].tensor.device if params else torch.device("cpu")
    run = Run(params=params, ops=TorchOps(),
              learning_rate_groups=LearningRates(optimizer).groups,
              device=str(device), framework="torch",
              dropout_layers_provider=lambda: discover_dropout(model),
              model_state_provider=TorchModelState(model),
              trial_training_provider=trial)
    world = world if world is not None else default_world(device)
    if world is not None:
        run.world = world
    return run

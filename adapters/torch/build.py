"""Building the :class:`regplug.Run` of a PyTorch model and its optimizer (:func:`build_run`):
what every torch event source (the hand-written loop's :func:`~regplug.adapters.torch.attach`,
a trainer's callback) hands to the plugins.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from regplug.errors import RegplugWarning
from regplug.run import ParamHandle, Run, TrialTraining

from .discovery import discover_dropout, discover_parameters
from .ops import TorchOps
from .state import TorchModelState
from .world import default_world

__all__ = ["LearningRates", "build_run", "warn_double_decay"]


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


def warn_double_decay(run: Run, optimizer: torch.optim.Optimizer, plugins: Iterable[object], *,
                      adapter: str = "attach") -> list[str]:
    """Warn (:class:`~regplug.RegplugWarning`, once per plugin) for each
    :class:`~regplug.plugins.DecoupledWeightDecay` whose parameters the optimizer decays
    too (a ``weight_decay`` above 0 in their group: ``AdamW``'s default, or ``Adam``'s and
    ``SGD``'s L2 form): they would decay twice. Returns the plugins warned about.

    >>> import warnings
    >>> from regplug.plugins import DecoupledWeightDecay
    >>> model = torch.nn.Linear(3, 2)
    >>> opt = torch.optim.AdamW(model.parameters(), weight_decay=0.01)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_double_decay(build_run(model, opt), opt, [DecoupledWeightDecay(0.1)])
    ['DecoupledWeightDecay(weight_decay=0.1)']
    >>> print(caught[0].message)  # doctest: +NORMALIZE_WHITESPACE
    attach: DecoupledWeightDecay(weight_decay=0.1) decays 1 parameter that AdamW decays too
    (its weight_decay=0.01): the weights decay twice. Set the optimizer's weight_decay=0
    (Adam + DecoupledWeightDecay is AdamW with undecayed biases), or drop the plugin
    """
    from regplug.plugins import DecoupledWeightDecay

    decay = {id(p): float(g.get("weight_decay", 0.0) or 0.0)
             for g in optimizer.param_groups for p in g["params"]}
    warned = []
    for plugin in plugins:
        if not isinstance(plugin, DecoupledWeightDecay):
            continue
        twice = [decay[id(h.tensor)] for h in run.params
                 if plugin.selection.matches(h) and decay.get(id(h.tensor), 0.0) > 0.0]
        if not twice:
            continue
        values = ", ".join(f"{v:g}" for v in sorted(set(twice)))
        count = f"{len(twice)} parameter{'' if len(twice) == 1 else 's'}"
        warnings.warn(
            f"{adapter}: {plugin!r} decays {count} that {type(optimizer).__name__} decays too "
            f"(its weight_decay={values}): the weights decay twice. Set the optimizer's "
            "weight_decay=0 (Adam + DecoupledWeightDecay is AdamW with undecayed biases), "
            "or drop the plugin",
            RegplugWarning, stacklevel=4)
        warned.append(repr(plugin))
    return warned

"""Building the :class:`regplug.Run` of a PyTorch model and its optimizer (:func:`build_run`):
what every torch event source (the hand-written loop's :func:`~regplug.adapters.torch.attach`,
a trainer's callback) hands to the plugins.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from regplug.errors import RegplugWarning, UsageError
from regplug.run import ParamHandle, Run, TrialTraining

from . import _compat
from .discovery import discover_dropout, discover_parameters, unwrap
from .ops import TorchOps
from .sharding import (
    ShardedModelState,
    ShardedTorchOps,
    fsdp2_params,
    has_dtensors,
    unsupported_dtensor,
)
from .state import TorchModelState
from .world import default_world

__all__ = ["LearningRates", "build_run", "warn_double_decay", "GroupWatch",
           "refuse_nothing_to_train", "refuse_sharded"]


class LearningRates:
    """The optimizer's current learning rate for each group of parameters
    (:meth:`regplug.Run.group_by_learning_rate`), read at every call."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._cache: dict[int, tuple[Sequence[ParamHandle], list[tuple[int, list[ParamHandle]]]]]
        self.refresh()

    def refresh(self) -> None:
        """Read the optimizer's parameter groups again (a group was added)."""
        self._group_of = {id(p): i for i, g in enumerate(self.optimizer.param_groups)
                          for p in g["params"]}
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
    refuse_sharded(model, optimizer, params)
    device = params[0].tensor.device if params else torch.device("cpu")
    run = Run(params=params, ops=ShardedTorchOps() if has_dtensors(params) else TorchOps(),
              learning_rate_groups=LearningRates(optimizer).groups,
              device=str(device), framework="torch",
              dropout_layers_provider=lambda: discover_dropout(model),
              model_state_provider=(ShardedModelState if has_dtensors(params)
                                    else TorchModelState)(model),
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


class GroupWatch:
    """Parameter groups added to the optimizer after the run was built
    (``optimizer.add_param_group``, the way progressive unfreezing is written): their
    parameters join the run (:meth:`regplug.Run.add_params`) and every selection, so that
    penalties, decay and constraints act on them from their first step.

    :meth:`check` is one integer comparison per call while the group count is unchanged.
    """

    __slots__ = ("model", "optimizer", "run", "count")

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, run: Run) -> None:
        self.model, self.optimizer, self.run = model, optimizer, run
        self.count = len(optimizer.param_groups)

    def check(self) -> None:
        if len(self.optimizer.param_groups) != self.count:
            self._reread()

    def _reread(self) -> None:
        self.count = len(self.optimizer.param_groups)
        handles = discover_parameters(self.model, self.optimizer)
        refuse_sharded(self.model, self.optimizer, handles,
                       dtensors=isinstance(self.run.ops, ShardedTorchOps))
        self.run.add_params(handles)
        rates = getattr(self.run.learning_rate_groups, "__self__", None)
        if isinstance(rates, LearningRates):
            rates.refresh()


def refuse_nothing_to_train(run: Run, plugins: Sequence[object], *, adapter: str) -> None:
    """Refuse, in one line, plugins on a run whose optimizer updates no trainable parameter
    (all frozen, or none at all): they would act on nothing, silently (``regplug compare``
    refuses such a model too). An empty plugin list is let through, and so is a sanity check
    that trains (:class:`~regplug.plugins.OverfitBatch`): it diagnoses the frozen model
    itself, with more detail.

    >>> model = torch.nn.Linear(2, 1).requires_grad_(False)
    >>> run = build_run(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> refuse_nothing_to_train(run, ["L2"], adapter="attach")
    Traceback (most recent call last):
    regplug.errors.UsageError: attach: the model has nothing to train (the optimizer's 2 \
parameters all have requires_grad=False), so the plugins have nothing to regularize; \
unfreeze at least one parameter before attaching
    """
    if not plugins or any(p.tensor.requires_grad for p in run.params):
        return
    if any("trial_training" in getattr(p, "requires", ()) for p in plugins):
        return
    count = len(run.params)
    detail = ("the optimizer updates no parameter of the model" if not count else
              f"the optimizer's {count} parameter{'' if count == 1 else 's'} all have "
              "requires_grad=False")
    raise UsageError(f"{adapter}: the model has nothing to train ({detail}), so the plugins "
                     "have nothing to regularize; unfreeze at least one parameter before "
                     "attaching")


def _is_dtensor(tensor: torch.Tensor) -> bool:
    """A ``torch.distributed.tensor.DTensor`` (FSDP2's ``fully_shard``, tensor parallelism).
    Only where that module was imported: no DTensor exists otherwise."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    return isinstance(dtensor, type) and isinstance(tensor, dtensor)


def _sharding(model: nn.Module, optimizer: object, tensor: torch.Tensor,
              managed: set[int]) -> str | None:
    if _is_dtensor(tensor):  # FSDP2's are supported (adapters/torch/sharding.py)
        return unsupported_dtensor(tensor, managed)
    if _compat.is_flat_param(tensor):
        return "a flat shard of FSDP (FullyShardedDataParallel's FlatParameter)"
    if hasattr(tensor, "ds_id"):
        return "partitioned by DeepSpeed ZeRO stage 3"
    return None


def refuse_sharded(model: nn.Module, optimizer: object, params: Sequence[ParamHandle], *,
                   dtensors: bool = True) -> None:
    """Refuse, in one line and before any step, sharded parameters regplug cannot act on.
    FSDP2's (``fully_shard`` on a 1-D mesh: :mod:`.sharding`) are supported, unless
    ``dtensors`` is false (a run built without them). Refused: other DTensors (tensor
    parallelism, HSDP's 2-D meshes), FSDP1's flat parameters (also a model wrapped in
    ``FullyShardedDataParallel``) and DeepSpeed ZeRO-3's partitioned parameters (their
    ``ds_id``), on which penalty values and row norms would see one shard."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    fsdp1 = getattr(fsdp, "FullyShardedDataParallel", None)
    found: tuple[str, str] | None = None
    if isinstance(fsdp1, type) and any(isinstance(m, fsdp1) for m in unwrap(model).modules()):
        found = ("the model", "wrapped in FSDP (FullyShardedDataParallel), whose flat "
                 "parameters are shards")
    managed = fsdp2_params(unwrap(model)) if dtensors else set()
    for handle in params:
        if found is not None:
            break
        how = _sharding(model, optimizer, handle.tensor, managed)
        if how is not None:
            found = (f"parameter {handle.name!r}", f"is {how}")
    if found is None:
        return
    raise UsageError(
        f"regplug: {found[0]} {found[1]}; of sharded parameters regplug supports FSDP2's "
        "fully_shard on a 1-D mesh only (others' penalty values and row norms would see one "
        "shard): train with fully_shard, DDP, or without sharding (docs/loops/distributed.md)")

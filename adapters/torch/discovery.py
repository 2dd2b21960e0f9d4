"""What a PyTorch model holds, as plugins see it: parameter handles with their kinds, and the
dropout modules whose rate plugins may change.

The rules (which names are biases, which dropout layers may be rescheduled, the kind of a tied
parameter) are the core's (:mod:`regplug.conventions`); this module maps them onto torch's
module types.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from regplug.conventions import (
    DROPOUT_LAYERS,
    SCHEDULABLE_DROPOUT,
    is_bias_name,
    is_lora_name,
    param_name,
    shared_kind,
)
from regplug.run import DropoutHandle, ParamHandle

from ._compat import compiled_original

__all__ = ["unwrap", "param_kind", "unit_axis", "discover_parameters", "discover_dropout",
           "BATCH_NORM_TYPES", "NORM_TYPES", "EMBEDDING_TYPES", "SCHEDULABLE_DROPOUT_TYPES",
           "DROPOUT_TYPES", "is_batch_norm", "STOCHASTIC_DEPTH_ATTRS"]


def _public(names: Iterable[str]) -> tuple[type[nn.Module], ...]:
    # Some classes are recent (nn.RMSNorm): take those this torch has.
    return tuple(t for t in (getattr(nn, n, None) for n in sorted(names))
                 if isinstance(t, type) and issubclass(t, nn.Module))


#: Batch normalization (also synchronised and lazy): its buffers are the running statistics.
BATCH_NORM_TYPES = _public({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
                            "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d"})
#: Every normalization layer: all their parameters are of kind ``normalization``.
NORM_TYPES = BATCH_NORM_TYPES + _public({
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LazyInstanceNorm1d",
    "LazyInstanceNorm2d", "LazyInstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm",
    "LocalResponseNorm", "CrossMapLRN2d"})
EMBEDDING_TYPES = _public({"Embedding", "EmbeddingBag"})
_TRANSPOSED_CONV = _public({"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"})
#: Dropout modules handed to plugins (:data:`regplug.conventions.SCHEDULABLE_DROPOUT`).
SCHEDULABLE_DROPOUT_TYPES = _public(SCHEDULABLE_DROPOUT)
#: Every dropout module, alpha dropout included (:data:`regplug.conventions.DROPOUT_LAYERS`).
DROPOUT_TYPES = _public(DROPOUT_LAYERS)
#: Stochastic-depth modules handed out as dropout layers: the class name (of the module's
#: class or a base) → the attribute its forward pass reads the drop probability from.
#: torchvision's ``ops.StochasticDepth`` (``p``), timm's ``DropPath`` (``drop_prob``) and the
#: copies of timm's class in model code; matched by name, so neither package is imported.
STOCHASTIC_DEPTH_ATTRS: dict[str, str] = {"StochasticDepth": "p", "DropPath": "drop_prob"}


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, BATCH_NORM_TYPES)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel/``torch.compile`` wrappers (for naming)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        original = compiled_original(model)
        if original is None or original is model:  # never loop on a self-reference
            return model
        model = original


def param_kind(module: nn.Module, attr: str) -> str:
    """Kind of parameter ``attr`` of ``module``, from the module's type first."""
    if isinstance(module, NORM_TYPES):
        return "normalization"
    if isinstance(module, EMBEDDING_TYPES):
        return "embedding"
    if is_bias_name(attr):
        return "bias"  # also nn.MultiheadAttention's in_proj_bias, RNNs' bias_ih_l0
    return "weight"


def unit_axis(module: nn.Module, param: torch.Tensor) -> int | None:
    """The axis indexing output units: 0 (torch's ``(out, in, …)`` layout, one row per token
    for embeddings), 1 for transposed convolutions (``(in, out, …)``); ``None`` for vectors."""
    if param.dim() <= 1:
        return None
    return 1 if isinstance(module, _TRANSPOSED_CONV) else 0


def discover_parameters(model: nn.Module,
                        parameters: torch.optim.Optimizer | Iterable[torch.Tensor]
                        ) -> list[ParamHandle]:
    """Handles for the parameters an optimizer updates, named and typed from the model.

    :param parameters: the optimizer (its parameter groups), or the parameters themselves
        (the union of several optimizers').

    Names are those of ``named_parameters()`` (:func:`regplug.conventions.param_name`:
    module attributes from the model down, then the parameter's, joined by dots), inside
    any DDP/``torch.compile`` wrapper. A tied (shared) parameter appears once, under its
    first name; its kind follows
    :func:`regplug.conventions.shared_kind` over every module holding it, so it does not
    depend on the order the modules were registered in; a LoRA adapter matrix
    (:func:`regplug.conventions.is_lora_name`) is of kind ``lora``. Parameters not in
    ``parameters`` (frozen out of the optimizer, or in another optimizer) are not handed to
    plugins.
    """
    if isinstance(parameters, torch.optim.Optimizer):
        parameters = [p for group in parameters.param_groups for p in group["params"]]
    wanted = {id(p) for p in parameters}
    found: dict[int, tuple[str, torch.Tensor, list[tuple[nn.Module, str]]]] = {}
    for module_name, module in unwrap(model).named_modules(remove_duplicate=False):
        for attr, param in module.named_parameters(recurse=False):
            if id(param) not in wanted:
                continue
            entry = found.get(id(param))
            if entry is None:
                path = module_name.split(".") if module_name else []
                found[id(param)] = (param_name(path, attr), param, [(module, attr)])
            else:
                entry[2].append((module, attr))
    handles = []
    for name, param, owners in found.values():
        kinds = [param_kind(m, a) for m, a in owners]
        kind = shared_kind(kinds)
        module = owners[kinds.index(kind)][0]
        if is_lora_name(name):
            kind = "lora"  # by name, whatever the layer (regplug.conventions.is_lora_name)
        handles.append(ParamHandle(name, kind, param, type(module).__name__,
                                   unit_axis(module, param), tuple(param.shape)))
    return handles


def discover_dropout(model: nn.Module) -> list[DropoutHandle]:
    """Handles of the dropout modules a plugin may reschedule, and of the stochastic-depth
    modules (:data:`STOCHASTIC_DEPTH_ATTRS`; ``layer_type`` ``"StochasticDepth"`` or
    ``"DropPath"``). Their rate is read at every forward pass, so a new rate applies from the
    next batch (with ``torch.compile``, a change triggers a recompile)."""
    handles = []
    for name, module in unwrap(model).named_modules():
        if isinstance(module, SCHEDULABLE_DROPOUT_TYPES):
            # A dropout module's p is a float; torch types module attributes Tensor | Module.
            def apply(rate: float, module: Any = module) -> None:
                module.p = rate

            handles.append(DropoutHandle(name, type(module).__name__, cast(float, module.p),
                                         apply))
        elif (depth := _stochastic_depth(module)) is not None:
            family, attr = depth

            def apply_depth(rate: float, module: Any = module, attr: str = attr) -> None:
                setattr(module, attr, rate)

            handles.append(DropoutHandle(name, family, float(getattr(module, attr)),
                                         apply_depth))
    return handles


def _stochastic_depth(module: nn.Module) -> tuple[str, str] | None:
    """``(family, attribute)`` for a stochastic-depth module (:data:`STOCHASTIC_DEPTH_ATTRS`)
    whose drop probability is a plain number, else ``None``. The family (``"StochasticDepth"``
    or ``"DropPath"``) is the handle's ``layer_type``, also for subclasses."""
    for cls in type(module).__mro__:
        attr = STOCHASTIC_DEPTH_ATTRS.get(cls.__name__)
        if attr is not None:
            value = getattr(module, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return cls.__name__, attr
            return None
    return None

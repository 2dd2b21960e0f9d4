"""Every use of PyTorch API that is not public, in one place.

Each entry says what it relies on; ``tests/torch/test_compat.py`` pins each one, so a torch
release that changes it fails there, by name, rather than somewhere inside a training run.
Everything else in :mod:`regplug.adapters.torch` uses public API only.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["set_grad_enabled", "compiled_original", "foreach_add_", "foreach_mul",
           "foreach_mul_", "foreach_sign", "foreach_clamp_max", "foreach_clamp_min_",
           "foreach_sub_", "foreach_copy_", "foreach_sub", "foreach_lerp_",
           "has_forward_hooks", "global_forward_hooks", "default_call_impl",
           "is_flat_param"]

# The thread-local autograd switch that `torch.no_grad()` and `torch.set_grad_enabled` flip,
# without building their context-manager objects (two per call, a measurable share of a small
# model's optimizer hook; see benchmarks/).
set_grad_enabled = torch._C._set_grad_enabled

# The fused multi-tensor kernels torch.optim uses for its own `foreach=True` updates: one
# launch for a whole list of tensors. Underscored in torch, but stable since 1.10 and used by
# every torch.optim optimizer.
foreach_add_ = torch._foreach_add_
foreach_mul = torch._foreach_mul
foreach_mul_ = torch._foreach_mul_
foreach_sign = torch._foreach_sign
foreach_clamp_max = torch._foreach_clamp_max
foreach_clamp_min_ = torch._foreach_clamp_min_
foreach_sub_ = torch._foreach_sub_
foreach_copy_ = torch._foreach_copy_
foreach_sub = torch._foreach_sub
foreach_lerp_ = torch._foreach_lerp_


def compiled_original(module: nn.Module) -> nn.Module | None:
    """The module that ``torch.compile(module)`` wrapped, or ``None`` for any other module.

    ``torch.compile`` returns an ``OptimizedModule`` whose ``_orig_mod`` attribute is the
    user's module (there is no public accessor); parameter names are those of the original.
    """
    original: Any = getattr(module, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else None


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward or forward-pre hooks of its own (``register_forward_hook``,
    ``register_forward_pre_hook``, with or without ``with_kwargs``/``always_call``)."""
    # nn.Module._forward_hooks / _forward_pre_hooks: the OrderedDicts (hook id -> hook) that
    # the register_* methods fill and their handles' remove() empties (torch 1.x and 2.x; the
    # with_kwargs and always_call flags of torch >= 2.0 are kept in separate dicts keyed by
    # the same ids, so every hook is in these two). No public getter.
    return bool(getattr(module, "_forward_hooks", None)
                or getattr(module, "_forward_pre_hooks", None))


def global_forward_hooks() -> bool:
    """Whether forward or forward-pre hooks for every module are registered
    (``torch.nn.modules.module.register_module_forward_hook`` / ``_pre_hook``)."""
    # torch.nn.modules.module._global_forward_hooks / _global_forward_pre_hooks: the
    # module-level OrderedDicts those public functions fill (torch >= 1.8); no public getter.
    import torch.nn.modules.module as module_module

    return bool(getattr(module_module, "_global_forward_hooks", None)
                or getattr(module_module, "_global_forward_pre_hooks", None))


def default_call_impl(module: nn.Module) -> bool:
    """Whether ``module``'s class calls it as ``nn.Module`` does: hooks, then ``forward``."""
    # nn.Module.__call__ is Module._wrapped_call_impl, which calls self._call_impl (torch >=
    # 2.0; before, __call__ was _call_impl itself): a subclass overriding _call_impl replaces
    # what calling the module does, even with __call__ and forward untouched.
    return type(module)._call_impl is nn.Module._call_impl


def is_flat_param(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is FSDP1's ``FlatParameter`` (a flat shard of many parameters)."""
    # torch.distributed.fsdp._flat_param.FlatParameter sets the class attribute
    # _is_flat_param = True (torch >= 2.0), the marker FSDP itself tests; the class is private.
    return getattr(tensor, "_is_flat_param", False) is True

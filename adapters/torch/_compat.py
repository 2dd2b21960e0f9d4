"""Every use of PyTorch API that is not public, in one place.

Each entry says what it relies on; ``tests/torch/test_compat.py`` pins each one, so a torch
release that changes it fails there, by name, rather than somewhere inside a training run.
Everything else in :mod:`regplug.adapters.torch` uses public API only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["set_grad_enabled", "compiled_original", "foreach_add_", "foreach_mul",
           "foreach_mul_", "foreach_sign", "foreach_clamp_max", "foreach_clamp_min_",
           "foreach_sub_"]

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


def compiled_original(module: nn.Module) -> nn.Module | None:
    """The module that ``torch.compile(module)`` wrapped, or ``None`` for any other module.

    ``torch.compile`` returns an ``OptimizedModule`` whose ``_orig_mod`` attribute is the
    user's module (there is no public accessor); parameter names are those of the original.
    """
    original: Any = getattr(module, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else None

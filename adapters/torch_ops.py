"""PyTorch side of the ops protocol: parameter discovery and fused in-place operations.

Everything here stays on the parameters' device and never reads a value back to the host
on the per-step path (no ``.item()``, no Python branching on tensor values).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from regplug.run import DropoutHandle, ParamHandle, check_state_arrays

_NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                getattr(nn, "RMSNorm", None), nn.LocalResponseNorm, nn.CrossMapLRN2d)
    if t is not None)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_TRANSPOSED_CONV = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.FeatureAlphaDropout)
_MAX_NORM_EPS = 1e-7


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel/``torch.compile`` wrappers (for naming)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def param_kind(module: nn.Module, attr: str) -> str:
    """Kind of parameter ``attr`` of ``module``, from the module's type first."""
    if isinstance(module, _NORM_TYPES):
        return "normalization"
    if isinstance(module, _EMBEDDING_TYPES):
        return "embedding"
    if attr == "bias" or attr.endswith("_bias") or attr.startswith("bias_"):
        return "bias"  # also nn.MultiheadAttention's in_proj_bias, RNNs' bias_ih_l0
    return "weight"


def discover_parameters(model: nn.Module, optimizer: torch.optim.Optimizer
                        ) -> list[ParamHandle]:
    """Handles for the parameters the optimizer updates, named and typed from the model.

    Tied (shared) parameters appear once, under their first name. Parameters the optimizer
    does not update (frozen, or in another optimizer) are not handed to plugins.
    """
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    seen: set[int] = set()
    handles = []
    for module_name, module in unwrap(model).named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if id(param) in seen or id(param) not in optimized:
                continue
            seen.add(id(param))
            name = f"{module_name}.{attr}" if module_name else attr
            unit_axis = None
            if param.dim() > 1:
                unit_axis = 1 if isinstance(module, _TRANSPOSED_CONV) else 0
            handles.append(ParamHandle(name, param_kind(module, attr), param,
                                       type(module).__name__, unit_axis, tuple(param.shape)))
    return handles


def discover_dropout(model: nn.Module) -> list[DropoutHandle]:
    """Handles of the dropout modules. Their ``p`` is read at every forward pass, so a new
    rate applies from the next batch (with ``torch.compile``, a change triggers a recompile)."""
    handles = []
    for name, module in unwrap(model).named_modules():
        if isinstance(module, _DROPOUT_TYPES):
            def apply(rate: float, module: nn.Module = module) -> None:
                module.p = rate

            handles.append(DropoutHandle(name, type(module).__name__, module.p, apply))
    return handles


_F = TypeVar("_F", bound=Callable[..., Any])


def _without_grad(method: _F) -> _F:
    """Run ``method`` with autograd off, as ``@torch.no_grad()`` does, for less per call.

    The decorator form of ``torch.no_grad()`` builds two context-manager objects at every
    call, a noticeable share of a small model's step when several plugins act. This flips
    the same thread-local switch directly, and leaves it alone when autograd is already off.
    """
    @functools.wraps(method)
    def without_grad(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return method(*args, **kwargs)
        torch._C._set_grad_enabled(False)
        try:
            return method(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(True)

    return without_grad  # type: ignore[return-value]


# The in-place ops below run with autograd off, so they change the parameters themselves,
# as torch.optim does, rather than detached aliases: the same storage and version counter,
# without one extra tensor object per parameter and step.
def _grad_pairs(params: Sequence[ParamHandle]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    thetas, grads = [], []
    for p in params:
        grad = p.tensor.grad
        if grad is None:
            continue  # like torch's own weight_decay: no gradient this step, no update
        if grad.is_sparse:
            raise TypeError(f"regplug: parameter {p.name!r} has a sparse gradient; closed-form "
                            "penalties need dense gradients (exclude it from the selection, "
                            "or use fused=False)")
        thetas.append(p.tensor)
        grads.append(grad)
    return thetas, grads


def _foreach_add_scaled_(targets: list[torch.Tensor], terms: list[torch.Tensor],
                         alpha: float | torch.Tensor) -> None:
    """``targets += alpha · terms``. A tensor ``alpha`` (a strength a plugin computed on the
    device) stays on the device: ``_foreach_add_``'s ``alpha=`` would read it to the host."""
    if isinstance(alpha, torch.Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(terms, alpha))
    else:
        torch._foreach_add_(targets, terms, alpha=alpha)


def _tensors(params: Sequence[ParamHandle]) -> list[torch.Tensor]:
    return [p.tensor for p in params]


class TorchOps:
    """:class:`regplug.Ops` with ``torch._foreach_*`` kernels."""

    framework = "torch"

    # Values are differentiable (used when a penalty goes through autograd) and computed in
    # float32 with autocast off, whatever precision the forward pass runs in.
    def sum_squares(self, params: Sequence[ParamHandle]) -> torch.Tensor:
        return self._sum(params, lambda t: t.float().square().sum())

    def sum_abs(self, params: Sequence[ParamHandle]) -> torch.Tensor:
        return self._sum(params, lambda t: t.float().abs().sum())

    @staticmethod
    def _sum(params: Sequence[ParamHandle], term) -> torch.Tensor:  # type: ignore[no-untyped-def]
        if not params:
            return torch.zeros((), dtype=torch.float32)
        device = params[0].tensor.device
        with torch.autocast(device_type=device.type, enabled=False):
            return torch.stack([term(p.tensor).to(device) for p in params]).sum()

    @_without_grad
    def add_to_grad_(self, params: Sequence[ParamHandle], alpha: float | torch.Tensor) -> None:
        thetas, grads = _grad_pairs(params)
        if grads:
            _foreach_add_scaled_(grads, thetas, alpha)

    @_without_grad
    def add_sign_to_grad_(self, params: Sequence[ParamHandle],
                          alpha: float | torch.Tensor) -> None:
        thetas, grads = _grad_pairs(params)
        if grads:
            _foreach_add_scaled_(grads, torch._foreach_sign(thetas), alpha)

    @_without_grad
    def scale_(self, params: Sequence[ParamHandle], factor: float) -> None:
        if params:
            torch._foreach_mul_(_tensors(params), factor)

    @_without_grad
    def soft_threshold_(self, params: Sequence[ParamHandle], threshold: float) -> None:
        # θ − clamp(θ, −t, t) is exactly sign(θ)·max(|θ|−t, 0), and exactly 0 (not a tiny
        # residue) wherever |θ| <= t, because x − x == 0 in floating point.
        if not params:
            return
        thetas = _tensors(params)
        inside = torch._foreach_clamp_max(thetas, threshold)
        torch._foreach_clamp_min_(inside, -threshold)
        torch._foreach_sub_(thetas, inside)

    @_without_grad
    def clip_unit_norms_(self, params: Sequence[ParamHandle], max_norm: float) -> None:
        fused = not isinstance(max_norm, torch.Tensor)
        for p in params:
            t = p.tensor
            is_float32 = t.dtype == torch.float32
            if fused and is_float32 and p.unit_axis is not None:
                # One kernel for norm, factor and product: renorm_ scales each unit whose
                # norm exceeds max_norm by max_norm / (norm + 1e-7), as the general path
                # below does, with the same result bit for bit (tests compare the two).
                t.renorm_(2, p.unit_axis, max_norm)
                continue
            # Norms in float32 whatever the parameter's precision; for a float32 parameter
            # both conversions would return their input, so their dispatch is skipped.
            t32 = t if is_float32 else t.float()
            if p.unit_axis is None:
                norms = torch.linalg.vector_norm(t32)
            else:
                dims = [d for d in range(t.dim()) if d != p.unit_axis]
                norms = torch.linalg.vector_norm(t32, dim=dims, keepdim=True)
            scale = torch.where(norms > max_norm, torch.div(max_norm, norms + _MAX_NORM_EPS), 1.0)
            t.mul_(scale if is_float32 else scale.to(t.dtype))

    def to_float(self, value: object) -> float:
        if isinstance(value, torch.Tensor):
            value = value.detach()
        return float(value)  # type: ignore[arg-type]

    @torch.no_grad()
    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        zeros = sum(int((p.tensor == 0).sum()) for p in params)
        return zeros, sum(p.tensor.numel() for p in params)


class TorchModelState:
    """:class:`regplug.run.ModelState` over a module's ``state_dict`` tensors.

    Parameters and persistent buffers (batch-norm running statistics and counters), named
    as in the unwrapped module's ``state_dict``; a tensor shared under two names is copied
    once. Snapshots are ``{name: tensor}`` dicts; copying into an earlier snapshot reuses
    its storage, so keeping "the best weights so far" allocates once.
    """

    def __init__(self, model: nn.Module) -> None:
        seen: set[int] = set()
        self.tensors: dict[str, torch.Tensor] = {}
        for name, tensor in unwrap(model).state_dict(keep_vars=True).items():
            if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                seen.add(id(tensor))
                self.tensors[name] = tensor

    @torch.no_grad()
    def snapshot(self, into: dict[str, torch.Tensor] | None = None, *,
                 host: bool = False) -> dict[str, torch.Tensor]:
        if into is None:
            into = {}
            for name, t in self.tensors.items():
                if host and t.device.type != "cpu":
                    into[name] = torch.empty(t.shape, dtype=t.dtype, device="cpu",
                                             pin_memory=t.device.type == "cuda")
                else:
                    into[name] = torch.empty_like(t, memory_format=torch.preserve_format)
        for name, t in self.tensors.items():
            into[name].copy_(t.detach())
        return into

    @torch.no_grad()
    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        for name, t in self.tensors.items():
            t.copy_(snapshot[name])

    def to_numpy(self, snapshot: dict[str, torch.Tensor]) -> dict[str, Any]:
        # bfloat16 has no NumPy type: saved as float32 (exact), cast back on load.
        return {name: (t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy()
                for name, t in snapshot.items()}

    def from_numpy(self, arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
        check_state_arrays("torch", arrays, {k: tuple(t.shape) for k, t in self.tensors.items()})
        return {name: torch.as_tensor(arrays[name]).to(device=t.device, dtype=t.dtype).clone()
                for name, t in self.tensors.items()}

"""PyTorch side of the ops protocol: fused in-place operations on parameters and gradients.

Everything here stays on the parameters' device and never reads a value back to the host
on the per-step path (no ``.item()``, no Python branching on tensor values).

Docs: docs/loops/torch.md
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from regplug.conventions import MAX_NORM_EPS
from regplug.ops import check_copies
from regplug.run import ParamHandle

from . import _compat

_F = TypeVar("_F", bound=Callable[..., Any])


def without_grad(method: _F) -> _F:
    """Run ``method`` with autograd off, as ``@torch.no_grad()`` does, for less per call.

    The decorator form of ``torch.no_grad()`` builds two context-manager objects at every
    call, a noticeable share of a small model's step when several plugins act. This flips
    the same thread-local switch directly, and leaves it alone when autograd is already off.
    """
    @functools.wraps(method)
    def without_grad(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return method(*args, **kwargs)
        _compat.set_grad_enabled(False)
        try:
            return method(*args, **kwargs)
        finally:
            _compat.set_grad_enabled(True)

    return without_grad  # type: ignore[return-value]


def _call_without_grad(method: Callable[..., Any], *args: Any) -> Any:
    """``method(*args)`` with autograd off: the slow path of the per-step ops below, which
    run with autograd already off when the adapters call them (inside the optimizer's hooks)
    and so check for it inline rather than through :func:`without_grad`'s extra call."""
    _compat.set_grad_enabled(False)
    try:
        return method(*args)
    finally:
        _compat.set_grad_enabled(True)


_grad_enabled = torch.is_grad_enabled
_Parameter = torch.nn.Parameter


# The in-place ops below run with autograd off, so they change the parameters themselves,
# as torch.optim does, rather than detached aliases: the same storage and version counter,
# without one extra tensor object per parameter and step. The filters run at every step: their
# conditions are written inline (no call per tensor).
def _grad_pairs(params: Sequence[ParamHandle]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The parameters with a gradient in this step that are not frozen, and their gradients
    (like torch's own weight_decay: no gradient this step, no update)."""
    thetas: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for p in params:
        t = p.tensor
        grad = t.grad
        if grad is None or (not t.requires_grad and isinstance(t, _Parameter)):
            continue
        if grad.is_sparse:
            raise TypeError(f"regplug: parameter {p.name!r} has a sparse gradient; closed-form "
                            "penalties need dense gradients (exclude it from the selection, "
                            "or use fused=False)")
        thetas.append(t)
        grads.append(grad)
    return thetas, grads


def _foreach_add_scaled_(targets: list[torch.Tensor],
                         terms: list[torch.Tensor] | tuple[torch.Tensor, ...],
                         alpha: float | torch.Tensor) -> None:
    """``targets += alpha · terms``. A tensor ``alpha`` (a strength a plugin computed on the
    device) stays on the device: ``_foreach_add_``'s ``alpha=`` would read it to the host."""
    if isinstance(alpha, torch.Tensor):
        _compat.foreach_add_(targets, _compat.foreach_mul(terms, alpha))
    else:
        _compat.foreach_add_(targets, terms, alpha=alpha)


def _frozen(t: torch.Tensor) -> bool:
    """A parameter switched off with ``requires_grad_(False)`` (a plain tensor handed to the
    ops, e.g. a copy, is never frozen)."""
    return not t.requires_grad and isinstance(t, _Parameter)


def _trainable(params: Sequence[ParamHandle]) -> list[torch.Tensor]:
    """The tensors of ``params`` that are not frozen."""
    return [t for p in params
            if (t := p.tensor).requires_grad or not isinstance(t, _Parameter)]


class TorchOps:
    """:class:`regplug.Ops` with ``torch._foreach_*`` kernels.

    torch's own semantics for what changes a parameter: the in-place operations never touch
    a frozen parameter (``requires_grad=False``, even when it is in the optimizer), and while
    :attr:`in_update` is set (the adapter sets it from the gradients being final to the end
    of ``on_step``) also leave out every parameter without a gradient in this step, as
    ``torch.optim`` does (``AdamW`` neither decays nor updates it). Penalty values leave
    frozen parameters out too.
    """

    framework = "torch"

    def __init__(self) -> None:
        #: Inside an optimizer update: parameters without a gradient are left alone.
        self.in_update = False

    def _targets(self, params: Sequence[ParamHandle]) -> list[torch.Tensor]:
        """The tensors of ``params`` an in-place op changes now: not frozen, and inside an
        update only those the optimizer updates in this step (torch.optim's rule: one that got
        no gradient since the last ``zero_grad`` is left alone). Inline: it runs every step."""
        in_update = self.in_update
        targets = []
        for p in params:
            t = p.tensor
            if (t.requires_grad or not isinstance(t, _Parameter)) and (
                    not in_update or t.grad is not None):
                targets.append(t)
        return targets

    # Values are differentiable (used when a penalty goes through autograd) and computed in
    # float32 with autocast off, whatever precision the forward pass runs in.
    def sum_squares(self, params: Sequence[ParamHandle]) -> torch.Tensor:
        return self._sum(params, lambda t: t.float().square().sum())

    def sum_abs(self, params: Sequence[ParamHandle]) -> torch.Tensor:
        return self._sum(params, lambda t: t.float().abs().sum())

    @staticmethod
    def _sum(params: Sequence[ParamHandle], term) -> torch.Tensor:  # type: ignore[no-untyped-def]
        tensors = _trainable(params)
        if not tensors:
            device = params[0].tensor.device if params else None
            return torch.zeros((), dtype=torch.float32, device=device)
        device = tensors[0].device
        with torch.autocast(device_type=device.type, enabled=False):
            return torch.stack([term(t).to(device) for t in tensors]).sum()

    # The five ops below run at every step; they check for autograd inline (see
    # _call_without_grad) and filter their tensors in one loop each.
    def add_to_grad_(self, params: Sequence[ParamHandle], alpha: float | torch.Tensor) -> None:
        if _grad_enabled():
            return _call_without_grad(self.add_to_grad_, params, alpha)  # type: ignore[no-any-return]
        thetas, grads = _grad_pairs(params)
        if grads:
            _foreach_add_scaled_(grads, thetas, alpha)
        return None

    def add_sign_to_grad_(self, params: Sequence[ParamHandle],
                          alpha: float | torch.Tensor) -> None:
        if _grad_enabled():
            return _call_without_grad(self.add_sign_to_grad_, params, alpha)  # type: ignore[no-any-return]
        thetas, grads = _grad_pairs(params)
        if grads:
            _foreach_add_scaled_(grads, _compat.foreach_sign(thetas), alpha)
        return None

    def scale_(self, params: Sequence[ParamHandle], factor: float) -> None:
        if _grad_enabled():
            return _call_without_grad(self.scale_, params, factor)  # type: ignore[no-any-return]
        tensors = self._targets(params)
        if tensors:
            _compat.foreach_mul_(tensors, factor)
        return None

    def soft_threshold_(self, params: Sequence[ParamHandle], threshold: float) -> None:
        if _grad_enabled():
            return _call_without_grad(self.soft_threshold_, params, threshold)  # type: ignore[no-any-return]
        # θ − clamp(θ, −t, t) is exactly sign(θ)·max(|θ|−t, 0), and exactly 0 (not a tiny
        # residue) wherever |θ| <= t, because x − x == 0 in floating point.
        thetas = self._targets(params)
        if not thetas:
            return None
        inside = _compat.foreach_clamp_max(thetas, threshold)
        _compat.foreach_clamp_min_(inside, -threshold)
        _compat.foreach_sub_(thetas, inside)
        return None

    def clip_unit_norms_(self, params: Sequence[ParamHandle], max_norm: float) -> None:
        if _grad_enabled():
            return _call_without_grad(self.clip_unit_norms_, params, max_norm)  # type: ignore[no-any-return]
        fused = not isinstance(max_norm, torch.Tensor)
        in_update = self.in_update
        for p in params:
            t = p.tensor
            if (not t.requires_grad and isinstance(t, _Parameter)) or (
                    in_update and t.grad is None):
                continue  # left alone, as by torch.optim (see the class docstring)
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
            scale = torch.where(norms > max_norm, torch.div(max_norm, norms + MAX_NORM_EPS), 1.0)
            t.mul_(scale if is_float32 else scale.to(t.dtype))
        return None

    # -- copies ------------------------------------------------------------------------
    @without_grad
    def clone(self, params: Sequence[ParamHandle]) -> list[torch.Tensor]:
        """Plain tensors (no gradient, not parameters) on each parameter's device."""
        return [p.tensor.detach().clone() for p in params]

    @without_grad
    def copy_into_(self, dst: Sequence[torch.Tensor], params: Sequence[ParamHandle]) -> None:
        check_copies("copy_into_", dst, params)
        if dst:
            _compat.foreach_copy_(list(dst), [p.tensor for p in params])

    @without_grad
    def copy_from_(self, params: Sequence[ParamHandle], src: Sequence[torch.Tensor]) -> None:
        check_copies("copy_from_", src, params)
        pairs = [(p.tensor, s) for p, s in zip(params, src) if not _frozen(p.tensor)]
        if pairs:
            _compat.foreach_copy_([t for t, _ in pairs], [s for _, s in pairs])

    @without_grad
    def scale_update_(self, params: Sequence[ParamHandle], before: Sequence[torch.Tensor],
                      factors: Sequence[float]) -> None:
        # before + f·(θ − before) is lerp(θ, before, 1 − f): one kernel per distinct factor.
        check_copies("scale_update_", before, params)
        groups: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        in_update = self.in_update
        for p, b, f in zip(params, before, factors):
            t = p.tensor
            if (in_update and t.grad is None) or (
                    not t.requires_grad and isinstance(t, torch.nn.Parameter)):
                continue  # not updated in this step (torch.optim's rule): nothing to scale
            group = groups.get(f)
            if group is None:
                group = groups[f] = ([], [])
            group[0].append(t)
            group[1].append(b)
        for f, (thetas, befores) in groups.items():
            if isinstance(f, torch.Tensor):  # from a tensor learning rate: keep it a tensor
                # (as a Scalar torch would read it back to the host: a sync every step)
                w = 1.0 - f
                _compat.foreach_lerp_(thetas, befores, [
                    w.to(device=t.device, dtype=t.dtype, non_blocking=True) for t in thetas])
            else:
                _compat.foreach_lerp_(thetas, befores, 1.0 - f)

    # -- freezing ----------------------------------------------------------------------
    def set_trainable_(self, params: Sequence[ParamHandle], trainable: bool) -> bool:
        """``requires_grad_(trainable)``; a frozen parameter's gradient is dropped (set to
        ``None``), so autograd skips it and ``torch.optim`` leaves it and its state alone."""
        for p in params:
            p.tensor.requires_grad_(trainable)
            if not trainable:
                p.tensor.grad = None
        return True

    @without_grad
    def zero_grads_(self, params: Sequence[ParamHandle], where: float | torch.Tensor) -> None:
        for p in params:
            grad = p.tensor.grad
            if grad is not None:
                grad.copy_(torch.where(torch.as_tensor(where, device=grad.device) > 0.5,
                                       torch.zeros_like(grad), grad))

    @without_grad
    def hold(self, params: Sequence[ParamHandle]) -> list[torch.Tensor]:
        return [p.tensor.detach().clone() for p in params]

    @without_grad
    def put_back_(self, params: Sequence[ParamHandle], held: Sequence[torch.Tensor],
                  where: float | torch.Tensor) -> None:
        check_copies("put_back_", held, params)
        for p, value in zip(params, held):
            t = p.tensor
            t.copy_(torch.where(torch.as_tensor(where, device=t.device) > 0.5, value, t))

    @without_grad
    def moving_average_(self, averages: Sequence[ParamHandle], params: Sequence[ParamHandle],
                        momentum: float) -> None:
        # a + (1 − momentum)·(θ − a) in one kernel, as get_ema_multi_avg_fn; weight 1 (momentum
        # 0) gives θ exactly (lerp computes θ − (θ − a)·(1 − w) for w ≥ 0.5).
        if averages:
            _compat.foreach_lerp_([a.tensor for a in averages], [p.tensor for p in params],
                                  1 - momentum)

    @without_grad
    def load_copies_(self, copies: Sequence[ParamHandle], arrays: Sequence[Any]) -> None:
        for c, array in zip(copies, arrays, strict=True):
            c.tensor.copy_(torch.as_tensor(array).to(dtype=c.tensor.dtype))

    # -- distance to a reference point ------------------------------------------------
    def sum_squares_diff(self, params: Sequence[ParamHandle],
                         reference: Sequence[torch.Tensor]) -> torch.Tensor:
        check_copies("sum_squares_diff", reference, params)
        pairs = [(p.tensor, r) for p, r in zip(params, reference) if not _frozen(p.tensor)]
        if not pairs:
            device = params[0].tensor.device if params else None
            return torch.zeros((), dtype=torch.float32, device=device)
        device = pairs[0][0].device
        with torch.autocast(device_type=device.type, enabled=False):
            return torch.stack([(t.float() - r.float()).square().sum().to(device)
                                for t, r in pairs]).sum()

    @without_grad
    def add_diff_to_grad_(self, params: Sequence[ParamHandle],
                          reference: Sequence[torch.Tensor],
                          alpha: float | torch.Tensor) -> None:
        # grad += alpha·(θ − θ₀): one foreach subtraction, one foreach scaled add.
        check_copies("add_diff_to_grad_", reference, params)
        thetas, refs, grads = [], [], []
        for p, r in zip(params, reference):
            t, grad = p.tensor, p.tensor.grad
            if grad is None or _frozen(t):
                continue  # no gradient this step: no update (torch's own weight_decay rule)
            if grad.is_sparse:
                raise TypeError(f"regplug: parameter {p.name!r} has a sparse gradient; "
                                "closed-form penalties need dense gradients (exclude it from "
                                "the selection, or use fused=False)")
            thetas.append(t)
            refs.append(r)
            grads.append(grad)
        if grads:
            _foreach_add_scaled_(grads, _compat.foreach_sub(thetas, refs), alpha)

    def to_float(self, value: object) -> float:
        if isinstance(value, torch.Tensor):
            value = value.detach()
        return float(value)  # type: ignore[arg-type]

    @torch.no_grad()
    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        zeros = sum(int((p.tensor == 0).sum()) for p in params)
        return zeros, sum(p.tensor.numel() for p in params)

    @torch.no_grad()
    def to_numpy(self, params: Sequence[ParamHandle]) -> list[Any]:
        return [p.tensor.detach().float().cpu().numpy().copy() for p in params]

    @without_grad
    def grad_norms(self, params: Sequence[ParamHandle]) -> list[torch.Tensor]:
        out = []
        for p in params:
            grad = p.tensor.grad
            if grad is None:
                out.append(torch.zeros((), dtype=torch.float32, device=p.tensor.device))
            else:
                dense = grad.to_dense() if grad.is_sparse else grad
                out.append(torch.linalg.vector_norm(dense.float()))
        return out

    @without_grad
    def zero_grad_units(self, params: Sequence[ParamHandle]) -> list[torch.Tensor]:
        out = []
        for p in params:
            grad = p.tensor.grad
            device = p.tensor.device
            if grad is None:
                out.append(torch.ones((), dtype=torch.float32, device=device))
            elif (p.unit_axis is None or grad.dim() < 2 or grad.is_sparse
                  or hasattr(grad, "full_tensor")):  # a shard cannot tell a whole unit
                out.append(torch.full((), math.nan, dtype=torch.float32, device=device))
            else:
                rows = grad.movedim(p.unit_axis, 0).flatten(1)
                # a row's largest |g| is 0 exactly when all of it is (any() on a bool tensor
                # took 2.5 times as long on CPU)
                out.append(rows.abs().amax(dim=1).eq(0).mean(dtype=torch.float32))
        return out

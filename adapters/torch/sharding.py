"""FSDP2 (``torch.distributed.fsdp.fully_shard``): regplug's ops on DTensor parameters.

Element-wise operations act on each rank's local shard (parameter and gradient shards are
aligned); penalty values, counts and gradient norms add the ranks' partial sums with one
``all_reduce`` per call; max-norm row norms are reduced only where a shard splits a row.
Every reduction is a collective call, made on every rank equally often whatever its
gradients. Other shardings (tensor parallelism, FSDP1, DeepSpeed ZeRO-3) are refused by
:func:`regplug.adapters.torch.build.refuse_sharded`.

Docs: docs/loops/distributed.md
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from regplug.conventions import MAX_NORM_EPS
from regplug.run import ParamHandle

from . import _compat
from .ops import TorchOps, _foreach_add_scaled_, _frozen, _grad_pairs, without_grad
from .state import TorchModelState

__all__ = ["is_dtensor", "has_dtensors", "fsdp2_params", "unsupported_dtensor",
           "ShardedTorchOps", "ShardedModelState", "local"]

# A plain TorchOps for local shards: after the filtering below, every tensor it gets acts.
_PLAIN = TorchOps()


def is_dtensor(tensor: object) -> bool:
    """A ``torch.distributed.tensor.DTensor``; only where that module was imported (no
    DTensor exists otherwise)."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    return isinstance(dtensor, type) and isinstance(tensor, dtensor)


def has_dtensors(params: Sequence[ParamHandle]) -> bool:
    return any(is_dtensor(p.tensor) for p in params)


def fsdp2_params(model: nn.Module) -> set[int]:
    """The ids of the parameters that ``fully_shard`` manages in ``model``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    fsdp_module = getattr(fsdp, "FSDPModule", None)
    if not isinstance(fsdp_module, type):
        return set()
    return {id(p) for m in model.modules() if isinstance(m, fsdp_module)
            for p in m.parameters()}


def unsupported_dtensor(tensor: Any, managed: set[int]) -> str | None:
    """Why regplug cannot act on the DTensor ``tensor`` (``None``: it can): supported are
    parameters that ``fully_shard`` manages (ids in ``managed``), on a 1-D device mesh,
    sharded along one dimension (FSDP2's default ``Shard(0)`` or ``shard_placement_fn``'s
    ``Shard(d)``) or replicated."""
    if id(tensor) not in managed:
        return ("a DTensor not managed by FSDP2's fully_shard (tensor parallelism, or "
                "distribute_tensor by hand)")
    mesh = getattr(tensor, "device_mesh", None)
    placements = tuple(getattr(tensor, "placements", ()))
    if mesh is None or mesh.ndim != 1 or len(placements) != 1:
        return ("a DTensor on a device mesh of more than one dimension (HSDP, or FSDP2 with "
                "tensor parallelism)")
    if not (placements[0].is_shard() or placements[0].is_replicate()):
        return f"a DTensor with placement {placements[0]} (only Shard and Replicate)"
    return None


def local(tensor: Any) -> torch.Tensor:
    """The rank's local shard of a DTensor (differentiable when autograd is on); any other
    tensor itself. With autograd off, the shard shares the DTensor's storage."""
    return tensor.to_local() if is_dtensor(tensor) else tensor  # type: ignore[no-any-return]


def _group(tensor: Any, whole_dim: int | None = None) -> Any:
    """The process group over which ``tensor``'s partial sums add up, or ``None`` (a plain
    or replicated tensor, or one sharded along ``whole_dim``, whose units a shard holds
    whole). Supported DTensors have a 1-D mesh (:func:`unsupported_dtensor`)."""
    if not is_dtensor(tensor):
        return None
    placement = tensor.placements[0]
    if not placement.is_shard():
        return None
    if whole_dim is not None and placement.dim == whole_dim:
        return None
    return tensor.device_mesh.get_group(0)


def _all_reduce_by_group(parts: list[torch.Tensor], groups: list[Any]) -> list[torch.Tensor]:
    """Each of ``parts`` (1-D, no gradient) summed over its group's ranks: one all-reduce
    per distinct group, on every rank alike (the groups depend on placements only)."""
    import torch.distributed as dist

    out = list(parts)
    distinct: list[Any] = []
    for g in groups:
        if g is not None and all(g is not d for d in distinct):
            distinct.append(g)
    for g in distinct:
        index = [i for i, other in enumerate(groups) if other is g]
        flat = torch.cat([parts[i].reshape(-1) for i in index])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=g)
        for i, piece in zip(index, flat.split([parts[i].numel() for i in index])):
            out[i] = piece.view_as(parts[i])
    return out


def _reduced_sum(tensors: Sequence[Any], refs: Sequence[Any] | None,
                 term: Callable[..., torch.Tensor], device: torch.device | None) -> torch.Tensor:
    """``Σ term(t)`` (or ``Σ term(t, r)`` over ``refs``) over the full tensors, from each
    rank's shards: a float32 scalar, the same on every rank, differentiable with respect to
    this rank's shards."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=device)
    where = tensors[0].device
    with torch.autocast(device_type=where.type, enabled=False):
        terms = [(term(local(t)) if refs is None else term(local(t), local(r)))
                 .to(where).reshape(1)
                 for t, r in zip(tensors, refs if refs is not None else tensors, strict=True)]
    with torch.no_grad():
        reduced = _all_reduce_by_group([v.detach().clone() for v in terms],
                                       [_group(t) for t in tensors])
    exact = torch.cat(reduced).sum()
    if not any(v.requires_grad for v in terms):
        return exact
    # The value of the full sum; its gradient is this rank's shards' own (the others'
    # parts are constants here): FSDP2 accumulates it beside the reduce-scattered gradient.
    mine = torch.cat(terms).sum()
    return mine + (exact - mine.detach())


def _local_handles(params: Sequence[ParamHandle], tensors: Sequence[Any]
                   ) -> list[ParamHandle]:
    """Handles over the local shards of ``tensors`` (already filtered), for ``_PLAIN``.
    Detached aliases: FSDP2's shards pass for frozen parameters (``isinstance(shard,
    nn.Parameter)`` through its ``_is_param`` flag, without ``requires_grad``)."""
    by_id = {id(p.tensor): p for p in params}
    return [dataclasses.replace(by_id[id(t)], tensor=local(t).detach()) for t in tensors]


def _locals(tensors: Sequence[Any]) -> list[torch.Tensor]:
    return [local(t) for t in tensors]


class ShardedTorchOps(TorchOps):
    """:class:`~regplug.adapters.torch.TorchOps` for a model with FSDP2 parameters.

    The same rules for frozen parameters and parameters without a gradient, decided on the
    DTensors; the kernels run on local shards. Values (``sum_squares``, ``sum_abs``,
    ``sum_squares_diff``, ``count_zeros``, ``grad_norms``) are of the full parameters and
    are collective calls: every rank must make them (``reg.penalty()`` included).
    ``to_numpy`` gathers the full parameters (a collective call too).
    """

    # -- values --------------------------------------------------------------------------
    # sum_squares and sum_abs are TorchOps' own: they call self._sum, this class's.
    @staticmethod
    def _sum(params: Sequence[ParamHandle], term) -> torch.Tensor:  # type: ignore[no-untyped-def]
        tensors = [p.tensor for p in params if not _frozen(p.tensor)]
        device = params[0].tensor.device if params else None
        return _reduced_sum(tensors, None, term, device)

    def sum_squares_diff(self, params: Sequence[ParamHandle],
                         reference: Sequence[Any]) -> torch.Tensor:
        pairs = [(p.tensor, r) for p, r in zip(params, reference, strict=True)
                 if not _frozen(p.tensor)]
        device = params[0].tensor.device if params else None
        return _reduced_sum([t for t, _ in pairs], [r for _, r in pairs],
                            lambda t, r: (t.float() - r.float()).square().sum(), device)

    # -- gradients -----------------------------------------------------------------------
    @without_grad
    def add_to_grad_(self, params: Sequence[ParamHandle], alpha: float | torch.Tensor) -> None:
        thetas, grads = _grad_pairs(params)
        if grads:
            _foreach_add_scaled_(_locals(grads), _locals(thetas), alpha)

    @without_grad
    def add_sign_to_grad_(self, params: Sequence[ParamHandle],
                          alpha: float | torch.Tensor) -> None:
        thetas, grads = _grad_pairs(params)
        if grads:
            _foreach_add_scaled_(_locals(grads), _compat.foreach_sign(_locals(thetas)), alpha)

    @without_grad
    def add_diff_to_grad_(self, params: Sequence[ParamHandle], reference: Sequence[Any],
                          alpha: float | torch.Tensor) -> None:
        ref_of = {id(p.tensor): r for p, r in zip(params, reference, strict=True)}
        thetas, grads = _grad_pairs(params)
        if grads:
            diffs = _compat.foreach_sub(_locals(thetas), [local(ref_of[id(t)]) for t in thetas])
            _foreach_add_scaled_(_locals(grads), diffs, alpha)

    @without_grad
    def grad_norms(self, params: Sequence[ParamHandle]) -> list[torch.Tensor]:
        squares, groups = [], []
        for p in params:
            grad = p.tensor.grad  # a rank without this gradient adds 0 (and still reduces)
            value = (torch.zeros((), dtype=torch.float32, device=p.tensor.device)
                     if grad is None else local(grad).float().square().sum())
            squares.append(value.reshape(1))
            groups.append(_group(p.tensor))
        return [s.reshape(()).sqrt() for s in _all_reduce_by_group(squares, groups)]

    # -- parameters ----------------------------------------------------------------------
    @without_grad
    def scale_(self, params: Sequence[ParamHandle], factor: float) -> None:
        _PLAIN.scale_(_local_handles(params, self._targets(params)), factor)

    @without_grad
    def soft_threshold_(self, params: Sequence[ParamHandle], threshold: float) -> None:
        _PLAIN.soft_threshold_(_local_handles(params, self._targets(params)), threshold)

    @without_grad
    def clip_unit_norms_(self, params: Sequence[ParamHandle], max_norm: float) -> None:
        whole, split, squares, groups, act = [], [], [], [], []
        for p in params:
            t = p.tensor
            if _frozen(t):
                continue  # frozen on every rank alike
            skip = self.in_update and t.grad is None  # may differ between ranks
            group = _group(t, p.unit_axis)
            if group is None:
                if not skip:
                    whole.extend(_local_handles([p], [t]))
                continue
            # A shard holds parts of each unit: reduce the units' squared norms (also on a
            # rank that leaves this parameter alone, so the collectives stay in step).
            shard = local(t).float()
            if p.unit_axis is None:
                sq = shard.square().sum().reshape(1)
            else:
                dims = [d for d in range(t.dim()) if d != p.unit_axis]
                sq = shard.square().sum(dim=dims) if dims else shard.square()
            split.append(p)
            squares.append(sq)
            groups.append(group)
            act.append(not skip)
        _PLAIN.clip_unit_norms_(whole, max_norm)
        if not split:
            return
        for p, sq, go in zip(split, _all_reduce_by_group(squares, groups), act, strict=True):
            if not go:
                continue
            shard = local(p.tensor)
            norms = sq.sqrt()
            scale = torch.where(norms > max_norm, torch.div(max_norm, norms + MAX_NORM_EPS), 1.0)
            if p.unit_axis is not None:
                shape = [1] * shard.dim()
                shape[p.unit_axis] = -1
                scale = scale.reshape(shape)
            shard.mul_(scale.to(shard.dtype))

    # -- copies --------------------------------------------------------------------------
    @without_grad
    def copy_into_(self, dst: Sequence[torch.Tensor], params: Sequence[ParamHandle]) -> None:
        if dst:
            _compat.foreach_copy_(_locals(dst), _locals([p.tensor for p in params]))

    @without_grad
    def copy_from_(self, params: Sequence[ParamHandle], src: Sequence[torch.Tensor]) -> None:
        pairs = [(p.tensor, s) for p, s in zip(params, src, strict=True)
                 if not _frozen(p.tensor)]
        if pairs:
            _compat.foreach_copy_([local(t) for t, _ in pairs], [local(s) for _, s in pairs])

    @without_grad
    def scale_update_(self, params: Sequence[ParamHandle], before: Sequence[torch.Tensor],
                      factors: Sequence[float]) -> None:
        chosen = {id(t) for t in self._targets(params)}
        kept = [(_local_handles([p], [p.tensor])[0], local(b), f)
                for p, b, f in zip(params, before, factors, strict=True)
                if id(p.tensor) in chosen]
        _PLAIN.scale_update_([h for h, _, _ in kept], [b for _, b, _ in kept],
                             [f for _, _, f in kept])

    @without_grad
    def zero_grads_(self, params: Sequence[ParamHandle], where: float | torch.Tensor) -> None:
        for p in params:
            grad = p.tensor.grad
            if grad is not None:
                g = local(grad)
                g.copy_(torch.where(torch.as_tensor(where, device=g.device) > 0.5,
                                    torch.zeros_like(g), g))

    @without_grad
    def put_back_(self, params: Sequence[ParamHandle], held: Sequence[torch.Tensor],
                  where: float | torch.Tensor) -> None:
        for p, value in zip(params, held, strict=True):
            t, v = local(p.tensor), local(value)
            t.copy_(torch.where(torch.as_tensor(where, device=t.device) > 0.5, v, t))

    @without_grad
    def moving_average_(self, averages: Sequence[ParamHandle], params: Sequence[ParamHandle],
                        momentum: float) -> None:
        if averages:
            _compat.foreach_lerp_(_locals([a.tensor for a in averages]),
                                 _locals([p.tensor for p in params]), 1 - momentum)

    @without_grad
    def load_copies_(self, copies: Sequence[ParamHandle], arrays: Sequence[Any]) -> None:
        from torch.distributed.tensor import distribute_tensor

        for c, array in zip(copies, arrays, strict=True):
            full = torch.as_tensor(array).to(dtype=c.tensor.dtype, device=c.tensor.device)
            if is_dtensor(c.tensor):  # every rank holds the full array: cut, no message
                full = distribute_tensor(full, c.tensor.device_mesh, c.tensor.placements,
                                         src_data_rank=None)
            local(c.tensor).copy_(local(full))

    @torch.no_grad()
    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        counts = [(local(p.tensor) == 0).sum().to(torch.float64).reshape(1) for p in params]
        reduced = _all_reduce_by_group(counts, [_group(p.tensor) for p in params])
        zeros = int(sum(int(c.item()) for c in reduced))
        return zeros, sum(p.tensor.numel() for p in params)

    @torch.no_grad()
    def to_numpy(self, params: Sequence[ParamHandle]) -> list[Any]:
        out = []
        for p in params:
            t = _full(p.tensor) if is_dtensor(p.tensor) else p.tensor
            out.append(t.detach().float().cpu().numpy().copy())
        return out


class ShardedModelState(TorchModelState):
    """:class:`~regplug.adapters.torch.TorchModelState` of a model with FSDP2 parameters.

    Snapshots (early stopping's best weights) hold each rank's shards, on the parameters'
    device (``host`` is ignored for them: a shard is what the rank keeps anyway). The NumPy
    form, for checkpoints (``reg.state_dict()``), holds the full tensors: :meth:`to_numpy`
    gathers them (a collective call: every rank calls ``reg.state_dict()``), and
    :meth:`from_numpy` cuts each rank's shard from the full arrays every rank loaded.
    """

    @torch.no_grad()
    def snapshot(self, into: dict[str, torch.Tensor] | None = None, *,
                 host: bool = False) -> dict[str, torch.Tensor]:
        if into is None:
            plain = {k: t for k, t in self.tensors.items() if not is_dtensor(t)}
            into = {k: torch.empty_like(t) for k, t in self.tensors.items() if is_dtensor(t)}
            if plain:
                saved, self.tensors = self.tensors, plain
                try:
                    into.update(super().snapshot(host=host))
                finally:
                    self.tensors = saved
            into = {k: into[k] for k in self.tensors}
        for name, t in self.tensors.items():
            local(into[name]).copy_(local(t.detach()))
        return into

    @torch.no_grad()
    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        for name, t in self.tensors.items():
            local(t).copy_(local(snapshot[name]))

    def to_numpy(self, snapshot: dict[str, torch.Tensor]) -> dict[str, Any]:
        full = {k: (_full(v) if is_dtensor(v) else v) for k, v in snapshot.items()}
        return super().to_numpy(full)

    def from_numpy(self, arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
        from torch.distributed.tensor import distribute_tensor

        out = super().from_numpy(arrays)
        tensors: dict[str, Any] = self.tensors
        for name, t in tensors.items():
            if is_dtensor(t):  # every rank holds the full array: cut, no message
                out[name] = distribute_tensor(out[name], t.device_mesh, t.placements,
                                              src_data_rank=None)
        return out


def _full(tensor: Any) -> torch.Tensor:
    """The full tensor of a DTensor, gathered from the ranks (a collective call)."""
    return tensor.full_tensor()  # type: ignore[no-any-return]

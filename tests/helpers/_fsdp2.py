"""FSDP2 (``fully_shard``) jobs for tests/distributed/test_fsdp2.py (not a test module).

Registers its jobs in :data:`_torch_distributed.JOBS` and is launched with
``launch(job, workdir, script=HERE / "_fsdp2.py")``: two gloo ranks on the CPU, each
training on its half of every batch. :func:`train_fsdp2` is also the single-process
reference (no ``fully_shard``, the full batches), run in the test's own process.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _torch_distributed import JOBS, _main
from _torch_models import batches, make_model
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import EMA, L2, DecoupledWeightDecay, EarlyStopping, MaxNorm, ProximalL1

HERE = Path(__file__).resolve().parent

EPOCHS, BATCHES = 5, batches(4, seed=5, size=32)  # 20 steps

#: name → plugins at a strength multiplier (a test checks a doubled one would be told apart).
CONFIGS: dict[str, Callable[[float], list[object]]] = {
    "l2": lambda k: [L2(0.05 * k)],
    "decoupled_weight_decay": lambda k: [DecoupledWeightDecay(0.5 * k)],
    "proximal_l1": lambda k: [ProximalL1(0.02 * k)],
    "max_norm": lambda k: [MaxNorm(0.5 * k)],
}


def shard(model: nn.Module, dim: int = 0) -> nn.Module:
    """``fully_shard`` each Linear, then the root; matrices sharded along ``dim``."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    def placement(p: nn.Parameter) -> Shard:
        return Shard(dim if p.dim() > 1 else 0)

    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module, shard_placement_fn=placement)
    fully_shard(model, shard_placement_fn=placement)
    return model


def full(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full parameters (a collective call for sharded ones)."""
    out = {}
    for name, p in model.named_parameters():
        value = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = value.detach().clone()
    return out


def train_fsdp2(model: nn.Module, plugins: list[object], *, fused: bool = True,
                rows: slice = slice(None), drop_grad: Callable[[int], str | None] = lambda s: None,
                val_losses: list[float] | None = None,
                resume: Callable[[], tuple[nn.Module, list[object]]] | None = None
                ) -> dict[str, Any]:
    """Adam, EPOCHS epochs of BATCHES; ``reg.epoch_end`` logs the penalties each epoch.
    ``drop_grad(step)`` names a parameter whose gradient is set to None before that step;
    ``val_losses`` are the epochs' val_loss (1.0 each by default). With ``resume`` (a fresh
    model and plugins), the run's ``state_dict()`` is loaded into an attachment to them,
    whose own ``state_dict()`` is returned too."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    params = dict(model.named_parameters())
    step = 0
    losses = val_losses or [1.0] * EPOCHS
    extra: dict[str, Any] = {}
    with attach(model, optimizer, plugins, fused=fused) as reg:
        for epoch in range(EPOCHS):
            for x, y in BATCHES:
                optimizer.zero_grad()
                loss = reg.loss(F.cross_entropy(model(x[rows]), y[rows]))
                loss.backward()
                dropped = drop_grad(step)
                if dropped is not None:
                    params[dropped].grad = None
                optimizer.step()
                step += 1
            if reg.epoch_end({"val_loss": losses[epoch]}):
                break
        history = {k: list(v) for k, v in reg.history.items() if k != "val_loss"}
        ops = type(reg.run.ops).__name__
        if resume is not None:
            extra["state"] = reg.state_dict()
    if resume is not None:
        fresh, fresh_plugins = resume()
        fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
        with attach(fresh, fresh_opt, fresh_plugins, fused=fused) as again:
            again.load_state_dict(extra["state"])
            extra["reloaded"] = again.state_dict()
    return {"weights": full(model), "history": history, "ops": ops, **extra}


def stopping_plugins() -> list[object]:
    return [L2(0.05), EarlyStopping("val_loss", patience=1), EMA(0.9)]


#: Best at epoch 1, patience 1: stops after epoch 2 and restores epoch 1's weights.
STOPPING_LOSSES = [1.0, 0.5, 0.9, 0.8, 0.7]


def _half(rank: int, size: int) -> slice:
    n = BATCHES[0][0].shape[0] // size
    return slice(rank * n, (rank + 1) * n)


def job_fsdp2(rank: int, size: int) -> dict[str, Any]:
    out: dict[Any, Any] = {}
    for config, make_plugins in CONFIGS.items():
        for fused in (True, False):
            out[config, fused, 0] = train_fsdp2(shard(make_model(0)), make_plugins(1.0),
                                                fused=fused, rows=_half(rank, size))
    # Matrices sharded along dim 1: a shard holds part of every row, so max-norm's row
    # norms need the other rank's part.
    out["max_norm", True, 1] = train_fsdp2(shard(make_model(0), dim=1),
                                           CONFIGS["max_norm"](1.0), rows=_half(rank, size))
    # Early stopping's restore and EMA's averages on shards; the checkpoint holds the full
    # tensors and loads back into shards.
    out["stopping"] = train_fsdp2(
        shard(make_model(0)), stopping_plugins(), rows=_half(rank, size),
        val_losses=STOPPING_LOSSES, resume=lambda: (shard(make_model(1)), stopping_plugins()))
    # A gradient missing on rank 1 only (as ZeRO-2 may leave it): no crash, no hang.
    out["grad_none"] = train_fsdp2(
        shard(make_model(0), dim=1), [MaxNorm(0.5), L2(0.05)], rows=_half(rank, size),
        drop_grad=lambda step: "0.weight" if rank == 1 and step % 3 == 0 else None)
    return out


def _twins(dim: int) -> tuple[Any, Any, nn.Module, nn.Module]:
    """A sharded model and its unsharded twin (same values), with the same gradients set,
    and the runs built over them (ShardedTorchOps, TorchOps)."""
    from torch.distributed.tensor import distribute_tensor

    from regplug.adapters.torch import build_run

    sharded, plain = shard(make_model(0), dim), make_model(0)
    gen = torch.Generator().manual_seed(11)
    for (_, p), q in zip(sharded.named_parameters(), plain.parameters(), strict=True):
        grad = torch.randn(q.shape, generator=gen)
        grad[grad.abs() < 0.3] = 0.0  # some exact zeros
        q.grad = grad.clone()
        p.grad = distribute_tensor(grad, p.device_mesh, p.placements, src_data_rank=None)
    return (build_run(sharded, torch.optim.SGD(sharded.parameters(), lr=0.1)),
            build_run(plain, torch.optim.SGD(plain.parameters(), lr=0.1)), sharded, plain)


def _value(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return (x.full_tensor() if hasattr(x, "full_tensor") else x).detach().clone()
    if isinstance(x, (list, tuple)):
        return [_value(v) for v in x]
    return x


def _state(run: Any) -> dict[str, torch.Tensor]:
    return {p.name: _value(p.tensor) for p in run.params} | {
        p.name + ".grad": _value(p.tensor.grad) for p in run.params if p.tensor.grad is not None}


def job_ops(rank: int, size: int) -> dict[str, Any]:
    """Every op of ShardedTorchOps next to TorchOps on an unsharded twin: {(dim, op):
    (sharded result and state, plain result and state)}."""
    out: dict[Any, Any] = {}
    for dim in (0, 1):
        sharded, plain, _, _ = _twins(dim)

        def steps(run: Any, mine: dict[str, Any]) -> list[tuple[str, Callable[[], Any]]]:
            ops, params = run.ops, run.params
            weights = [p for p in params if p.tensor.dim() > 1]
            return [
                ("sum_squares", lambda: ops.sum_squares(params)),
                ("sum_abs", lambda: ops.sum_abs(params)),
                ("grad_norms", lambda: ops.grad_norms(params)),
                ("count_zeros", lambda: ops.count_zeros(params)),
                ("add_to_grad_", lambda: ops.add_to_grad_(params, 0.1)),
                ("add_sign_to_grad_", lambda: ops.add_sign_to_grad_(params, 0.2)),
                ("clone", lambda: mine.setdefault("copies", ops.clone(params))),
                ("scale_", lambda: ops.scale_(params, 1.5)),
                ("soft_threshold_", lambda: ops.soft_threshold_(params, 0.05)),
                ("clip_unit_norms_", lambda: ops.clip_unit_norms_(weights, 0.8)),
                ("clip_whole_norm_", lambda: ops.clip_unit_norms_(
                    [dataclasses.replace(p, unit_axis=None) for p in weights], 1.0)),
                ("clip_unit_norms_by_column", lambda: ops.clip_unit_norms_(
                    [dataclasses.replace(p, unit_axis=1) for p in weights], 0.2)),
                ("sum_squares_diff", lambda: ops.sum_squares_diff(params, mine["copies"])),
                ("add_diff_to_grad_", lambda: ops.add_diff_to_grad_(params, mine["copies"],
                                                                    0.3)),
                ("scale_update_", lambda: ops.scale_update_(
                    params, mine["copies"], [0.5 + 0.1 * i for i in range(len(params))])),
                ("moving_average_", lambda: ops.moving_average_(
                    [dataclasses.replace(p, tensor=c) for p, c in zip(params, mine["copies"])],
                    params, 0.9)),
                ("copy_into_", lambda: ops.copy_into_(mine["copies"], params)),
                ("scale_again", lambda: ops.scale_(params, 0.5)),
                ("copy_from_", lambda: ops.copy_from_(params, mine["copies"])),
                ("to_numpy", lambda: mine.setdefault("arrays", ops.to_numpy(params))),
                ("load_copies_", lambda: ops.load_copies_(
                    [dataclasses.replace(p, tensor=c) for p, c in zip(params, mine["copies"])],
                    [a * 2 for a in mine["arrays"]])),
                ("copy_from_loaded", lambda: ops.copy_from_(params, mine["copies"])),
                ("hold", lambda: mine.setdefault("held", ops.hold(params))),
                ("scale_third", lambda: ops.scale_(params, 3.0)),
                ("put_back_", lambda: ops.put_back_(params, mine["held"], 1.0)),
                ("zero_grads_", lambda: ops.zero_grads_(params[:2], 1.0)),
            ]

        mine_s: dict[str, Any] = {}
        mine_p: dict[str, Any] = {}
        for (name, do_s), (_, do_p) in zip(steps(sharded, mine_s), steps(plain, mine_p),
                                           strict=True):
            got = (_value(do_s()), _state(sharded))
            want = (_value(do_p()), _state(plain))
            out[dim, name] = (got, want)
    # In an update, a parameter without a gradient on this rank only is left alone here,
    # and the reduced row norms still match (dim 1: rows split between the ranks).
    sharded, plain, _, _ = _twins(1)
    sharded.ops.in_update = plain.ops.in_update = True
    if rank == 1:
        sharded.params[0].tensor.grad = None
    sharded.ops.clip_unit_norms_(sharded.params[:1], 0.5)
    plain.ops.clip_unit_norms_(plain.params[:1], 0.5)
    out["grad_none_clip"] = (_value(sharded.params[0].tensor), _value(plain.params[0].tensor))
    out["hsdp"] = _hsdp_refusal(size)
    return out


def _hsdp_refusal(size: int) -> str:
    """FSDP2 on a 2-D mesh (HSDP: replicate × shard): refused in one line by attach."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from regplug.errors import UsageError

    model = make_model(0)
    fully_shard(model, mesh=init_device_mesh("cpu", (1, size),
                                             mesh_dim_names=("replicate", "shard")))
    try:
        attach(model, torch.optim.SGD(model.parameters(), lr=0.1), [L2(0.1)])
    except UsageError as err:
        return str(err)
    return "accepted"


JOBS["fsdp2"] = job_fsdp2
JOBS["fsdp2_ops"] = job_ops

if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])

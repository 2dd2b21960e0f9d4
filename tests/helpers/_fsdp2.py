"""FSDP2 (``fully_shard``) jobs for tests/distributed/test_fsdp2.py (not a test module).

Registers its jobs in :data:`_torch_distributed.JOBS` and is launched with
``launch(job, workdir, script=HERE / "_fsdp2.py")``: two gloo ranks on the CPU, each
training on its half of every batch. :func:`train_fsdp2` is also the single-process
reference (no ``fully_shard``, the full batches), run in the test's own process.
"""

from __future__ import annotations

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
from regplug.plugins import L2, DecoupledWeightDecay, MaxNorm, ProximalL1

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
                rows: slice = slice(None), drop_grad: Callable[[int], str | None] = lambda s: None
                ) -> dict[str, Any]:
    """Adam, EPOCHS epochs of BATCHES; ``reg.epoch_end`` logs the penalties each epoch.
    ``drop_grad(step)`` names a parameter whose gradient is set to None before that step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    params = dict(model.named_parameters())
    step = 0
    with attach(model, optimizer, plugins, fused=fused) as reg:
        for _ in range(EPOCHS):
            for x, y in BATCHES:
                optimizer.zero_grad()
                loss = reg.loss(F.cross_entropy(model(x[rows]), y[rows]))
                loss.backward()
                dropped = drop_grad(step)
                if dropped is not None:
                    params[dropped].grad = None
                optimizer.step()
                step += 1
            reg.epoch_end({"val_loss": 1.0})
        history = {k: list(v) for k, v in reg.history.items() if k != "val_loss"}
        ops = type(reg.run.ops).__name__
    return {"weights": full(model), "history": history, "ops": ops}


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
    # A gradient missing on rank 1 only (as ZeRO-2 may leave it): no crash, no hang.
    out["grad_none"] = train_fsdp2(
        shard(make_model(0), dim=1), [MaxNorm(0.5), L2(0.05)], rows=_half(rank, size),
        drop_grad=lambda step: "0.weight" if rank == 1 and step % 3 == 0 else None)
    return out


JOBS["fsdp2"] = job_fsdp2

if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])

"""The processes of a ``torch.distributed`` job: collective stop votes and averaged logs.

Docs: docs/clock-and-window.md
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch

from regplug.errors import UsageError

__all__ = ["TorchWorld", "vote_device", "default_world"]


def vote_device(backend: str, model_device: torch.device | None = None) -> torch.device:
    """Where :class:`TorchWorld` all-reduces a vote, for a process group of ``backend``.

    On the CPU whenever the group can reduce CPU tensors — ``gloo``, ``mpi``, ``ucc``, a
    ``"cpu:gloo,cuda:nccl"`` pair, or ``init_process_group()`` without a backend (torch then
    serves the CPU with gloo) — since the vote is a host value. Otherwise (``nccl``, which
    reduces CUDA tensors only) on the model's device, or the current device of the
    backend's device type when the model is elsewhere.

    >>> vote_device("gloo", torch.device("cuda", 1)), vote_device("cpu:gloo,cuda:nccl")
    (device(type='cpu'), device(type='cpu'))
    >>> vote_device("nccl", torch.device("cuda", 1))
    device(type='cuda', index=1)
    """
    import torch.distributed as dist

    name = str(backend).lower()
    if name == "undefined":  # init_process_group() without a backend
        types = ["cpu"]
    elif ":" in name:
        types = [pair.split(":", 1)[0].strip() for pair in name.split(",")]
    else:
        known = getattr(dist.Backend, "backend_capability", {})
        types = list(known.get(name, [model_device.type if model_device else "cpu"]))
    if "cpu" in types:
        return torch.device("cpu")
    if model_device is not None and model_device.type in types:
        return model_device
    module = getattr(torch, types[0], None)
    current = getattr(module, "current_device", None)
    return torch.device(types[0], current()) if current else torch.device(types[0])


class TorchWorld:
    """The processes of a ``torch.distributed`` job, for decisions all of them must share.

    :meth:`any` is a *collective* call: every rank must make it, equally often, or the
    others wait in it (until the process group's ``timeout``; if a rank's process dies,
    the others fail at once). The adapter makes it once in every ``reg.epoch_end``, so
    every rank calls ``reg.epoch_end`` every epoch, each with its own metrics. The vote is
    one integer all-reduced with ``MAX``, on the device :func:`vote_device` picks.

    :param device: the model's device (where the vote goes if the backend cannot reduce
        CPU tensors). ``attach`` builds this world by itself when ``torch.distributed`` is
        initialised.

    >>> import tempfile, torch.distributed as dist
    >>> folder = tempfile.mkdtemp()
    >>> dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0,
    ...                         world_size=1)
    >>> world = TorchWorld()
    >>> world.rank, world.size, world.device, world.any(True), world.any(False)
    (0, 1, device(type='cpu'), True, False)
    >>> dist.destroy_process_group()
    """

    def __init__(self, device: torch.device | None = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        #: Where votes are all-reduced (see :func:`vote_device`).
        self.device = vote_device(str(dist.get_backend()), device)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (a collective call)."""
        vote = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        self._dist.all_reduce(vote, op=self._dist.ReduceOp.MAX)
        return bool(vote.item())

    def mean(self, keys: Sequence[str], values: Sequence[float]) -> list[float]:
        """The mean over the ranks of each value (a collective call, in float64).

        Refuses, on every rank alike, logs whose keys differ between ranks (their values
        would be mixed up) with a :class:`~regplug.UsageError` naming the keys of this rank.
        """
        digest = zlib.crc32("\0".join(keys).encode())
        check = torch.tensor([len(keys), -len(keys), digest, -digest], dtype=torch.int64,
                             device=self.device)
        self._dist.all_reduce(check, op=self._dist.ReduceOp.MAX)
        if int(check[0]) != -int(check[1]) or int(check[2]) != -int(check[3]):
            raise UsageError(
                f"regplug: reg.epoch_end got different log keys on different ranks (rank "
                f"{self.rank}: {', '.join(keys)}); pass the same metrics on every rank — they "
                "are averaged over the ranks so that every rank decides alike")
        total = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self._dist.all_reduce(total, op=self._dist.ReduceOp.SUM)
        return (total / self.size).tolist()


def default_world(device: torch.device) -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return TorchWorld(device)
    return None

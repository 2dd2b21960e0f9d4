"""Snapshots of a PyTorch model's whole state (parameters and buffers), and the conversions
that keep plugin state loadable with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regplug.run import check_state_arrays

from .discovery import unwrap

__all__ = ["TorchModelState", "arrays_as"]


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


def arrays_as(value: Any, kind: type, convert: Any) -> Any:
    """``value`` with every ``kind`` inside dicts, lists and tuples passed through ``convert``."""
    if isinstance(value, kind):
        return convert(value)
    if isinstance(value, dict):
        return {k: arrays_as(v, kind, convert) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(arrays_as(v, kind, convert) for v in value)
    return value

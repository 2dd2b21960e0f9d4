"""Snapshots of a PyTorch model's whole state (parameters and buffers), and the conversions
that keep plugin state loadable with ``torch.load(weights_only=True)``.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from regplug.manager import load_plugin_states
from regplug.run import Run, check_state_arrays

from .discovery import unwrap

__all__ = ["TorchModelState", "arrays_as", "run_state_dict", "load_run_state"]


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


def run_state_dict(run: Run, plugins: Sequence[object]) -> dict[str, Any]:
    """The run's clock and history and every plugin's state, for a torch checkpoint.

    NumPy arrays in plugins' states (e.g. early stopping's best weights) are stored as CPU
    tensors, so ``torch.load(path)`` reads the checkpoint with its default
    ``weights_only=True``; :func:`load_run_state` turns them back into arrays.
    """
    return {
        "step": run.step, "epoch": run.epoch,
        "history": {k: list(v) for k, v in run.history.items()},
        "plugins": [{"name": getattr(p, "name", type(p).__name__),
                     "state": arrays_as(p.state_dict() if hasattr(p, "state_dict") else {},
                                        np.ndarray, torch.from_numpy)}
                    for p in plugins],
    }


def load_run_state(run: Run, plugins: Sequence[object], state: dict[str, Any], *,
                   where: str = "load_run_state", writer: str = "run_state_dict()") -> None:
    """Resume from :func:`run_state_dict`: the same plugins, in the same order.

    All or nothing: the checkpoint's layout is checked first (a ``ValueError`` that says it
    is not a checkpoint written by ``writer``), then the plugins' names against this run's;
    if any plugin refuses its state, every plugin and the run's clock and history stay as
    they were (:func:`regplug.manager.load_plugin_states`). ``where`` names the call in
    messages.
    """
    try:
        entries = list(state["plugins"])
        saved = [entry["name"] for entry in entries]
        step, epoch = int(state["step"]), int(state["epoch"])
        history = {str(k): [float(x) for x in v] for k, v in state["history"].items()}
        states = [arrays_as(entry["state"], torch.Tensor,
                            lambda t: t.detach().cpu().numpy()) for entry in entries]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{where}: not a checkpoint written by {writer} "
                         f"({type(err).__name__}: {err}); nothing was loaded") from None
    current = [getattr(p, "name", type(p).__name__) for p in plugins]
    if saved != current:
        raise ValueError(f"{where}: the checkpoint holds plugins {saved}, this run has "
                         f"{current}; nothing was loaded")
    load_plugin_states(plugins, states, where=where)
    run.step, run.epoch = step, epoch
    run.history = history
    run.update_scalars()

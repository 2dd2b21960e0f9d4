"""What a torch event source reports after (or during) training, the same in every one.

Docs: docs/loops/torch.md
"""

from __future__ import annotations

from typing import Any

import torch

from regplug.penalty import unique_names
from regplug.run import Run, StopRequest

__all__ = ["RunResults"]


class RunResults:
    """Read-only results of the run an event source drives (``self.run``, ``self.window``,
    both ``None`` before training starts): the trainer callbacks mix this in."""

    run: Run | None
    window: Any

    def penalties(self) -> dict[str, torch.Tensor]:
        """Each penalty's value at the current weights (0-d float32 tensors), for the
        penalties of the latest step; empty before the first step."""
        penalties = self.window.penalties if self.window is not None else []
        with torch.no_grad():
            return {name: torch.as_tensor(p.value(), dtype=torch.float32)
                    for name, p in zip(unique_names(p.name for p in penalties), penalties,
                                       strict=True)}

    @property
    def history(self) -> dict[str, list[float]]:
        """Per-epoch logs as the plugins saw them (the trainer's metrics, penalties' values)."""
        return self.run.history if self.run is not None else {}

    @property
    def stop_requests(self) -> list[StopRequest]:
        """Why training was asked to stop, with the plugin, epoch and step of each vote."""
        return list(self.run.stop_requests) if self.run is not None else []

    @property
    def should_stop(self) -> bool:
        return self.run.should_stop if self.run is not None else False

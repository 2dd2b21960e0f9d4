"""Two-process EMA/SWA job for tests/distributed/test_averaging_ddp.py (not a test module).

Each rank trains a ``DistributedDataParallel`` model on its half of every batch with EMA and
SWA, and sends back their averages; :func:`launch` starts the ranks with
``_torch_distributed.launch`` (this file as the script, which registers :func:`job_averaging`
and hands over to that module's process-group set-up and result saving).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import _torch_distributed as td
import torch
from _torch_models import make_model

from regplug.plugins import EMA, SWA


def plugins() -> list[object]:
    return [EMA(0.9, keep_raw=True), SWA(start=1, keep_raw=True)]


def averages(reg: Any) -> dict[str, dict[str, Any]]:
    return {type(p).__name__: p.averages() for p in reg.manager.plugins}


def reference() -> dict[str, dict[str, Any]]:
    """One process, no DDP, the full batches: what every rank must hold."""
    model = make_model(0)
    reg, _ = td.train(model, td.optimizer_for("sgd", model), plugins())
    return averages(reg)


def job_averaging(rank: int, size: int) -> dict[str, Any]:
    model = torch.nn.parallel.DistributedDataParallel(make_model(0))
    reg, _ = td.train(model, td.optimizer_for("sgd", model), plugins(),
                      rows=slice(rank * 32 // size, (rank + 1) * 32 // size))
    return averages(reg)


def launch(workdir: Path) -> td.Outcome:
    return td.launch("averaging", workdir, script=Path(__file__), timeout=120)


td.JOBS["averaging"] = job_averaging

if __name__ == "__main__":
    td._main(sys.argv[1], sys.argv[2])

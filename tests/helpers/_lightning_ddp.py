"""A 2-process CPU DDP fit for tests/lightning/test_ddp.py (not a test module).

Run as ``python _lightning_ddp.py OUT``: Lightning's ``strategy="ddp"`` starts the second
process by running this script again; each rank saves its weights, history and stop
requests to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from _lightning_models import Tiny, data, trainer

import regplug
from regplug.adapters.lightning import Regularize
from regplug.plugins import L2


class VoteOnRank(regplug.Plugin):
    """Votes to stop at the end of epoch ``epoch``, on rank ``rank`` only."""

    def __init__(self, rank: int, epoch: int) -> None:
        self.voter, self.at = rank, epoch

    @regplug.hookimpl
    def on_epoch_end(self, run, epoch, logs):
        if run.world.rank == self.voter and epoch == self.at:
            run.stop(f"test vote on rank {self.voter}", source=self.name)


def main(out: Path) -> int:
    model, reg = Tiny(), Regularize([L2(1e-2), VoteOnRank(rank=1, epoch=1)])
    t = trainer(5, [reg], devices=2, strategy="ddp", deterministic=False)
    t.fit(model, data(), data(seed=1))
    torch.save({"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "history": reg.history, "epoch": t.current_epoch,
                "stops": [str(r) for r in reg.stop_requests], "world": reg.run.world.size},
               out / f"rank{t.global_rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    # Rank 0 started the other rank (Lightning's launcher re-runs this script) and answers for
    # it: the test waits on rank 0 only, so rank 0 waits for its child and fails with it.
    status = 0
    for child in getattr(t.strategy.launcher, "procs", []):
        status = status or child.wait(timeout=120)
    return status


if __name__ == "__main__":
    code = main(Path(sys.argv[1]))
    # Each rank's result is saved: leave without the interpreter's finalization, where gloo's
    # worker threads can still be joinable while their objects are torn down, and the rank
    # aborts with "terminate called without an active exception" (exit -6) after a run that
    # succeeded (seen in CI on rank 0; the same race tests/helpers/_torch_distributed.py
    # avoids). A run that raised never gets here: its traceback and exit status stay.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if code >= 0 else 128 - code)

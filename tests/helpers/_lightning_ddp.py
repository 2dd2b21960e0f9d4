"""A 2-process CPU DDP fit for tests/lightning/test_ddp.py (not a test module).

Run as ``python _lightning_ddp.py OUT``: Lightning's ``strategy="ddp"`` starts the second
process by running this script again; each rank saves its weights, history and stop
requests to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

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


def main(out: Path) -> None:
    model, reg = Tiny(), Regularize([L2(1e-2), VoteOnRank(rank=1, epoch=1)])
    t = trainer(5, [reg], devices=2, strategy="ddp", deterministic=False)
    t.fit(model, data(), data(seed=1))
    torch.save({"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "history": reg.history, "epoch": t.current_epoch,
                "stops": [str(r) for r in reg.stop_requests], "world": reg.run.world.size},
               out / f"rank{t.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Two-process OptunaPruning job for tests/distributed/test_pruning_ddp.py (not a test module).

Rank 0 holds a real Optuna trial whose pruner prunes at epoch 2, rank 1 an
``OptunaPruning(None, ...)``; each rank passes its own validation loss. :func:`launch` starts
the ranks with ``_torch_distributed.launch`` (this file as the script, which registers
:func:`job_pruning` and hands over to that module's process-group set-up and result saving).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import _torch_distributed as td
import optuna
from _torch_models import make_model

from regplug.plugins import OptunaPruning

EPOCHS = 6
PRUNE_AT = 2
#: Each rank's own validation losses; every rank's plugins see their mean.
VAL_LOSSES = {0: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 1: [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]}


def prune_at(step: int) -> optuna.pruners.BasePruner:
    """Optuna's ThresholdPruner pruning every trial at ``step``: every value is above
    ``upper=-inf``, and none is judged during the ``step`` warm-up steps."""
    return optuna.pruners.ThresholdPruner(upper=-math.inf, n_warmup_steps=step)


def job_pruning(rank: int, size: int) -> dict[str, Any]:
    """The objective of each rank: rank 0 with the trial, the others with None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=prune_at(PRUNE_AT)) if rank == 0 else None
    trial = study.ask() if study is not None else None
    pruning = OptunaPruning(trial, monitor="val_loss")
    model = make_model(0)
    reg, ran = td.train(model, td.optimizer_for("sgd", model), [pruning], epochs=EPOCHS,
                        val_loss=VAL_LOSSES[rank].__getitem__)
    raised = None
    try:
        pruning.raise_if_pruned()
    except optuna.TrialPruned as err:
        raised = str(err)
        if study is not None and trial is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    out = dict(td.stop_report(reg, ran), pruned=pruning.pruned,
               pruned_epoch=pruning.pruned_epoch, reported=dict(pruning.reported),
               raised=raised)
    if study is not None:
        (frozen,) = study.trials
        out.update(state=frozen.state.name, intermediate=dict(frozen.intermediate_values))
    return out


def launch(workdir: Path, *, timeout: float = 120.0) -> td.Outcome:
    """Run :func:`job_pruning` on two processes; each rank's result, or why it failed."""
    return td.launch("pruning", workdir, world_size=2, timeout=timeout, script=Path(__file__))


if __name__ == "__main__":
    td.JOBS["pruning"] = job_pruning
    td._main(sys.argv[1], sys.argv[2])  # the process group, the job, the result file

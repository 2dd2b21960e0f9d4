"""Two-process OptunaPruning job for tests/distributed/test_pruning_ddp.py (not a test module).

Rank 0 holds a real Optuna trial whose pruner prunes at epoch 2, rank 1 an
``OptunaPruning(None, ...)``; each rank passes its own validation loss. :func:`launch` starts
the ranks as ``torchrun`` would (this file as the script), through the process-group set-up
and result saving of ``_torch_distributed``, and kills a job that outlives its time limit.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _torch_distributed as td
import optuna
import torch
from _torch_models import make_model

from regplug.plugins import OptunaPruning

HERE = Path(__file__).resolve().parent
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
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "store"
    store.unlink(missing_ok=True)
    env = dict(os.environ, WORLD_SIZE="2", REGPLUG_TEST_INIT=f"file://{store}",
               REGPLUG_TEST_BACKEND="gloo", REGPLUG_TEST_PG_TIMEOUT="30", OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # see _torch_distributed.launch
    start = time.monotonic()
    logs = [open(workdir / f"rank{rank}.log", "w+") for rank in (0, 1)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "_torch_pruning_ddp.py"),
                               str(workdir)], cwd=workdir,
                              env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                              stdout=log, stderr=subprocess.STDOUT)
             for rank, log in enumerate(logs)]
    killed = []
    try:
        for proc in procs:
            proc.wait(timeout=max(0.1, start + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        killed = [r for r, p in enumerate(procs) if p.poll() is None]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    results = [torch.load(path, weights_only=False) if path.exists() else None
               for path in (workdir / "rank0.pt", workdir / "rank1.pt")]
    return td.Outcome([p.returncode for p in procs], results, texts,
                      time.monotonic() - start, bool(killed), killed)


if __name__ == "__main__":
    td.JOBS["pruning"] = job_pruning
    td._main("pruning", sys.argv[1])  # the process group, the job, the result file

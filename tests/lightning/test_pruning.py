"""OptunaPruning in a Lightning fit: trainer.should_stop after the pruned epoch, EarlyStopping
still restores, the documented objective runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from _lightning_models import Tiny, data, fit

from regplug.adapters.lightning import Regularize
from regplug.plugins import L2, EarlyStopping, OptunaPruning

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DOC = Path(__file__).resolve().parents[2] / "docs" / "tuning-in-your-loop.md"
PRUNED = optuna.trial.TrialState.PRUNED
SCRIPTED = [1.0, 0.5, 0.7, 0.8, 0.9, 1.0]  # val_loss per epoch: best at epoch 1


def prune_at(step: int) -> optuna.pruners.BasePruner:
    """Optuna's ThresholdPruner pruning every trial at ``step``: every value is above
    ``upper=-inf``, and none is judged during the ``step`` warm-up steps."""
    return optuna.pruners.ThresholdPruner(upper=-math.inf, n_warmup_steps=step)


def test_a_pruned_trial_sets_should_stop_after_that_epoch_and_early_stopping_restores():
    trial = optuna.create_study(pruner=prune_at(2)).ask()
    model = Tiny(val_losses=SCRIPTED)
    stopper, pruning = EarlyStopping(patience=10), OptunaPruning(trial, monitor="val_loss")
    reg = Regularize([L2(1e-3), stopper, pruning])
    t = fit(model, epochs=6, callbacks=[reg], validate=True)
    assert t.should_stop and t.current_epoch == 3  # epochs 0, 1, 2 ran, of 6
    assert len(model.snapshots) == 3
    assert trial.study.trials[0].intermediate_values == pytest.approx(
        dict(enumerate(SCRIPTED[:3])))
    assert pruning.pruned_epoch == 2 and [r.source for r in reg.stop_requests] == [
        "optuna_pruning"]
    with pytest.raises(optuna.TrialPruned, match=r"epoch 3 \(step 2\): val_loss = 0.7$"):
        pruning.raise_if_pruned()
    assert stopper.restored_epoch == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, model.snapshots[1][name]), name


def test_the_documented_objective_runs_a_study_and_is_pruned_at_the_pruners_epoch(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# Lightning\n")]
    # The names the docs say stand for the reader's own module and data:
    namespace: dict[str, object] = {"__name__": "__doc__", "MyModule": Tiny,
                                    "train_loader": data(), "val_loader": data(seed=1)}
    exec(compile(code.replace("n_trials=20", "n_trials=2"), str(DOC), "exec"), namespace)
    assert len(namespace["study"].trials) == 2
    study = optuna.create_study(pruner=prune_at(2))
    study.optimize(namespace["objective"], n_trials=1)
    (frozen,) = study.trials
    assert frozen.state == PRUNED and sorted(frozen.intermediate_values) == [0, 1, 2]

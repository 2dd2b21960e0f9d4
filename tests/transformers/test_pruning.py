"""OptunaPruning in the Hugging Face Trainer: control.should_training_stop after the pruned
evaluation, EarlyStopping still restores, the documented objective runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from _hf_models import ScriptedEval, Tokens, bert, train

from regplug.adapters.transformers import Regularize
from regplug.plugins import EarlyStopping, OptunaPruning

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DOC = Path(__file__).resolve().parents[2] / "docs" / "tuning-in-your-loop.md"
PRUNED = optuna.trial.TrialState.PRUNED
EVAL = dict(eval_dataset=Tokens(16, seed=1), eval_strategy="epoch")


def prune_at(step: int) -> optuna.pruners.BasePruner:
    """Optuna's ThresholdPruner pruning every trial at ``step``: every value is above
    ``upper=-inf``, and none is judged during the ``step`` warm-up steps."""
    return optuna.pruners.ThresholdPruner(upper=-math.inf, n_warmup_steps=step)


def test_a_pruned_trial_stops_training_after_that_evaluation_and_early_stopping_restores():
    trial = optuna.create_study(pruner=prune_at(2)).ask()
    scripted = ScriptedEval([0.5, 0.4, 0.6, 0.7, 0.8, 0.9])  # best: evaluation 1
    stopper = EarlyStopping(monitor="eval_loss", patience=10)
    pruning = OptunaPruning(trial, monitor="eval_loss")
    reg = Regularize([stopper, pruning])
    trainer = train(callbacks=[scripted, reg], num_train_epochs=6, **EVAL)
    assert trainer.state.global_step == 3 * 4  # 4 steps an epoch: 3 of 6 epochs ran
    assert len(scripted.snapshots) == 3
    assert reg.should_stop and [r.source for r in reg.stop_requests] == ["optuna_pruning"]
    assert trial.study.trials[0].intermediate_values == {0: 0.5, 1: 0.4, 2: 0.6}
    with pytest.raises(optuna.TrialPruned, match=r"epoch 3 \(step 2\): eval_loss = 0.6$"):
        pruning.raise_if_pruned()
    assert stopper.restored_epoch == 1
    restored = trainer.model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in scripted.snapshots[1].items())


def test_the_documented_objective_runs_a_study_and_is_pruned_at_the_pruners_epoch(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# Hugging Face Trainer\n")]
    # The names the docs say stand for the reader's own model and data; a CPU run here.
    code = code.replace("n_trials=20", "n_trials=2").replace(
        "report_to=[])", "report_to=[], use_cpu=True, disable_tqdm=True)")
    assert "use_cpu=True" in code
    namespace: dict[str, object] = {"__name__": "__doc__", "make_model": bert,
                                    "train_dataset": Tokens(),
                                    "eval_dataset": Tokens(16, seed=1)}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert len(namespace["study"].trials) == 2
    study = optuna.create_study(pruner=prune_at(2))
    study.optimize(namespace["objective"], n_trials=1)
    (frozen,) = study.trials
    assert frozen.state == PRUNED and sorted(frozen.intermediate_values) == [0, 1, 2]

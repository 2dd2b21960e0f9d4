"""What ``Trainer(callbacks=[Regularize([...])])`` does at each Trainer event: the optimizer
it acts through, epochs and their logs, stopping and restoring, refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
from _hf_models import ScriptedEval, Tokens, arguments, bert, max_diff, train
from transformers import Trainer, TrainerCallback

from regplug.adapters.transformers import Regularize
from regplug.errors import RegplugWarning, UnsupportedPluginError
from regplug.plugins import L2, EarlyStopping, OverfitBatch

EVAL = dict(eval_dataset=Tokens(16, seed=1), eval_strategy="epoch")


def test_the_run_acts_through_the_torch_optimizer_inside_accelerates_wrapper():
    reg = Regularize([L2(1e-3)])
    trainer = train(callbacks=[reg])
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"
    assert reg.run is not None
    names = {p.name for p in reg.run.params}
    assert names == {n for n, _ in trainer.model.named_parameters()}
    assert reg.run.step == trainer.state.global_step == 8


@pytest.mark.parametrize("monitor", ["eval_loss", "val_loss"])
def test_early_stopping_stops_the_trainer_and_restores_the_best_evaluation_at_train_end(monitor):
    scripted = ScriptedEval([0.5, 0.4, 0.6, 0.7, 0.8, 0.9])
    stopper = EarlyStopping(monitor=monitor, patience=1)
    reg = Regularize([stopper])
    trainer = train(callbacks=[scripted, reg], num_train_epochs=6, **EVAL)
    assert trainer.state.global_step == 3 * 4  # stopped after the third of six epochs
    assert len(scripted.snapshots) == 3 and stopper.best_epoch == 1
    restored = trainer.model.state_dict()
    best = scripted.snapshots[1]
    assert all(torch.equal(restored[k], best[k]) for k in best)  # buffers included
    assert not all(torch.equal(restored[k], scripted.snapshots[2][k]) for k in best)
    assert reg.should_stop and reg.stop_requests[0].epoch == 2


def test_epoch_logs_are_the_evaluation_metrics_under_both_names_training_logs_and_penalties():
    reg = Regularize([L2(1e-3)])
    trainer = train(callbacks=[reg], logging_strategy="epoch", **EVAL)
    history = reg.history
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert history["eval_loss"] == history["val_loss"] == [e["eval_loss"] for e in evaluations]
    trained = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert history["loss"] == pytest.approx(trained)
    assert len(history["l2_penalty"]) == 2 and history["l2_penalty"][1] > 0
    assert "epoch" not in history and "grad_norm" in history


def test_with_eval_strategy_steps_each_evaluation_is_an_epoch():
    reg = Regularize([L2(1e-3)])
    train(callbacks=[reg], eval_dataset=Tokens(16, seed=1), eval_strategy="steps", eval_steps=2)
    assert len(reg.history["eval_loss"]) == 4  # 8 steps, an evaluation every 2
    assert reg.run.epoch == 4


def test_an_evaluation_before_any_step_is_not_an_epoch():
    reg = Regularize([L2(1e-3)])
    trainer = train(callbacks=[reg], eval_on_start=True, **EVAL)
    assert sum("eval_loss" in e for e in trainer.state.log_history) == 3
    assert len(reg.history["eval_loss"]) == 2


def test_evaluate_after_train_leaves_the_finished_run_alone():
    reg = Regularize([EarlyStopping(monitor="eval_loss")])
    trainer = train(callbacks=[reg], **EVAL)
    before = {k: list(v) for k, v in reg.history.items()}
    trainer.evaluate()
    assert reg.history == before


def test_without_evaluation_the_trainers_epoch_ends_regplugs_and_a_monitor_is_told_how():
    reg = Regularize([L2(1e-3), EarlyStopping()])  # monitors val_loss
    with pytest.warns(RegplugWarning, match="no validation metrics: pass an eval_dataset"):
        train(callbacks=[reg])
    assert reg.run.epoch == 2 and len(reg.history["l2_penalty"]) == 2


def test_a_train_that_raised_leaves_no_run_behind_for_the_next_train():
    class Boom(TrainerCallback):
        def __init__(self):
            self.armed = True

        def on_step_end(self, args, state, control, **kwargs):
            if self.armed:
                self.armed = False
                raise RuntimeError("boom")

    reg = Regularize([EarlyStopping(monitor="eval_loss")])
    trainer = Trainer(model=bert(), args=arguments(eval_strategy="epoch"),
                      train_dataset=Tokens(), eval_dataset=Tokens(16, seed=1),
                      callbacks=[Boom(), reg])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert reg.clock is not None and reg.clock.active
    trainer.train()  # the second train() starts a fresh run
    assert reg.run.step == 8 and len(reg.history["eval_loss"]) == 2
    assert not reg.clock.active


def test_a_plugin_that_trains_on_its_own_is_refused_with_the_way_to_run_it():
    with pytest.raises(UnsupportedPluginError, match="attach"):
        Regularize([OverfitBatch(torch.zeros(2, 8), torch.zeros(2))])


def test_fused_must_be_a_bool():
    with pytest.raises(TypeError, match="fused"):
        Regularize([L2(1e-3)], fused="yes")


def test_the_same_weights_with_fused_false(recwarn):
    warnings.simplefilter("ignore")
    fused = train(callbacks=[Regularize([L2(1e-2)])], max_grad_norm=0.0, optim="sgd")
    autograd = train(callbacks=[Regularize([L2(1e-2)], fused=False)], max_grad_norm=0.0,
                     optim="sgd")
    assert max_diff(fused.model, autograd.model) < 1e-6


def test_metrics_that_are_not_numbers_are_left_out_of_the_epoch_logs():
    def compute_metrics(prediction):
        return {"accuracy": 0.5, "confusion": [[1, 2], [3, 4]], "label": "ok"}

    reg = Regularize([L2(1e-3)])
    train(callbacks=[reg], trainer_kwargs={"compute_metrics": compute_metrics}, **EVAL)
    assert reg.history["eval_accuracy"] == reg.history["val_accuracy"] == [0.5, 0.5]
    assert not any("confusion" in k or "label" in k for k in reg.history)

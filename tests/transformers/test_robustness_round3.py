"""The Hugging Face callback's corner cases of robustness round 3 (issue 16): one callback in
two running Trainers, a train() that raised, accumulation with penalties through autograd,
and which models take the penalty as ``compute_loss`` would under accumulation."""

from __future__ import annotations

import pytest
import torch
from _hf_models import (
    PenaltyTrainer,
    Tokens,
    arguments,
    bert,
    l2_of,
    max_diff,
    names_of_kinds,
    train,
)
from torch import nn
from transformers import Trainer, TrainerCallback

import regplug
from regplug import Penalty, hookimpl
from regplug.adapters.transformers import Regularize
from regplug.plugins import L2, EarlyStopping

SGD = dict(optim="sgd", learning_rate=0.1, max_grad_norm=0.0)


class SquaredSum:
    """A third-party penalty without a closed form: ``s·(Σθ)²`` over the classifier's weight."""

    name = "squared_sum"

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @hookimpl
    def on_loss(self, run):
        weight = next(p.tensor for p in run.params if p.name.endswith("classifier.weight"))
        return Penalty("squared_sum_penalty", value=lambda: self.strength * weight.sum() ** 2)


def squared_sum(strength):
    return lambda model: strength * model.classifier.weight.sum() ** 2


class Averaging(Trainer):
    """The Trainer divides each micro-batch's loss by k (BERT's classification loss is a
    plain mean although it takes num_items_in_batch)."""

    loss_is_scaled_for_ga = False


# -- item 19: accumulation with penalties through autograd -------------------------------------
@pytest.mark.parametrize("plugin,written", [
    (lambda: L2(0.05), lambda names: l2_of(names, 0.05)),
    (lambda: SquaredSum(0.05), lambda names: squared_sum(0.05)),
], ids=["fused=False", "third-party-penalty"])
def test_accumulation_adds_an_autograd_penalty_once_per_optimizer_step(plugin, written):
    names = names_of_kinds(bert(), "weight")
    accumulated = train(trainer_class=Averaging,
                        callbacks=[reg := Regularize([plugin()], fused=False)],
                        per_device_train_batch_size=4, gradient_accumulation_steps=2, **SGD)
    one_batch = train(trainer_class=PenaltyTrainer, per_device_train_batch_size=8, **SGD,
                      trainer_kwargs={"penalty": written(names)})
    assert max_diff(accumulated.model, one_batch.model) < 1e-5
    assert reg.run.step == accumulated.state.global_step == 8


# -- item 9: the models whose Trainer does not divide compute_loss by k ------------------------
class NoLossKwargs(nn.Module):
    """A classifier whose forward takes no loss kwargs: the Trainer divides its loss by k."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 8)
        self.classifier = nn.Linear(8, 2)

    def forward(self, input_ids, labels=None):
        logits = self.classifier(self.embed(input_ids).mean(dim=1))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_with_a_model_without_loss_kwargs_the_penalty_equals_the_one_in_compute_loss():
    names = ["classifier.weight"]
    args = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, **SGD)
    ours = train(NoLossKwargs(), callbacks=[Regularize([L2(0.05)])], **args)
    assert ours.model_accepts_loss_kwargs is False
    written = train(NoLossKwargs(), trainer_class=PenaltyTrainer, **args,
                    trainer_kwargs={"penalty": l2_of(names, 0.05)})
    assert max_diff(ours.model, written.model) < 1e-6


def test_with_a_model_taking_loss_kwargs_the_penalty_is_the_one_in_compute_loss_over_k():
    """BERT takes loss kwargs: the Trainer does not divide compute_loss's output by k, so a
    penalty added there enters k times per step; regplug's enters once, at full strength:
    that of ``penalty / k`` in compute_loss (and of one batch of k micro-batches)."""
    k, names = 2, names_of_kinds(bert(), "weight")
    args = dict(per_device_train_batch_size=4, gradient_accumulation_steps=k, **SGD)
    ours = train(callbacks=[Regularize([L2(0.05)])], **args)
    assert ours.model_accepts_loss_kwargs is True
    over_k = train(trainer_class=PenaltyTrainer, **args,
                   trainer_kwargs={"penalty": l2_of(names, 0.05 / k)})
    assert max_diff(ours.model, over_k.model) < 1e-6
    in_compute_loss = train(trainer_class=PenaltyTrainer, **args,
                            trainer_kwargs={"penalty": l2_of(names, 0.05)})
    assert max_diff(ours.model, in_compute_loss.model) > 1e-4  # k times the penalty there


# -- item 6: one callback, two Trainers training at once ---------------------------------------
class StartsAnotherTrain(TrainerCallback):
    """At the first step of its Trainer, train another Trainer; keep what that raised."""

    def __init__(self, other: Trainer) -> None:
        self.other, self.error = other, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and self.error is None:
            try:
                self.other.train()
            except regplug.UsageError as err:
                self.error = err


def test_a_callback_shared_by_two_running_trainers_is_refused_and_the_first_stays_whole():
    names = names_of_kinds(bert(), "weight")
    shared = Regularize([L2(0.05)])
    other = Trainer(model=bert(seed=1), args=arguments(**SGD),
                    train_dataset=Tokens(), callbacks=[shared])
    other_before = {k: v.clone() for k, v in other.model.state_dict().items()}
    starter = StartsAnotherTrain(other)
    first = train(callbacks=[shared, starter], **SGD)
    assert starter.error is not None
    assert "already in use by a Trainer.train() that is running" in str(starter.error)
    assert "\n" not in str(starter.error)
    written = train(trainer_class=PenaltyTrainer, **SGD,
                    trainer_kwargs={"penalty": l2_of(names, 0.05)})
    assert max_diff(first.model, written.model) < 1e-6  # regularized at every step
    assert shared.run.step == first.state.global_step == 8 and not shared.clock.active
    for key, value in other.model.state_dict().items():  # the refused one never trained
        assert torch.equal(value, other_before[key]), key
    train(other.model, callbacks=[shared], **SGD)  # and the callback serves a next train()


# -- item 17: a train() that raised ends its run ---------------------------------------------
class Fails(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("boom")


def test_after_a_train_that_raised_its_plugins_are_free_and_evaluate_is_no_epoch():
    stopper = EarlyStopping(monitor="eval_loss", patience=5)
    reg = Regularize([L2(0.05), stopper])
    with pytest.raises(RuntimeError, match="boom"):
        train(callbacks=[reg, Fails()], **SGD)
    # The plugin object is free for another run at once (it was held until the next train())
    model = nn.Linear(2, 1)
    regplug.adapters.torch.attach(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                  [stopper]).close()
    assert not reg.clock.active


def test_trainer_evaluate_after_a_train_that_raised_is_not_an_epoch_of_it():
    reg = Regularize([L2(0.05)])
    trainer = Trainer(model=bert(), args=arguments(**SGD),
                      train_dataset=Tokens(), eval_dataset=Tokens(8, seed=1),
                      callbacks=[reg, Fails()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    trainer.evaluate()
    assert reg.history == {} and reg.run.epoch == 0 and not reg.clock.active


def test_a_model_with_nothing_trainable_is_refused_in_one_line():
    model = bert()
    model.requires_grad_(False)
    with pytest.raises(regplug.UsageError, match=r"nothing to train") as caught:
        train(model, callbacks=[Regularize([L2(0.05)])], **SGD)
    assert "\n" not in str(caught.value)

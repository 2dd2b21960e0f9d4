"""EMA and SWA in the Hugging Face Trainer equal torch.optim.swa_utils.AveragedModel, and the
Trainer's evaluation during training runs on the averages when asked."""

from __future__ import annotations

import torch
from _hf_models import Tokens, bert, train
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import TrainerCallback

from regplug.adapters.transformers import Regularize
from regplug.plugins import EMA, SWA

SGD = dict(optim="sgd", learning_rate=0.1)


class AverageByHand(TrainerCallback):
    """The anchor: AveragedModel updated after every optimizer step (EMA), or at each epoch's
    end from ``start`` (SWA)."""

    def __init__(self, decay: float | None = None, start: int = 0) -> None:
        self.decay, self.start = decay, start
        self.averaged: AveragedModel | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        fn = None if self.decay is None else get_ema_multi_avg_fn(self.decay)
        self.averaged = AveragedModel(model, multi_avg_fn=fn)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.decay is not None:
            self.averaged.update_parameters(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.decay is None and round(state.epoch) - 1 >= self.start:
            self.averaged.update_parameters(model)


def assert_same_params(a, b, *, rtol=1e-6, atol=1e-7):
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_ema_equals_averaged_model_after_200_steps():
    by_hand = AverageByHand(decay=0.95)
    reference = train(callbacks=[by_hand], train_dataset=Tokens(400), num_train_epochs=4, **SGD)
    reg = Regularize([EMA(0.95)])
    ours = train(callbacks=[reg], train_dataset=Tokens(400), num_train_epochs=4, **SGD)
    assert reg.run.step == 200
    assert_same_params(ours.model, by_hand.averaged.module)
    assert not torch.equal(reference.model.classifier.weight, ours.model.classifier.weight)


def test_swa_equals_averaged_model_at_each_epoch_end_from_start():
    by_hand = AverageByHand(start=2)
    train(callbacks=[by_hand], train_dataset=Tokens(80), num_train_epochs=6, **SGD)
    swa = SWA(start=2)
    ours = train(callbacks=[Regularize([swa])], train_dataset=Tokens(80), num_train_epochs=6,
                 **SGD)
    assert swa.averaged == 4
    assert_same_params(ours.model, by_hand.averaged.module, rtol=1e-5, atol=1e-6)


def test_evaluation_during_training_runs_on_the_average():
    ema = EMA(0.9, evaluate_on_average=True)
    trainer = train(callbacks=[Regularize([ema])], eval_dataset=Tokens(16, seed=1),
                    eval_strategy="epoch", num_train_epochs=3, **SGD)
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(logged) == 3
    # After training the model holds the average the last evaluation ran on.
    assert abs(trainer.evaluate()["eval_loss"] - logged[-1]) < 1e-6
    raw = EMA(0.9, keep_raw=True)
    plain = train(callbacks=[Regularize([raw])], eval_dataset=Tokens(16, seed=1),
                  eval_strategy="epoch", num_train_epochs=3, **SGD)
    raw_logged = [e["eval_loss"] for e in plain.state.log_history if "eval_loss" in e]
    assert abs(raw_logged[-1] - logged[-1]) > 1e-5  # the test can fail: raw weights differ


def test_the_trained_weights_are_back_for_training_after_each_evaluation():
    kept = EMA(0.9, evaluate_on_average=True, keep_raw=True)
    swapped = train(model=bert(), callbacks=[Regularize([kept])],
                    eval_dataset=Tokens(16, seed=1), eval_strategy="epoch", **SGD)
    plain = train(model=bert(), callbacks=[Regularize([EMA(0.9, keep_raw=True)])], **SGD)
    assert_same_params(swapped.model, plain.model, rtol=0, atol=0)

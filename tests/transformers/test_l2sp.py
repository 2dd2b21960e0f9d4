"""L2SP in the Hugging Face Trainer: the callback's weights equal the same penalty written
into ``compute_loss`` (also under gradient accumulation), and the decoupled variant equals
the decay toward θ₀ applied by hand before each optimizer step."""

from __future__ import annotations

import pytest
import torch
from _hf_models import PenaltyTrainer, bert, max_diff, names_of_kinds, train
from transformers import TrainerCallback

from regplug.adapters.transformers import Regularize
from regplug.plugins import L2SP

ALPHA, BETA = 0.5, 0.05
SGD = dict(optim="sgd", learning_rate=0.1, max_grad_norm=0.0)


def _start() -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in bert().named_parameters()}


def l2sp_by_hand(names: list[str], scale: float = 1.0):
    start = _start()
    pretrained = [n for n in names if not n.startswith("classifier.")]

    def penalty(model):
        params = dict(model.named_parameters())
        return scale * (
            ALPHA / 2 * sum((params[n] - start[n]).square().sum() for n in pretrained)
            + BETA / 2 * params["classifier.weight"].square().sum())
    return penalty


@pytest.mark.parametrize("accumulate", [1, 2])
def test_l2sp_equals_the_penalty_in_compute_loss(accumulate):
    # BERT takes loss kwargs, so under accumulation the Trainer does not divide
    # compute_loss's output by k: a penalty written there enters k times a step, regplug's
    # once, as penalty / k there does (tests/transformers/test_robustness_round3.py).
    names = names_of_kinds(bert(), "weight")
    ours = train(callbacks=[Regularize([L2SP(ALPHA, BETA, new="classifier.*")])],
                 gradient_accumulation_steps=accumulate, **SGD)
    written = train(trainer_class=PenaltyTrainer, gradient_accumulation_steps=accumulate,
                    trainer_kwargs={"penalty": l2sp_by_hand(names, 1 / accumulate)}, **SGD)
    assert max_diff(ours.model, written.model) < 1e-6
    assert max_diff(train(gradient_accumulation_steps=accumulate, **SGD).model,
                    written.model) > 1e-4


class DecayTowardStart(TrainerCallback):
    """θ ← θ − lr·alpha·(θ − θ₀) on the pretrained weights, θ ← (1 − lr·beta)·θ on the
    classifier's, right before each optimizer step, with the step's learning rate."""

    def __init__(self, names: list[str]) -> None:
        self.start, self.names = _start(), names

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None,
                              **kwargs):
        lr = optimizer.param_groups[0]["lr"]
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n in self.names:
                if n.startswith("classifier."):
                    params[n].mul_(1 - lr * BETA)
                else:
                    params[n].sub_(lr * ALPHA * (params[n] - self.start[n]))


def test_decoupled_l2sp_equals_the_decay_toward_the_start_by_hand():
    names = names_of_kinds(bert(), "weight")
    ours = train(callbacks=[Regularize([L2SP(ALPHA, BETA, new="classifier.*",
                                             decoupled=True)])], optim="adamw_torch",
                 weight_decay=0.0, learning_rate=1e-2)
    mine = train(callbacks=[DecayTowardStart(names)], optim="adamw_torch", weight_decay=0.0,
                 learning_rate=1e-2)
    assert max_diff(ours.model, mine.model) < 1e-6
    assert max_diff(train(optim="adamw_torch", weight_decay=0.0, learning_rate=1e-2).model,
                    mine.model) > 1e-4

"""Proof by weights: each plugin in ``Trainer(callbacks=[Regularize([...])])`` ends with the
weights of the same regularizer written with the Trainer's own means — and, where the
Trainer's gradient clipping changes what a penalty means, which reference it matches."""

from __future__ import annotations

import pytest
from _hf_models import PenaltyTrainer, Tokens, bert, l2_of, max_diff, names_of_kinds, train
from transformers import Trainer

from regplug import Penalty, hookimpl
from regplug.adapters.transformers import PenaltiesBeforeClipping, Regularize
from regplug.plugins import L2, DecoupledWeightDecay

L2_STRENGTH = 1e-2
CLIP = 0.05  # well below the gradients' norm: the Trainer clips at every step
SGD = dict(optim="sgd", learning_rate=0.1)
HF_DECAY_KINDS = ["weight", "embedding"]  # the Trainer decays all but biases and LayerNorms


class RegularizedTrainer(PenaltiesBeforeClipping, Trainer):
    pass


class PenalizedRegularizedTrainer(PenaltiesBeforeClipping, PenaltyTrainer):
    pass


class SquaredSum:
    """A third-party penalty without a closed-form gradient: ``s·(Σθ)²`` over the classifier's
    weight, returned as a Penalty with no ``add_grad``."""

    name = "squared_sum"

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @hookimpl
    def on_loss(self, run):
        weight = next(p.tensor for p in run.params if p.name == "classifier.weight")
        return Penalty("squared_sum_penalty", value=lambda: self.strength * weight.sum() ** 2)


def squared_sum(strength):
    return lambda model: strength * model.classifier.weight.sum() ** 2


def test_decoupled_weight_decay_equals_trainer_weight_decay_on_the_same_parameters():
    wd = 0.5
    model = bert()
    ours = train(model, callbacks=[Regularize([DecoupledWeightDecay(wd, kinds=HF_DECAY_KINDS)])],
                 weight_decay=0.0)
    reference = train(weight_decay=wd)
    assert names_of_kinds(model, *HF_DECAY_KINDS) == reference.get_decay_parameter_names(model)
    assert max_diff(ours.model, reference.model) < 1e-6
    no_decay = train(weight_decay=0.0)
    assert max_diff(no_decay.model, reference.model) > 1e-4  # the decay made a difference


def test_decoupled_weight_decay_by_default_leaves_the_embeddings_the_trainer_decays():
    model = bert()
    hf = set(Trainer(model=model, args=None).get_decay_parameter_names(model))
    assert hf - set(names_of_kinds(model, "weight")) == {
        "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight"}


def test_l2_without_clipping_equals_the_penalty_in_compute_loss():
    names = names_of_kinds(bert(), "weight")
    ours = train(callbacks=[reg := Regularize([L2(L2_STRENGTH)])], max_grad_norm=0.0, **SGD)
    written = train(trainer_class=PenaltyTrainer, max_grad_norm=0.0, **SGD,
                    trainer_kwargs={"penalty": l2_of(names, L2_STRENGTH)})
    assert max_diff(ours.model, written.model) < 1e-6
    assert max_diff(train(max_grad_norm=0.0, **SGD).model, written.model) > 1e-4
    assert reg.run.step == ours.state.global_step == 8


def test_l2_under_the_trainers_clipping_is_torch_weight_decay_of_the_clipped_gradient():
    # The Trainer clips before on_pre_optimizer_step: L2(λ) joins the clipped gradient, as
    # SGD(weight_decay=2λ) does, and is not the penalty in the loss (whose gradient is clipped).
    model = bert()
    ours = train(model, callbacks=[Regularize([L2(L2_STRENGTH, kinds=HF_DECAY_KINDS)])],
                 max_grad_norm=CLIP, **SGD)
    weight_decay = train(max_grad_norm=CLIP, weight_decay=2 * L2_STRENGTH, **SGD)
    assert max_diff(ours.model, weight_decay.model) < 1e-6
    in_the_loss = train(trainer_class=PenaltyTrainer, max_grad_norm=CLIP, **SGD,
                        trainer_kwargs={"penalty": l2_of(names_of_kinds(model, *HF_DECAY_KINDS),
                                                         L2_STRENGTH)})
    assert max_diff(ours.model, in_the_loss.model) > 1e-4


def test_penalties_before_clipping_give_the_penalty_in_compute_loss_with_clipping():
    names = names_of_kinds(bert(), "weight")
    ours = train(trainer_class=RegularizedTrainer, callbacks=[Regularize([L2(L2_STRENGTH)])],
                 max_grad_norm=CLIP, **SGD)
    written = train(trainer_class=PenaltyTrainer, max_grad_norm=CLIP, **SGD,
                    trainer_kwargs={"penalty": l2_of(names, L2_STRENGTH)})
    assert max_diff(ours.model, written.model) < 1e-6
    after_clipping = train(callbacks=[Regularize([L2(L2_STRENGTH)])], max_grad_norm=CLIP, **SGD)
    assert max_diff(after_clipping.model, written.model) > 1e-4


@pytest.mark.parametrize("clip", [0.0, CLIP])
def test_a_penalty_without_a_closed_form_gradient_is_differentiated_never_skipped(clip):
    # Without clipping the callback alone, with clipping PenaltiesBeforeClipping, give the
    # penalty written in compute_loss.
    strength = 0.05
    trainer_class = RegularizedTrainer if clip else Trainer
    ours = train(trainer_class=trainer_class, callbacks=[reg := Regularize([SquaredSum(strength)])],
                 max_grad_norm=clip, **SGD)
    written = train(trainer_class=PenaltyTrainer, max_grad_norm=clip, **SGD,
                    trainer_kwargs={"penalty": squared_sum(strength)})
    assert max_diff(ours.model, written.model) < 1e-6
    assert max_diff(train(max_grad_norm=clip, **SGD).model, written.model) > 1e-4
    assert float(reg.penalties()["squared_sum_penalty"]) == pytest.approx(
        float(squared_sum(strength)(ours.model).detach()))


class Averaging(Trainer):
    """The micro-batches' mean losses averaged over the step (the Trainer divides each by k;
    BERT's loss takes num_items_in_batch but its classification loss is a plain mean)."""

    loss_is_scaled_for_ga = False


class AveragingRegularized(PenaltiesBeforeClipping, Averaging):
    pass


@pytest.mark.parametrize("trainer_class,clip", [(Averaging, 0.0), (AveragingRegularized, CLIP)])
def test_gradient_accumulation_enters_the_penalty_once_per_optimizer_step(trainer_class, clip):
    # Two micro-batches of 4 per step = one batch of 8 with the penalty in compute_loss.
    names = names_of_kinds(bert(), "weight")
    accumulated = train(trainer_class=trainer_class, callbacks=[reg := Regularize([L2(0.05)])],
                        per_device_train_batch_size=4, gradient_accumulation_steps=2,
                        max_grad_norm=clip, **SGD)
    written = train(trainer_class=PenaltyTrainer, per_device_train_batch_size=8,
                    max_grad_norm=clip, **SGD, trainer_kwargs={"penalty": l2_of(names, 0.05)})
    assert max_diff(accumulated.model, written.model) < 1e-5
    assert reg.run.step == accumulated.state.global_step == 8


def test_penalties_before_clipping_and_the_callback_add_the_penalty_once():
    # on_pre_optimizer_step after the mixin's early addition adds nothing more.
    names = names_of_kinds(bert(), "weight")
    ours = train(trainer_class=RegularizedTrainer, callbacks=[Regularize([L2(L2_STRENGTH)])],
                 max_grad_norm=0.0, **SGD)
    written = train(trainer_class=PenaltyTrainer, max_grad_norm=0.0, **SGD,
                    trainer_kwargs={"penalty": l2_of(names, L2_STRENGTH)})
    assert max_diff(ours.model, written.model) < 1e-6


def test_the_data_set_has_enough_rows_for_eight_steps():
    assert len(Tokens()) == 32  # 4 steps of 8 an epoch, 2 epochs

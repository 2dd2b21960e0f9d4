"""Hugging Face, gradient accumulation with penalties that go through autograd (issue 16,
item 19).

``Regularize([...], fused=False)`` with L2, L1 and a third-party penalty without a closed
form, ``gradient_accumulation_steps=2``: the penalties enter once per optimizer step, as the
same penalties written by hand into ``compute_loss`` of one batch of the window's size. The
callback's own guard (one ``add_penalty_grads`` per step, also with
:class:`PenaltiesBeforeClipping`) and the once-per-window guard of
``StepWindow.collect_penalties`` keep them from entering twice.
"""

from __future__ import annotations

import pytest
import torch
from _hf_models import PenaltyTrainer, bert, max_diff, names_of_kinds, train
from _smooth_penalty import SmoothNorm, smooth_norm
from torch import nn
from transformers import Trainer

from regplug.adapters.transformers import PenaltiesBeforeClipping, Regularize
from regplug.plugins import L1, L2

K = 2  # micro-batches of 4 per optimizer step
L2_STRENGTH, L1_STRENGTH, SMOOTH_STRENGTH = 0.05, 1e-3, 0.3
CLIP = 0.05  # below the gradients' norm: the Trainer clips at every step
SGD = dict(optim="sgd", learning_rate=0.1)


class Averaging(Trainer):
    """The micro-batches' mean losses averaged over the step (the Trainer divides each by k;
    BERT's classification loss is a plain mean), so two micro-batches of 4 are one batch of 8."""

    loss_is_scaled_for_ga = False


class AveragingRegularized(PenaltiesBeforeClipping, Averaging):
    pass


def penalty_of(names: list[str], times: float = 1.0):
    """L2 + L1 + the smooth norm over the named weights, written by hand."""
    def penalty(model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        ws = [params[n] for n in names]
        squares = sum(w.square().sum() for w in ws)
        return times * (L2_STRENGTH * squares + L1_STRENGTH * sum(w.abs().sum() for w in ws)
                        + smooth_norm(SMOOTH_STRENGTH, squares))
    return penalty


@pytest.mark.parametrize("trainer_class,clip", [(Averaging, 0.0), (AveragingRegularized, CLIP)],
                         ids=["no-clipping", "penalties-before-clipping"])
def test_autograd_penalties_enter_once_per_accumulation_window(trainer_class, clip):
    """Tolerance 1e-5 on the weights (float32; the batch of 8 and the two micro-batches of 4
    sum the data loss in another order)."""
    names = names_of_kinds(bert(), "weight")
    plugins = [L2(L2_STRENGTH), L1(L1_STRENGTH), smooth := SmoothNorm(SMOOTH_STRENGTH)]
    accumulated = train(trainer_class=trainer_class,
                        callbacks=[reg := Regularize(plugins, fused=False)],
                        per_device_train_batch_size=4, gradient_accumulation_steps=K,
                        max_grad_norm=clip, **SGD)
    written = train(trainer_class=PenaltyTrainer, per_device_train_batch_size=8,
                    max_grad_norm=clip, **SGD, trainer_kwargs={"penalty": penalty_of(names)})
    assert max_diff(accumulated.model, written.model) < 1e-5
    assert reg.run.step == accumulated.state.global_step == 8
    assert smooth.calls == list(range(8))  # on_loss once per update, not per micro-batch
    # The test can fail: the penalties once per micro-batch (K times per update) end elsewhere.
    every_micro_batch = train(trainer_class=PenaltyTrainer, per_device_train_batch_size=8,
                              max_grad_norm=clip, **SGD,
                              trainer_kwargs={"penalty": penalty_of(names, times=K)})
    assert max_diff(every_micro_batch.model, written.model) > 1e-4

"""Proof by weights: each plugin in ``Trainer(callbacks=[Regularize([...])])`` ends with the
weights of the same regularizer written into the LightningModule by hand."""

from __future__ import annotations

import pytest
import torch
from _lightning_models import Manual, Tiny, fit, max_diff, weights_penalty
from torch import nn

import regplug
from regplug.adapters.lightning import Regularize
from regplug.plugins import L2, DecoupledWeightDecay, MaxNorm, ProximalL1

L2_STRENGTH = 1e-2
CLIP = 0.05  # well below the gradients' norm: clipping acts at every step


def test_l2_with_gradient_clipping_equals_the_penalty_in_training_step():
    ours, reg = Tiny(), Regularize([L2(L2_STRENGTH)])
    fit(ours, callbacks=[reg], gradient_clip_val=CLIP)
    written = Tiny(penalty=weights_penalty(L2_STRENGTH))
    fit(written, gradient_clip_val=CLIP)
    assert max_diff(ours, written) < 1e-6
    # The test can fail: the penalty's gradient joining after clipping (torch's own
    # weight_decay) ends elsewhere.
    after_clipping = Tiny(optimizer=lambda ps: torch.optim.SGD(
        [{"params": [p for n, p in ours_named(ps) if n.endswith("weight")],
          "weight_decay": 2 * L2_STRENGTH},
         {"params": [p for n, p in ours_named(ps) if n.endswith("bias")]}],
        lr=0.1, momentum=0.9))
    fit(after_clipping, gradient_clip_val=CLIP)
    assert max_diff(after_clipping, written) > 1e-4
    assert reg.run.step == 8


def ours_named(params):
    """Parameters of a Tiny model paired with their names (the order of named_parameters)."""
    names = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    return list(zip(names, list(params) if not isinstance(params, list) else params))


def test_adam_with_decoupled_weight_decay_equals_adamw_on_the_same_parameters():
    wd, lr = 0.1, 1e-2
    ours = Tiny(optimizer=lambda ps: torch.optim.Adam(ps, lr=lr))
    fit(ours, epochs=3, callbacks=[Regularize([DecoupledWeightDecay(wd)])])

    def adamw(params):
        named = ours_named(list(params))
        return torch.optim.AdamW([
            {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": wd},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}],
            lr=lr)

    reference = Tiny(optimizer=adamw)
    fit(reference, epochs=3)
    assert max_diff(ours, reference) < 1e-6
    plain_adam = Tiny(optimizer=lambda ps: torch.optim.Adam(ps, lr=lr))
    fit(plain_adam, epochs=3)
    assert max_diff(plain_adam, reference) > 1e-4  # the decay made a difference


def _soft_threshold_and_max_norm(l1: float, max_value: float, lr: float):
    def after_step(module: nn.Module) -> None:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                w = m.weight
                w.copy_(torch.sign(w) * torch.clamp(w.abs() - lr * l1, min=0.0))
                w.renorm_(2, 0, max_value)
    return after_step


def test_proximal_l1_and_max_norm_equal_the_projections_written_after_optimizer_step():
    l1, max_value, lr = 0.5, 0.6, 0.1
    ours = Tiny()
    fit(ours, callbacks=[Regularize([ProximalL1(l1), MaxNorm(max_value)])])
    written = Tiny(after_step=_soft_threshold_and_max_norm(l1, max_value, lr))
    fit(written)
    assert max_diff(ours, written) < 1e-6
    weight = ours.net[0].weight
    assert int((weight == 0).sum()) > 0  # exact zeros from the proximal step
    assert float(weight.norm(dim=1).max()) <= max_value + 1e-6


def test_accumulated_gradients_get_the_penalty_once_per_optimizer_step():
    ours, reg = Tiny(), Regularize([L2(L2_STRENGTH)])
    fit(ours, callbacks=[reg], accumulate_grad_batches=2, gradient_clip_val=CLIP)
    written = Tiny(penalty=weights_penalty(L2_STRENGTH))
    fit(written, accumulate_grad_batches=2, gradient_clip_val=CLIP)
    assert max_diff(ours, written) < 1e-6
    assert reg.run.step == 4  # 4 batches a epoch, 2 per step, 2 epochs
    per_micro_batch = Tiny(penalty=weights_penalty(L2_STRENGTH / 2))  # half per micro-batch
    fit(per_micro_batch, accumulate_grad_batches=2, gradient_clip_val=CLIP)
    assert max_diff(per_micro_batch, written) > 1e-5


def test_bf16_mixed_precision_matches_its_hand_written_reference():
    ours = Tiny()
    fit(ours, callbacks=[Regularize([L2(L2_STRENGTH)])], precision="bf16-mixed",
        gradient_clip_val=CLIP)
    written = Tiny(penalty=weights_penalty(L2_STRENGTH))
    fit(written, precision="bf16-mixed", gradient_clip_val=CLIP)
    assert max_diff(ours, written) < 1e-6
    assert ours.net[0].weight.dtype == torch.float32


class SquaredSumPenalty(regplug.Plugin):
    """A third-party penalty without a closed-form gradient: only its value."""

    name = "squared_sum"

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @regplug.hookimpl
    def on_loss(self, run):
        params = run.parameters()
        return regplug.Penalty("squared_sum",
                               value=lambda: self.strength * run.ops.sum_squares(params))


@pytest.mark.parametrize("plugins,fused", [
    ([SquaredSumPenalty(L2_STRENGTH)], True),
    ([L2(L2_STRENGTH)], False),
], ids=["penalty-without-gradient", "fused-false"])
def test_a_penalty_through_autograd_equals_the_penalty_in_training_step(plugins, fused):
    ours, reg = Tiny(), Regularize(plugins, fused=fused)
    fit(ours, callbacks=[reg], gradient_clip_val=CLIP, precision="bf16-mixed")
    written = Tiny(penalty=weights_penalty(L2_STRENGTH))
    fit(written, gradient_clip_val=CLIP, precision="bf16-mixed")
    assert max_diff(ours, written) < 1e-6
    unregularized = Tiny()
    fit(unregularized, gradient_clip_val=CLIP, precision="bf16-mixed")
    assert max_diff(unregularized, written) > 1e-4


def test_manual_optimization_equals_the_hand_written_manual_step():
    ours = Manual()
    fit(ours, callbacks=[Regularize([L2(L2_STRENGTH), MaxNorm(0.6)])])
    written = Manual(penalty=weights_penalty(L2_STRENGTH),
                     after_step=_soft_threshold_and_max_norm(0.0, 0.6, 0.1))
    fit(written)
    assert max_diff(ours, written) < 1e-6


def test_several_optimizers_one_regularize_each_act_on_their_own_parameters():
    ours = Manual(two=True)
    first, second = Regularize([L2(L2_STRENGTH)], optimizer=0), Regularize([MaxNorm(0.6)],
                                                                          optimizer=1)
    fit(ours, callbacks=[first, second])

    def penalty_on_first(module):  # penalty for optimizer 0's layer, max-norm for 1's
        return weights_penalty(L2_STRENGTH)(module) if module is written.net[0] else 0.0

    def max_norm_on_second(module):
        if module is written.net[2]:
            module.weight.renorm_(2, 0, 0.6)

    written = Manual(two=True, penalty=penalty_on_first, after_step=max_norm_on_second)
    fit(written)
    assert max_diff(ours, written) < 1e-6
    assert first.run.step == second.run.step == 8
    # each run holds its optimizer's parameters only
    assert [p.name for p in first.run.params] == ["net.0.weight", "net.0.bias"]
    assert [p.name for p in second.run.params] == ["net.2.weight", "net.2.bias"]

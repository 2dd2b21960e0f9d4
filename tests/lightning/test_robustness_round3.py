"""The Lightning callback's corner cases of robustness round 3 (issue 16): accumulation with
short last windows and autograd penalties, one callback in two fits, a checkpoint written
without Regularize, parameter groups added during the fit."""

from __future__ import annotations

import pytest
import torch
from _lightning_models import Tiny, data, fit, max_diff, trainer, weights_penalty
from lightning.pytorch.callbacks import Callback

import regplug
from regplug.adapters.lightning import Regularize
from regplug.plugins import L2, EarlyStopping, MaxNorm

L2_STRENGTH = 5e-2


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


def _fit_on(model, loader, **kwargs):
    t = trainer(2, **kwargs)
    t.fit(model, loader)
    return t


# -- items 8 and 19: accumulation, short last windows, autograd penalties ----------------------
@pytest.mark.parametrize("plugins,fused", [
    (lambda: [L2(L2_STRENGTH)], True),
    (lambda: [L2(L2_STRENGTH)], False),
    (lambda: [SquaredSumPenalty(L2_STRENGTH)], True),
], ids=["fused", "fused=False", "third-party-penalty"])
@pytest.mark.parametrize("batches,k", [(4, 2), (8, 3), (4, 3), (5, 4)],
                         ids=["windows-2-2", "windows-3-3-2", "windows-3-1", "windows-4-1"])
def test_accumulation_equals_the_penalty_in_training_step_also_in_a_short_last_window(
        plugins, fused, batches, k):
    """Lightning divides each micro-batch's loss by k, a short last window's too: the penalty
    written in training_step enters a window of n micro-batches at n/k — and so does
    regplug's, once per window whatever the penalty's way into the gradients."""
    loader = data(n=8 * batches, batch=8)
    ours, reg = Tiny(), Regularize(plugins(), fused=fused)
    _fit_on(ours, loader, callbacks=[reg], accumulate_grad_batches=k)
    written = Tiny(penalty=weights_penalty(L2_STRENGTH))
    _fit_on(written, loader, accumulate_grad_batches=k)
    assert max_diff(ours, written) < 1e-6
    windows = -(-batches // k)
    assert reg.run.step == 2 * windows


class FullPenaltyInTheShortWindow(Tiny):
    """The penalty at full strength in the last window (2 of 8 micro-batches, k = 3): what
    regplug added before, 2.1e-2 apart in the issue."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        factor = 1.5 if batch_idx >= 6 else 1.0
        return (torch.nn.functional.cross_entropy(self(x), y)
                + factor * weights_penalty(L2_STRENGTH)(self))


def test_the_short_window_scaling_is_what_the_equality_above_measures():
    loader = data(n=64, batch=8)
    ours = Tiny()
    _fit_on(ours, loader, callbacks=[Regularize([L2(L2_STRENGTH)])], accumulate_grad_batches=3)
    full = FullPenaltyInTheShortWindow()
    _fit_on(full, loader, accumulate_grad_batches=3)
    assert max_diff(ours, full) > 1e-5


# -- item 6: one callback in two fits ---------------------------------------------------------
class StartsAnotherFit(Callback):
    def __init__(self, other_trainer, other_model) -> None:
        self.other_trainer, self.other_model, self.error = other_trainer, other_model, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and self.error is None:
            try:
                self.other_trainer.fit(self.other_model, data())
            except regplug.UsageError as err:
                self.error = err


def test_a_callback_shared_by_two_fits_is_refused_and_both_stay_clean():
    shared = Regularize([L2(L2_STRENGTH), MaxNorm(0.6)])
    other_model = Tiny(seed=3)
    before = {k: v.clone() for k, v in other_model.state_dict().items()}
    other = trainer(2, [shared])
    starter = StartsAnotherFit(other, other_model)
    ours = Tiny()
    first = fit(ours, callbacks=[shared, starter])
    assert starter.error is not None
    message = str(starter.error)
    assert "already in use by a running fit" in message and "\n" not in message
    written = Tiny(penalty=weights_penalty(L2_STRENGTH),
                   after_step=lambda m: [lin.weight.copy_(torch.renorm(lin.weight, 2, 0, 0.6))
                                         for lin in (m.net[0], m.net[2])])
    fit(written)
    assert max_diff(ours, written) < 1e-5  # the first fit was regularized throughout
    assert shared.run.step == first.global_step == 8 and not shared.clock.active
    for key, value in other_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for optimizer in [*first.optimizers, *other.optimizers]:  # no step hook left behind
        assert not optimizer._optimizer_step_post_hooks
    fit(Tiny(), callbacks=[shared])  # and the callback serves a next fit


# -- item 7: resuming from a checkpoint written without Regularize -----------------------------
def test_resuming_from_a_checkpoint_without_regularize_state_warns_and_keeps_lightnings_epoch(
        tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = Tiny()
    fit(first, epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="{epoch}",
                                                    save_top_k=-1)],
        validate=True, enable_checkpointing=True)
    reg = Regularize([L2(L2_STRENGTH), EarlyStopping(patience=5)])
    t = trainer(4, [reg])
    with pytest.warns(regplug.RegplugWarning, match=r"resumes at epoch 2 \(step 8\).*holds no "
                                                    r"state of Regularize"):
        t.fit(Tiny(), data(), data(seed=1), ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert reg.run.epoch == 4 == t.current_epoch  # regplug counted from Lightning's epoch
    assert reg.run.step == 16 == t.global_step
    assert len(reg.history["val_loss"]) == 2  # epochs 3 and 4


# -- item 5: a parameter group added during the fit (progressive unfreezing) -------------------
class Unfreeze(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            trainer.optimizers[0].add_param_group({"params": list(pl_module.net[0].parameters())})


class HeadFirst(Tiny):
    def configure_optimizers(self):
        return torch.optim.SGD(self.net[2].parameters(), lr=0.1)


def test_a_parameter_group_added_during_the_fit_gets_max_norm_from_its_first_step():
    model = HeadFirst()
    with torch.no_grad():
        model.net[0].weight.mul_(10.0)
    fit(model, callbacks=[Unfreeze(), Regularize([MaxNorm(0.6)])])
    assert float(model.net[0].weight.norm(dim=1).max()) <= 0.6 + 1e-5


# -- item 17: nothing to train ----------------------------------------------------------------
def test_a_model_with_nothing_trainable_is_refused_in_one_line():
    model = Tiny()
    model.requires_grad_(False)
    with pytest.raises(regplug.UsageError, match=r"nothing to train") as caught:
        fit(model, callbacks=[Regularize([L2(L2_STRENGTH)])])
    assert "\n" not in str(caught.value)

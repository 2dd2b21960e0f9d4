"""Regularize as a Lightning callback: epoch logs, stop votes, restore, checkpoints, logging,
and the misuse it refuses."""

from __future__ import annotations

import pytest
import torch
from _lightning_models import Manual, Tiny, data, fit, trainer

import regplug
from regplug.adapters.lightning import Regularize
from regplug.errors import UnsupportedPluginError, UsageError
from regplug.plugins import L2, EarlyStopping, OverfitBatch

# val_loss per epoch: best at epoch 1 (0-based), then worse; patience 2 stops at epoch 3.
SCRIPTED = [1.0, 0.5, 0.7, 0.8, 0.9, 1.0]


def test_early_stopping_stops_the_trainer_and_restores_the_best_epoch_bit_for_bit():
    model, stopper = Tiny(val_losses=SCRIPTED), EarlyStopping(patience=2)
    reg = Regularize([L2(1e-3), stopper])
    t = fit(model, epochs=6, callbacks=[reg], validate=True)
    assert t.current_epoch == 4  # epochs 0..3 ran; the stop came at the end of epoch 3
    assert len(model.snapshots) == 4
    assert stopper.best_epoch == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, model.snapshots[1][name]), name
    assert not torch.equal(model.snapshots[3]["net.0.weight"], model.snapshots[1]["net.0.weight"])
    assert [r.source for r in reg.stop_requests] == ["early_stopping"]
    assert reg.history["val_loss"] == pytest.approx(SCRIPTED[:4])


def test_epoch_logs_come_from_the_trainer_and_penalties_are_logged_through_lightning():
    reg = Regularize([L2(1e-3)])
    t = fit(Tiny(), epochs=2, callbacks=[reg], validate=True)
    assert set(reg.history) >= {"val_loss", "l2_penalty"}
    assert len(reg.history["l2_penalty"]) == 2
    assert float(t.callback_metrics["l2_penalty"]) == pytest.approx(reg.history["l2_penalty"][-1])
    expected = 1e-3 * sum(float(m.weight.pow(2).sum()) for m in t.lightning_module.net
                          if isinstance(m, torch.nn.Linear))
    assert reg.history["l2_penalty"][-1] == pytest.approx(expected, rel=1e-5)


def test_a_stop_vote_sets_should_stop_at_that_epoch():
    class StopAt(regplug.Plugin):
        @regplug.hookimpl
        def on_epoch_end(self, run, epoch, logs):
            if epoch == 1:
                run.stop("enough", source=self.name)

    t = fit(Tiny(), epochs=5, callbacks=[Regularize([StopAt()])])
    assert t.should_stop and t.current_epoch == 2


def _checkpoints(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    return ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1,
                           every_n_epochs=1)


def test_resuming_from_a_lightning_checkpoint_equals_the_uninterrupted_run(tmp_path):
    def plugins():
        return [L2(1e-2), EarlyStopping(patience=10)]

    def adam(ps):
        return torch.optim.Adam(ps, lr=1e-2)

    whole, whole_reg = Tiny(optimizer=adam), Regularize(plugins())
    fit(whole, epochs=4, callbacks=[whole_reg], validate=True)

    first = Tiny(optimizer=adam)
    fit(first, epochs=2, callbacks=[Regularize(plugins()), _checkpoints(tmp_path)],
        validate=True, enable_checkpointing=True)
    resumed, resumed_reg = Tiny(seed=7, optimizer=adam), Regularize(plugins())
    t = trainer(4, [resumed_reg], enable_checkpointing=False)
    t.fit(resumed, data(), data(seed=1), ckpt_path=str(tmp_path / "epoch=1.ckpt"))

    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_reg.history == whole_reg.history
    assert resumed_reg.run.step == whole_reg.run.step == 16
    assert resumed_reg.manager.plugins[1].best_epoch == whole_reg.manager.plugins[1].best_epoch


def test_manual_optimization_with_loss_backward_is_refused_before_the_update():
    model = Manual(raw_backward=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError, match=r"self\.manual_backward\(loss\)"):
        fit(model, callbacks=[Regularize([L2(1e-3)])])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_several_optimizers_without_an_index_are_refused_at_fit_start():
    with pytest.raises(UsageError, match=r"2 optimizers.*optimizer=i"):
        fit(Manual(two=True), callbacks=[Regularize([L2(1e-3)])])
    with pytest.raises(UsageError, match=r"optimizer=2, but the LightningModule has 2"):
        fit(Manual(two=True), callbacks=[Regularize([L2(1e-3)], optimizer=2)])


def test_lbfgs_evaluating_the_closure_several_times_is_refused():
    model = Tiny(optimizer=lambda ps: torch.optim.LBFGS(ps, lr=0.1, max_iter=3))
    with pytest.raises(UsageError, match="LBFGS evaluated Lightning's closure more than once"):
        fit(model, callbacks=[Regularize([L2(1e-3)])])


@pytest.mark.parametrize("kwargs,match", [
    (dict(fused=1), "argument 'fused' must be True or False"),
    (dict(optimizer=-1), "'optimizer' must be None or the index"),
    (dict(optimizer=True), "'optimizer' must be None or the index"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(TypeError, match=match):
        Regularize([L2(1e-3)], **kwargs)


def test_a_plugin_needing_trial_training_is_refused_with_the_way_to_run_it():
    with pytest.raises(UnsupportedPluginError, match=r"regplug\.adapters\.torch\.attach"):
        Regularize([OverfitBatch(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))])

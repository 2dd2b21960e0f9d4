"""Freeze in the Lightning callback: frozen weights bit for bit, unfreezing equals
``requires_grad_`` by hand at that epoch, and it coexists with Lightning's BaseFinetuning
(regplug adds no parameter group)."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from _lightning_models import Tiny, fit, max_diff
from lightning.pytorch.callbacks import BaseFinetuning

from regplug.adapters.lightning import Regularize
from regplug.plugins import Freeze


def _adamw(params):
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)


class ByHand(L.Callback):
    """The reference: the first layer's requires_grad switched by hand."""

    def on_train_start(self, trainer, module):
        module.net[0].requires_grad_(False)

    def on_train_epoch_start(self, trainer, module):
        module.net[0].requires_grad_(trainer.current_epoch >= 1)


def test_frozen_then_exactly_as_unfrozen_by_hand():
    ours = Tiny(optimizer=_adamw)
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    fit(ours, epochs=3, callbacks=[Regularize([Freeze(1, include="net.0.*")])])
    first = ours.snapshots[0]
    assert torch.equal(first["net.0.weight"], start["net.0.weight"])
    assert torch.equal(first["net.0.bias"], start["net.0.bias"])
    assert not torch.equal(first["net.2.weight"], start["net.2.weight"])
    reference = Tiny(optimizer=_adamw)
    fit(reference, epochs=3, callbacks=[ByHand()])
    assert max_diff(ours, reference) == 0.0
    assert all(p.requires_grad for p in ours.parameters())


class HeadFrozenForOneEpoch(BaseFinetuning):
    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.net[2])

    def finetune_function(self, pl_module, current_epoch, optimizer):
        if current_epoch == 1:
            self.make_trainable(pl_module.net[2])


def test_coexists_with_lightning_base_finetuning():
    model = Tiny(optimizer=_adamw)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = fit(model, epochs=3, callbacks=[HeadFrozenForOneEpoch(),
                                             Regularize([Freeze(2, include="net.0.weight")])])
    # (net.0.bias trains throughout: in epoch 0 it is all that trains)
    epoch0, epoch1, epoch2 = model.snapshots
    assert torch.equal(epoch0["net.2.weight"], start["net.2.weight"])   # BaseFinetuning's
    assert torch.equal(epoch1["net.0.weight"], start["net.0.weight"])   # regplug's
    assert not torch.equal(epoch1["net.2.weight"], start["net.2.weight"])
    assert not torch.equal(epoch2["net.0.weight"], start["net.0.weight"])
    assert len(trainer.optimizers[0].param_groups) == 1  # no group added

"""EMA and SWA in the Lightning Trainer equal torch.optim.swa_utils.AveragedModel, validate on
the averages when asked (the logged val_loss is theirs), and resume from a checkpoint."""

from __future__ import annotations

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from _lightning_models import Tiny, trainer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from regplug.adapters.lightning import Regularize
from regplug.plugins import EMA, SWA


def loader(n: int = 400, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = (x[:, :4].sum(dim=1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)  # 25 steps


def assert_same_params(a, b, *, rtol=1e-6, atol=1e-7):
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_ema_equals_averaged_model_after_200_steps():
    reference = Tiny()
    averaged = AveragedModel(reference, multi_avg_fn=get_ema_multi_avg_fn(0.95))
    reference.after_step = averaged.update_parameters
    trainer(8).fit(reference, loader())
    ours = Tiny()
    reg = Regularize([EMA(0.95)])
    trainer(8, [reg]).fit(ours, loader())
    assert reg.run.step == 200
    assert_same_params(ours, averaged.module)


class _SwaByHand(L.Callback):
    def __init__(self, averaged: AveragedModel, start: int) -> None:
        self.averaged, self.start = averaged, start

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch >= self.start:
            self.averaged.update_parameters(pl_module)


def test_swa_equals_averaged_model_updated_at_each_epoch_end_from_start():
    reference = Tiny()
    averaged = AveragedModel(reference)
    trainer(8, [_SwaByHand(averaged, 3)]).fit(reference, loader())
    ours, swa = Tiny(), SWA(start=3)
    trainer(8, [Regularize([swa])]).fit(ours, loader())
    assert swa.averaged == 5
    assert_same_params(ours, averaged.module, rtol=1e-5, atol=1e-6)


def test_validation_runs_on_the_average():
    ours, ema = Tiny(), EMA(0.9, evaluate_on_average=True, keep_raw=True)
    t = trainer(3, [Regularize([ema])])
    val = loader(64, seed=1)
    t.fit(ours, loader(), val)
    logged = float(t.callback_metrics["val_loss"])
    x, y = val.dataset.tensors
    with torch.no_grad():
        raw = float(F.cross_entropy(ours(x), y))  # keep_raw: the model kept its weights
        for name, p in ours.named_parameters():
            p.copy_(torch.from_numpy(ema.averages()[name]))
        on_average = float(F.cross_entropy(ours(x), y))
    assert abs(logged - on_average) < 1e-6
    assert abs(logged - raw) > 1e-4  # the test can fail: the raw weights score otherwise


def test_resume_from_a_lightning_checkpoint_continues_the_average(tmp_path):
    whole, ema = Tiny(), EMA(0.9, keep_raw=True)
    trainer(4, [Regularize([ema])]).fit(whole, loader())
    first = Tiny()
    t = trainer(2, [Regularize([EMA(0.9, keep_raw=True)])])
    t.fit(first, loader())
    t.save_checkpoint(tmp_path / "two.ckpt")
    resumed, again = Tiny(seed=3), EMA(0.9, keep_raw=True)
    trainer(4, [Regularize([again])]).fit(resumed, loader(), ckpt_path=tmp_path / "two.ckpt")
    for name, value in ema.averages().items():
        assert (again.averages()[name] == value).all(), name

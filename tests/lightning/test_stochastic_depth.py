"""DropoutSchedule drives stochastic depth through the Lightning callback: the rate each
StochasticDepth/DropPath module reads inside the step follows the schedule, epoch by epoch."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from _lightning_models import trainer
from _stochastic_depth import ResidualNet
from torch.utils.data import DataLoader, TensorDataset

from regplug import Linear
from regplug.adapters.lightning import Regularize
from regplug.plugins import DropoutSchedule


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = ResidualNet()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_rate_read_inside_the_step_follows_the_schedule():
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(4000, 4, generator=g),
                                      torch.randint(0, 2, (4000,), generator=g)),
                        batch_size=2000, shuffle=False)
    module = Module()
    plugin = DropoutSchedule(Linear(0.0, 0.4, span=2, per="epoch"),
                             layers=["StochasticDepth", "DropPath"])
    trainer(3, [Regularize([plugin])]).fit(module, loader)
    read = module.net.read
    assert [r[0] for r in read] == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4])
    assert [r[2] for r in read] == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4])
    assert read[-1][1] == pytest.approx(0.4, abs=0.04)
    assert module.net.sd.p == 0.0  # given back at the end

"""DropoutSchedule drives stochastic depth through the Hugging Face callback: the rate each
StochasticDepth/DropPath module reads inside the step follows the schedule, epoch by epoch."""

from __future__ import annotations

import pytest
import torch
from _hf_models import train
from _stochastic_depth import ResidualNet

from regplug import Linear
from regplug.adapters.transformers import Regularize
from regplug.plugins import DropoutSchedule


class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 1000) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def test_the_rate_read_inside_the_step_follows_the_schedule():
    model = ResidualNet()
    plugin = DropoutSchedule(Linear(0.0, 0.4, span=2, per="epoch"),
                             layers=["StochasticDepth", "DropPath"])
    train(model, train_dataset=Rows(), callbacks=[Regularize([plugin])], num_train_epochs=3,
          per_device_train_batch_size=500)
    read = model.read
    assert [r[0] for r in read] == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4])
    assert [r[2] for r in read] == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4])
    assert model.sd.p == 0.0  # given back at the end

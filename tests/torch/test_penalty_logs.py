"""What ``l2_penalty`` is in a PyTorch loop: the penalty at the weights the epoch ends with,
evaluated once at ``reg.epoch_end`` (the fused penalties are never evaluated in the steps);
Keras logs the mean over the epoch's steps instead (docs/plugins/penalties.md)."""

from __future__ import annotations

import pytest
import torch
from _torch_models import batches, make_model, weights_and_others
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import L2

STRENGTH = 0.05


def penalty(model: nn.Module) -> float:
    """``l2·Σθ²`` over the Linear weights (L2's default selection), in float64."""
    return STRENGTH * sum(float(w.detach().double().pow(2).sum())
                          for w in weights_and_others(model)[0])


def test_l2_penalty_is_the_value_at_the_epochs_end_weights_not_a_mean_over_its_steps():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    seen: list[float] = []  # the penalty at the weights of each step
    with attach(model, optimizer, [L2(STRENGTH)]) as reg:
        for epoch in range(2):
            for x, y in batches(3, seed=epoch):
                seen.append(penalty(model))
                optimizer.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x), y)).backward()
                optimizer.step()
            at_end = penalty(model)
            reg.epoch_end({"val_loss": 0.0})
            assert reg.history["l2_penalty"][-1] == pytest.approx(at_end, rel=1e-5)
            mean = sum(seen[-3:]) / 3
            assert abs(at_end - mean) > 100 * 1e-5 * at_end  # the two meanings differ here

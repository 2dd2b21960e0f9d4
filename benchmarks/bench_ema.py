"""EMA: what averaging the weights costs per optimizer step, next to torch's AveragedModel.

Over a ResNet-50 backbone's parameters (159 tensors, 23.5 M floats), side by side in one
process with interleaved repetitions, each step a training-mode call of the model (an
identity forward: it only fires the module hooks a real forward would) and an
``optimizer.step()`` whose update does nothing:

``regplug``
    ``EMA(decay)`` attached: the step's hooks and one ``torch._foreach_lerp_`` over the
    averages (the momentum brought to the step before the forward pass).
``AveragedModel``
    ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``
    and ``averaged.update_parameters(model)`` after each step — foreach too.

Before timing, both average the same 20 SGD steps and must agree to float noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from regplug.adapters.torch import attach
from regplug.plugins import EMA

from . import Result, load_now, result
from .bench_torch import (
    _NoUpdate,
    environment,
    interleaved,
    paired_ratio,
    resnet50_parameters,
    set_threads,
)

__all__ = ["run", "set_threads", "environment"]

DECAY = 0.999


class _Backbone(nn.Module):
    """ResNet-50's parameters behind an identity forward (the module hooks still fire)."""

    def __init__(self, width_divisor: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = resnet50_parameters(width_divisor)
        with torch.no_grad():
            for p in self.body.parameters():
                p.normal_(0.0, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _agree(width_divisor: int, steps: int = 20) -> float:
    """Both average the same SGD trajectory: the largest difference of their averages."""
    ours, theirs = _Backbone(width_divisor), _Backbone(width_divisor)
    grads = [torch.randn_like(p).mul_(1e-2) for p in ours.parameters()]
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    averaged = AveragedModel(theirs, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    ema = EMA(DECAY, keep_raw=True)
    x = torch.zeros(1)
    with attach(ours, opt_ours, [ema]):
        for _ in range(steps):
            for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                model(x)
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.grad = g.clone()
                opt.step()
            averaged.update_parameters(theirs)
    mine = ema.averages()
    diff = max(float((torch.from_numpy(mine[name]) - p.detach()).abs().max())
               for name, p in averaged.module.named_parameters())
    if diff > 1e-6:
        raise AssertionError(f"benchmark invalid: EMA and AveragedModel differ by {diff:.3g}")
    return diff


def bench(quick: bool) -> list[Result]:
    width = 4 if quick else 1
    diff = _agree(width)
    ours, theirs = _Backbone(width), _Backbone(width)
    opt_ours = _NoUpdate(list(ours.parameters()))
    opt_theirs = _NoUpdate(list(theirs.parameters()))
    averaged = AveragedModel(theirs, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    x = torch.zeros(1)

    def averaged_model() -> None:
        theirs(x)
        opt_theirs.step()
        averaged.update_parameters(theirs)

    def bare() -> None:
        theirs(x)
        opt_theirs.step()

    with attach(ours, opt_ours, [EMA(DECAY)]):
        def regplug() -> None:
            ours(x)
            opt_ours.step()

        steps: dict[str, Callable[[], object]] = {
            "regplug": regplug, "AveragedModel": averaged_model, "no averaging": bare}
        rounds = 3 if quick else 21
        samples = interleaved(steps, rounds=rounds, repeat=1 if quick else 5,
                              warmup=1 if quick else 3)
    params = list(ours.parameters())
    elements = sum(p.numel() for p in params)
    notes = [f"{len(params)} tensors, {elements / 1e6:.1f}M float32 elements (ResNet-50 "
             f"backbone{', channels / 4' if quick else ''}); decay {DECAY}; optimizer update "
             "a no-op, forward an identity",
             f"same averages as AveragedModel after 20 SGD steps: max |diff| {diff:.1e}",
             f"medians of {rounds} interleaved rounds; {load_now()}"]
    return [result("EMA update per step, ResNet-50-sized params",
                   regplug_s=statistics.median(samples["regplug"]),
                   baselines_s={"AveragedModel.update_parameters": statistics.median(
                       samples["AveragedModel"]),
                       "no averaging": statistics.median(samples["no averaging"])},
                   ratio=paired_ratio(samples["regplug"], samples["AveragedModel"]),
                   ratio_of="regplug / AveragedModel", at_most=1.1, notes=notes)]


def run(quick: bool) -> list[Result]:
    return bench(quick)


if __name__ == "__main__":
    from .run import format_table

    print(format_table(run(quick=False)))

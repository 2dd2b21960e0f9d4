"""DropoutSchedule in a PyTorch loop: the fraction of units each dropout layer really drops in
each training step (a forward hook on the layer, all-ones input) follows the schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regplug
from regplug import (
    Constant,
    Cosine,
    EarlyDropout,
    ExponentialRamp,
    LateDropout,
    Linear,
    LinearWarmup,
    Piecewise,
    Step,
)
from regplug.adapters.torch import attach
from regplug.plugins import DropoutSchedule

BATCH, CHANNELS = 32, 256  # inputs (32, 256, 2, 2, 2): 65,536 elements, 8,192 channels
CHANNEL_TYPES = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.FeatureAlphaDropout)
ALPHA_TYPES = (nn.AlphaDropout, nn.FeatureAlphaDropout)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Branches(nn.Module):
    """Each dropout layer gets its own all-ones input, shaped for its type."""

    def __init__(self, **drops: nn.Module) -> None:
        super().__init__()
        self.drops = nn.ModuleDict(drops)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for drop in self.drops.values():
            shaped = {nn.Dropout1d: x.flatten(2), nn.Dropout2d: x.flatten(3)}.get(type(drop), x)
            total = total + drop(shaped).mean()
        return self.scale * total


class DropMeter:
    """Forward hook: the fraction of units the layer dropped in each training forward pass.

    The input is all ones, so a dropped unit is a 0 (the scaled survivors are 1/(1-p)); for
    alpha dropout, a value below the survivors' one. The unit is an element, or a whole
    channel for channel-wise types (checked: every value of a channel is dropped or none).
    """

    def __init__(self, module: nn.Module) -> None:
        self.channel = isinstance(module, CHANNEL_TYPES)
        self.alpha = isinstance(module, ALPHA_TYPES)
        self.fractions: list[float] = []
        self.units = 0
        self.whole_channels = True
        module.register_forward_hook(self.measure)

    def measure(self, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if not module.training:
            return
        assert bool((inputs[0] == 1).all())
        out = output.detach()
        if self.channel:
            per_channel = out.flatten(2)
            self.whole_channels &= bool((per_channel == per_channel[..., :1]).all())
            units = per_channel[..., 0].flatten()
        else:
            units = out.flatten()
        dropped = units < units.max() if self.alpha else units == 0
        self.fractions.append(dropped.float().mean().item())
        self.units = units.numel()


def train(model: Branches, plugins: list, *, epochs: int, steps: int, reg_state=None,
          device: str = "cpu"):
    """The three-line loop; returns the attachment (closed)."""
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.ones(BATCH, CHANNELS, 2, 2, 2, device=device)
    with attach(model, opt, plugins) as reg:
        if reg_state is not None:
            reg.load_state_dict(reg_state)
        for _ in range(epochs):
            for _ in range(steps):
                opt.zero_grad()
                reg.loss(model(x) ** 2).backward()
                opt.step()
            reg.epoch_end({})
    return reg


def tolerance(p: float, units: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / units)  # 5 binomial standard deviations


def assert_follows(meter: DropMeter, rates: list[float]) -> None:
    """Step by step, the measured fraction is the rate: exactly 0 for rate 0, else within
    5 binomial standard deviations."""
    assert len(meter.fractions) == len(rates)
    for t, (measured, p) in enumerate(zip(meter.fractions, rates)):
        assert abs(measured - p) <= tolerance(p, meter.units), (t, measured, p)
    assert meter.whole_channels


def clock(epochs: int, steps: int) -> list[tuple[int, int]]:
    return [(epoch * steps + i, epoch) for epoch in range(epochs) for i in range(steps)]


@pytest.mark.parametrize("device", DEVICES)
def test_a_per_epoch_schedule_sets_the_fraction_dropped_in_every_training_step(device):
    model = Branches(zero=nn.Dropout(0.0), other=nn.Dropout(0.5))
    meters = {name: DropMeter(m) for name, m in model.drops.items()}
    schedule = Linear(0.0, 0.6, span=3, per="epoch")
    train(model, [DropoutSchedule(schedule, include="drops.zero")], epochs=4, steps=3,
          device=device)
    assert_follows(meters["zero"], [schedule(t, e) for t, e in clock(4, 3)])  # built with 0
    assert_follows(meters["other"], [0.5] * 12)  # not included: keeps its own rate


@pytest.mark.parametrize("device", DEVICES)
def test_a_per_step_schedule_changes_the_fraction_from_the_step_it_is_due(device):
    model = Branches(zero=nn.Dropout(0.0), spatial=nn.Dropout2d(0.3))
    meters = {name: DropMeter(m) for name, m in model.drops.items()}
    schedule = Linear(0.0, 0.66, span=11, per="step")  # 0.06 more at every step
    train(model, [DropoutSchedule(schedule, layers="Dropout")], epochs=3, steps=4, device=device)
    rates = [schedule(t, e) for t, e in clock(3, 4)]
    assert_follows(meters["zero"], rates)
    assert_follows(meters["spatial"], [0.3] * 12)  # another type: not selected
    late = [0.0] + rates[:-1]  # the schedule one step late would be told apart
    assert any(abs(m - p) > tolerance(p, meters["zero"].units)
               for m, p in zip(meters["zero"].fractions, late))


SCHEDULES = [
    Constant(0.3), LinearWarmup(0.5, warmup_steps=5), Linear(0.5, 0.1, span=2, per="epoch"),
    Cosine(0.0, 0.5, span=7, per="step"), Step(0.6, every=4, gamma=0.5, per="step"),
    Piecewise([0.1, 0.7, 0.2], boundaries=[1, 2], per="epoch"),
    ExponentialRamp(0.6, gamma=0.4, per="step"), EarlyDropout(0.4, cutoff=2, per="epoch"),
    LateDropout(0.4, cutoff=5, per="step"),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_every_schedule_is_followed_inside_the_training_steps(schedule):
    model = Branches(drop=nn.Dropout(0.0))
    meter = DropMeter(model.drops["drop"])
    train(model, [DropoutSchedule(schedule)], epochs=3, steps=3)
    assert_follows(meter, [schedule(t, e) for t, e in clock(3, 3)])


ALL_TYPES = dict(plain=nn.Dropout(0.0), d1=nn.Dropout1d(0.0), d2=nn.Dropout2d(0.0),
                 d3=nn.Dropout3d(0.0), alpha=nn.AlphaDropout(0.0),
                 feature_alpha=nn.FeatureAlphaDropout(0.0))


def test_every_bernoulli_dropout_type_is_scheduled_and_drops_its_own_unit():
    model = Branches(**{k: type(m)(0.0) for k, m in ALL_TYPES.items()})
    meters = {name: DropMeter(m) for name, m in model.drops.items()}
    train(model, [DropoutSchedule(LateDropout(0.4, cutoff=1, per="epoch"))], epochs=2, steps=2)
    for name in ("plain", "d1", "d2", "d3"):
        assert_follows(meters[name], [0.0, 0.0, 0.4, 0.4])  # whole channels for d1/d2/d3
    assert meters["d2"].units == BATCH * CHANNELS and meters["plain"].units == BATCH * CHANNELS * 8
    # Alpha dropout's rate means another formula (regplug.conventions.OTHER_DROPOUT): it is
    # never rescheduled, in torch as in Keras.
    for name in ("alpha", "feature_alpha"):
        assert_follows(meters[name], [0.0] * 4)


def test_the_layers_argument_selects_by_type_and_the_others_keep_their_rate():
    model = Branches(plain=nn.Dropout(0.2), d1=nn.Dropout1d(0.0), d2=nn.Dropout2d(0.0),
                     d3=nn.Dropout3d(0.0))
    meters = {name: DropMeter(m) for name, m in model.drops.items()}
    train(model, [DropoutSchedule(0.45, layers=["Dropout2d", "Dropout3d"])], epochs=1,
          steps=2)
    for name, rate in {"plain": 0.2, "d1": 0.0, "d2": 0.45, "d3": 0.45}.items():
        assert_follows(meters[name], [rate, rate])


def test_training_end_gives_every_module_back_its_built_rate():
    model = Branches(plain=nn.Dropout(0.2), d2=nn.Dropout2d(0.0), alpha=nn.AlphaDropout(0.1))
    meter = DropMeter(model.drops["d2"])
    train(model, [DropoutSchedule(Cosine(0.5, 0.3, span=3, per="step"))], epochs=1, steps=3)
    assert meter.fractions[0] == pytest.approx(0.5, abs=tolerance(0.5, meter.units))
    assert {k: m.p for k, m in model.drops.items()} == {"plain": 0.2, "d2": 0.0, "alpha": 0.1}


def test_a_resumed_loop_continues_the_schedule_from_the_checkpoint_clock():
    schedule = Piecewise([0.0, 0.2, 0.5], boundaries=[1, 2], per="epoch")
    first = Branches(drop=nn.Dropout(0.0))
    state = train(first, [DropoutSchedule(schedule)], epochs=2, steps=2).state_dict()
    resumed = Branches(drop=nn.Dropout(0.0))
    meter = DropMeter(resumed.drops["drop"])
    train(resumed, [DropoutSchedule(schedule)], epochs=1, steps=2, reg_state=state)
    assert_follows(meter, [0.5, 0.5])  # epoch 2 of the schedule, from the first batch on


def test_only_a_varying_schedule_puts_a_hook_on_the_forward_pass():
    def pre_hooks(plugin) -> int:
        model = Branches(drop=nn.Dropout(0.1))
        with attach(model, torch.optim.SGD(model.parameters(), lr=0.1), [plugin]):
            return len(model._forward_pre_hooks)

    assert pre_hooks(DropoutSchedule(0.3)) == 0
    assert pre_hooks(DropoutSchedule(LateDropout(0.3, cutoff=2, per="epoch"))) == 1
    assert pre_hooks(DropoutSchedule(LateDropout(0.3, cutoff=2, per="step"))) == 1


def test_a_selection_matching_no_module_warns_listing_the_dropout_modules():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Dropout2d(0.0))
    with pytest.warns(regplug.RegplugWarning, match=(
            r"DropoutSchedule: the selection \(layers=\['Dropout3d'\]\) matches none of the "
            r"model's dropout layers, so it changes nothing. Dropout layers found: '1' "
            r"\(Dropout, rate 0.5\), '2' \(Dropout2d, rate 0\).")):
        with attach(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    [DropoutSchedule(0.2, layers="Dropout3d")]):
            pass
    assert (model[1].p, model[2].p) == (0.5, 0.0)

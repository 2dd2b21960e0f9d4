"""torch's own semantics for what an update changes: a frozen parameter (requires_grad=False,
still in the optimizer) and a parameter without a gradient in this step are left alone by
every update plugin and by run.ops, as torch.optim leaves them alone."""

from __future__ import annotations

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, weights_and_others
from torch import nn

import regplug
from regplug.adapters.torch import attach
from regplug.plugins import L1, L2, DecoupledWeightDecay, MaxNorm, ProximalL1

criterion = nn.CrossEntropyLoss()


def frozen_first_layer(seed=0):
    model = make_model(seed)
    model[0].requires_grad_(False)  # fine-tuning: frozen, but still given to the optimizer
    return model


def train(model, opt, data, reg=None):
    for x, y in data:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss = reg.loss(loss) if reg is not None else loss
        loss.backward()
        opt.step()


class ShrinkAll(regplug.Plugin):
    """A third-party plugin: every parameter times 0.5 after each update, through run.ops."""

    @regplug.hookimpl
    def on_step(self, run):
        run.ops.scale_(run.parameters(), 0.5)


@pytest.mark.parametrize("plugin", [
    lambda: MaxNorm(0.1), lambda: ProximalL1(5.0), lambda: DecoupledWeightDecay(0.5),
    lambda: L2(0.5), lambda: L1(0.5), ShrinkAll,
], ids=["MaxNorm", "ProximalL1", "DecoupledWeightDecay", "L2", "L1", "run.ops.scale_"])
def test_a_frozen_layer_in_the_optimizer_is_left_exactly_as_it_was(plugin):
    model = frozen_first_layer()
    frozen = {k: v.clone() for k, v in model[0].state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with attach(model, opt, [plugin()]) as reg:
        train(model, opt, batches(4), reg)
    for name, value in model[0].state_dict().items():
        assert torch.equal(value, frozen[name]), name
    assert not torch.equal(model[2].weight, make_model(0)[2].weight)  # the rest did train


def test_adam_with_decoupled_weight_decay_equals_adamw_with_a_frozen_layer():
    ours, theirs = frozen_first_layer(), frozen_first_layer()
    weights, others = weights_and_others(theirs)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_theirs = torch.optim.AdamW([{"params": weights, "weight_decay": 0.1},
                                    {"params": others, "weight_decay": 0.0}], lr=1e-2)
    data = batches(10)
    with attach(ours, opt_ours, [DecoupledWeightDecay(0.1)]) as reg:
        train(ours, opt_ours, data, reg)
    train(theirs, opt_theirs, data)
    assert_same_weights(ours, theirs)


class TwoHeads(nn.Module):
    """A trunk and two heads; odd steps use head ``a`` only, so ``b`` gets no gradient."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Linear(8, 16)
        self.a = nn.Linear(16, 3)
        self.b = nn.Linear(16, 3)
        self.use_b = True

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return self.a(h) + self.b(h) if self.use_b else self.a(h)


def train_heads(model, opt, data, reg=None):
    for i, (x, y) in enumerate(data):
        model.use_b = i % 2 == 0
        opt.zero_grad()  # set_to_none: head b has no gradient in odd steps
        loss = criterion(model(x), y)
        loss = reg.loss(loss) if reg is not None else loss
        loss.backward()
        opt.step()


def test_adam_with_decoupled_weight_decay_equals_adamw_with_a_branch_unused_in_some_steps():
    ours, theirs = TwoHeads(), TwoHeads()
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-2)
    weights = [m.weight for m in (theirs.trunk, theirs.a, theirs.b)]
    biases = [m.bias for m in (theirs.trunk, theirs.a, theirs.b)]
    opt_theirs = torch.optim.AdamW([{"params": weights, "weight_decay": 0.1},
                                    {"params": biases, "weight_decay": 0.0}], lr=1e-2)
    data = batches(10)
    with attach(ours, opt_ours, [DecoupledWeightDecay(0.1)]) as reg:
        train_heads(ours, opt_ours, data, reg)
    train_heads(theirs, opt_theirs, data)
    assert_same_weights(ours, theirs)


@pytest.mark.parametrize("plugin", [lambda: MaxNorm(0.1), lambda: ProximalL1(0.01)],
                         ids=["MaxNorm", "ProximalL1"])
def test_a_parameter_without_a_gradient_in_a_step_is_not_projected_in_that_step(plugin):
    model = TwoHeads()
    unused = model.b.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y), = batches(1)
    with attach(model, opt, [plugin()]) as reg:
        model.use_b = False  # head b gets no gradient: SGD leaves it alone, so must regplug
        opt.zero_grad()
        reg.loss(criterion(model(x), y)).backward()
        opt.step()
    assert torch.equal(model.b.weight, unused)
    assert not torch.equal(model.a.weight, TwoHeads().a.weight)  # the used head was projected


def test_logged_penalty_leaves_frozen_parameters_out():
    model = frozen_first_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [L2(0.5), L1(0.25)]) as reg:
        train(model, opt, batches(2), reg)
        values = reg.penalties()
        reg.epoch_end({})
    trainable = [m.weight.detach() for m in (model[2], model[4])]
    expected_l2 = 0.5 * sum(float(w.pow(2).sum()) for w in trainable)
    expected_l1 = 0.25 * sum(float(w.abs().sum()) for w in trainable)
    assert float(values["l2_penalty"]) == pytest.approx(expected_l2, rel=1e-6)
    assert float(values["l1_penalty"]) == pytest.approx(expected_l1, rel=1e-6)
    assert reg.history["l2_penalty"] == [pytest.approx(expected_l2, rel=1e-6)]


def test_unfreezing_a_layer_later_brings_it_back_under_the_plugins():
    model = frozen_first_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen = model[0].weight.detach().clone()
    with attach(model, opt, [DecoupledWeightDecay(0.5)]) as reg:
        train(model, opt, batches(2), reg)
        assert torch.equal(model[0].weight, frozen)
        model[0].requires_grad_(True)
        train(model, opt, batches(1), reg)
    assert not torch.equal(model[0].weight, frozen)

"""attach() takes the optimizer wrappers trainers hand out (accelerate's AcceleratedOptimizer,
Lightning's LightningOptimizer) and hooks the torch optimizer inside; anything else it cannot
hook is refused with one line naming the type."""

from __future__ import annotations

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, weights_and_others
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import L2, DecoupledWeightDecay

criterion = nn.CrossEntropyLoss()
LAM = 0.01


def train_with_penalty_in_the_loss(model, data):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in data:
        opt.zero_grad()
        loss = criterion(model(x), y) + LAM * sum(w.pow(2).sum()
                                                  for w in weights_and_others(model)[0])
        loss.backward()
        opt.step()
    return model


@pytest.fixture
def accelerator():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    yield accelerate.Accelerator(cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_accelerated_optimizer_is_unwrapped_and_gives_the_penalty_in_the_loss(accelerator):
    from accelerate.optimizer import AcceleratedOptimizer

    data = batches(6)
    ours = make_model()
    model, opt = accelerator.prepare(ours, torch.optim.SGD(ours.parameters(), lr=0.05,
                                                           momentum=0.9))
    assert isinstance(opt, AcceleratedOptimizer)
    with attach(model, opt, [L2(LAM)]) as reg:
        assert reg.optimizer is opt.optimizer
        for x, y in data:
            opt.zero_grad()
            accelerator.backward(reg.loss(criterion(model(x), y)))
            opt.step()
        assert reg.run.step == len(data)
    assert_same_weights(ours, train_with_penalty_in_the_loss(make_model(), data))


def test_accelerated_adam_with_decoupled_weight_decay_equals_adamw(accelerator):
    data = batches(8)
    ours, theirs = make_model(), make_model()
    model, opt = accelerator.prepare(ours, torch.optim.Adam(ours.parameters(), lr=1e-2))
    weights, others = weights_and_others(theirs)
    adamw = torch.optim.AdamW([{"params": weights, "weight_decay": 0.1},
                               {"params": others, "weight_decay": 0.0}], lr=1e-2)
    with attach(model, opt, [DecoupledWeightDecay(0.1)]) as reg:
        for x, y in data:
            opt.zero_grad()
            accelerator.backward(reg.loss(criterion(model(x), y)))
            opt.step()
    for x, y in data:
        adamw.zero_grad()
        criterion(theirs(x), y).backward()
        adamw.step()
    assert_same_weights(ours, theirs)


def test_lightning_optimizer_is_unwrapped():
    core = pytest.importorskip("lightning.pytorch.core.optimizer")
    data = batches(6)
    ours = make_model()
    inner = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    wrapped = core.LightningOptimizer(inner)
    assert isinstance(wrapped, torch.optim.Optimizer)  # it imitates the class it wraps
    with attach(ours, wrapped, [L2(LAM)]) as reg:
        assert reg.optimizer is inner
        for x, y in data:
            wrapped.zero_grad()  # the wrapper's calls reach the hooked optimizer
            reg.loss(criterion(ours(x), y)).backward()
            inner.step()
    assert_same_weights(ours, train_with_penalty_in_the_loss(make_model(), data))


class NotInitialised(torch.optim.SGD):
    """An Optimizer by type whose __init__ never ran torch's: no step hooks to attach to."""

    def __init__(self, params):
        self.param_groups = [{"params": list(params), "lr": 0.1}]


@pytest.mark.parametrize("make", [lambda m: NotInitialised(m.parameters()), lambda m: object(),
                                  lambda m: "adam"],
                         ids=["Optimizer without hooks", "object", "str"])
def test_an_optimizer_regplug_cannot_hook_is_refused_in_one_line_naming_its_type(make):
    model = make_model()
    optimizer = make(model)
    with pytest.raises(TypeError) as err:
        attach(model, optimizer, [L2(LAM)])
    message = str(err.value)
    assert "\n" not in message
    assert f"got {type(optimizer).__name__}," in message and ".optimizer" in message

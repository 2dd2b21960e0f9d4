"""EMA and SWA in a PyTorch loop equal torch.optim.swa_utils.AveragedModel, validate on the
averages when asked, leave the average in the model, and resume bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from _torch_models import batches, make_model
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from regplug.adapters.torch import attach
from regplug.adapters.torch._compat import has_forward_hooks
from regplug.errors import UsageError
from regplug.plugins import EMA, SWA, EarlyStopping

criterion = nn.CrossEntropyLoss()
STEPS = 200


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def step(model, opt, reg, x, y):
    opt.zero_grad()
    loss = reg.loss(criterion(model(x), y)) if reg is not None else criterion(model(x), y)
    loss.backward()
    opt.step()


def ema_by_hand(model, data, decay):
    """The anchor: AveragedModel with get_ema_multi_avg_fn, updated after every step."""
    opt = sgd(model)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    for x, y in data:
        step(model, opt, None, x, y)
        averaged.update_parameters(model)
    return averaged.module, model


def assert_close_params(a, b, *, rtol=1e-6, atol=1e-7):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_ema_equals_averaged_model_after_200_steps(decay):
    data = batches(STEPS)
    expected, raw_expected = ema_by_hand(make_model(norm=True), data, decay)
    model = make_model(norm=True)
    opt = sgd(model)
    ema = EMA(decay, keep_raw=True)
    with attach(model, opt, [ema]) as reg:
        for x, y in data:
            step(model, opt, reg, x, y)
    assert_close_params(model, raw_expected, rtol=0, atol=0)  # keep_raw: the trained weights
    averages = ema.averages()
    for name, p in expected.named_parameters():
        torch.testing.assert_close(torch.from_numpy(averages[name]), p.detach(), rtol=1e-6,
                                   atol=1e-7)


def test_the_model_holds_the_average_at_the_end():
    data = batches(50)
    expected, _ = ema_by_hand(make_model(), data, 0.95)
    model = make_model()
    opt = sgd(model)
    with attach(model, opt, [EMA(0.95)]) as reg:
        for x, y in data:
            step(model, opt, reg, x, y)
    assert_close_params(model, expected)


def test_ema_without_reg_loss_still_copies_at_the_first_update():
    # No penalty: a loop that never calls reg.loss; optimizer.step() brings the momentum to
    # each update's step, and no hook sits on the model's forward pass.
    data = batches(20)
    expected, _ = ema_by_hand(make_model(), data, 0.9)
    model = make_model()
    opt = sgd(model)
    with attach(model, opt, [EMA(0.9)]):
        assert not has_forward_hooks(model)
        for x, y in data:
            opt.zero_grad()
            criterion(model(x), y).backward()
            opt.step()
    assert_close_params(model, expected)


def test_ema_in_a_closure_that_never_calls_reg_loss():
    data = batches(20)
    expected, _ = ema_by_hand(make_model(), data, 0.9)
    model = make_model()
    opt = sgd(model)
    with attach(model, opt, [EMA(0.9)]):
        for x, y in data:
            def closure(x=x, y=y):
                opt.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    assert_close_params(model, expected)


def test_swa_equals_averaged_model_updated_each_epoch_from_start():
    data, epochs, start = batches(20), 10, 3   # 200 steps
    model_a = make_model()
    opt_a = sgd(model_a)
    swa_model = AveragedModel(model_a)
    for epoch in range(epochs):
        for x, y in data:
            step(model_a, opt_a, None, x, y)
        if epoch >= start:
            swa_model.update_parameters(model_a)
    model = make_model()
    opt = sgd(model)
    swa = SWA(start=start)
    with attach(model, opt, [swa]) as reg:
        for _ in range(epochs):
            for x, y in data:
                step(model, opt, reg, x, y)
            reg.epoch_end({})
    assert swa.averaged == epochs - start
    assert_close_params(model, swa_model.module, rtol=1e-5, atol=1e-6)


def test_validation_runs_on_the_average_and_training_on_the_raw_weights():
    data = batches(30)
    model = make_model()
    opt = sgd(model)
    x_val, y_val = batches(1, seed=7)[0]
    seen = {}
    ema = EMA(0.9, evaluate_on_average=True, keep_raw=True)
    stop = EarlyStopping(monitor="val_loss", patience=100)
    with attach(model, opt, [ema, stop]) as reg:
        for x, y in data:
            step(model, opt, reg, x, y)
        raw = copy.deepcopy(model.state_dict())
        with reg.validation(), torch.no_grad():
            seen["val"] = criterion(model(x_val), y_val).item()
            seen["weights"] = copy.deepcopy(model.state_dict())
        after = model.state_dict()
        reg.epoch_end({"val_loss": seen["val"]})
    for name, value in raw.items():
        assert torch.equal(after[name], value), name  # the raw weights are back, exactly
    averages = ema.averages()
    for name, array in averages.items():
        assert torch.equal(seen["weights"][name], torch.from_numpy(array)), name
    assert stop.best == seen["val"]  # early stopping saw the average's metric


def test_resume_from_a_checkpoint_is_bit_identical():
    data = batches(40)

    def run(split):
        torch.manual_seed(0)
        model = make_model()
        opt = sgd(model)
        ema = EMA(0.9, keep_raw=True)
        with attach(model, opt, [ema]) as reg:
            for x, y in data[:split]:
                step(model, opt, reg, x, y)
            state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
                     reg.state_dict())
        if split == len(data):
            return ema.averages()
        model = make_model(seed=5)
        model.load_state_dict(state[0])
        opt = sgd(model)
        opt.load_state_dict(state[1])
        ema = EMA(0.9, keep_raw=True)
        with attach(model, opt, [ema]) as reg:
            reg.load_state_dict(state[2])
            for x, y in data[split:]:
                step(model, opt, reg, x, y)
        return ema.averages()

    whole, resumed = run(len(data)), run(17)
    for name in whole:
        assert (whole[name] == resumed[name]).all(), name


def test_swa_resume_keeps_the_count():
    data = batches(5)
    model = make_model()
    opt = sgd(model)
    swa = SWA(start=0)
    with attach(model, opt, [swa]) as reg:
        for _ in range(3):
            for x, y in data:
                step(model, opt, reg, x, y)
            reg.epoch_end({})
        state = reg.state_dict()
    again = SWA(start=0)
    with attach(model, sgd(model), [again]) as reg:
        reg.load_state_dict(state)
        assert again.averaged == 3


def test_a_parameter_that_changes_shape_is_refused_in_one_line():
    model = make_model()
    opt = sgd(model)
    with pytest.raises(UsageError, match=r"^EMA: parameter '0.weight' changed shape .* new one"):
        with attach(model, opt, [EMA(0.9)]) as reg:
            step(model, opt, reg, *batches(1)[0])
            with torch.no_grad():
                model[0].weight.data = torch.zeros(4, 8)
            reg.epoch_end({})


def test_a_checkpoint_of_other_parameters_is_refused_before_anything_changes():
    model = make_model()
    with attach(model, sgd(model), [EMA(0.9)]) as reg:
        state = reg.state_dict()
    state["plugins"][0]["state"]["averages"].pop("0.weight")
    other = make_model()
    ema = EMA(0.9, keep_raw=True)
    with attach(other, sgd(other), [ema]) as reg:
        before = ema.averages()
        with pytest.raises(ValueError, match="missing \\['0.weight'\\]"):
            reg.load_state_dict(state)
        assert all((before[k] == v).all() for k, v in ema.averages().items())

"""OverfitBatch in a PyTorch loop: passes on a healthy model, fails with a useful message on
broken ones, and leaves model, optimizer and random state exactly as it found them."""

from __future__ import annotations

import pytest
import torch
from _torch_models import batches, snapshot
from torch import nn

import regplug
from regplug.adapters.torch import attach
from regplug.plugins import L2, OverfitBatch, OverfitBatchError

X, Y = batches(1, seed=11, size=16)[0]
DATA = batches(6, seed=12)


class GaussianNoise(nn.Module):
    """Input noise in training mode: draws from the global generator at every forward."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x) if self.training else x


def dropout_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(GaussianNoise(), nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(64, 3))


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = dropout_mlp()

    def forward(self, x):
        return self.net(x).detach().requires_grad_()  # the classic bug: output cut off


class CountSteps(regplug.Plugin):
    def __init__(self):
        self.steps = 0

    @regplug.hookimpl
    def on_step(self, run, step):
        self.steps += 1


def train(model, opt, plugins, epochs=2):
    with attach(model, opt, plugins, loss_fn=nn.functional.cross_entropy) as reg:
        for _ in range(epochs):
            for x, y in DATA:
                opt.zero_grad()
                loss = reg.loss(nn.functional.cross_entropy(model(x), y))
                loss.backward()
                opt.step()
            reg.epoch_end({})
    return reg


def test_a_healthy_model_passes_and_the_verdict_has_the_numbers(capsys):
    model = dropout_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    check = OverfitBatch(X, Y, steps=60)
    with attach(model, opt, [check], loss_fn=nn.functional.cross_entropy):
        pass
    [verdict] = check.verdicts
    assert check.passed and verdict.final <= verdict.initial / 10
    printed = capsys.readouterr().err
    assert "overfit_batch (data): passed: loss" in printed and "after 60 steps" in printed


def test_the_real_run_is_bit_identical_to_one_without_the_check():
    torch.manual_seed(123)
    plain = dropout_mlp()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    train(plain, opt, [L2(1e-3)])

    torch.manual_seed(123)
    checked = dropout_mlp()
    opt2 = torch.optim.Adam(checked.parameters(), lr=1e-2)
    train(checked, opt2, [L2(1e-3), OverfitBatch(X, Y, steps=30, verbose=False)])
    for (name, a), b in zip(plain.state_dict().items(), checked.state_dict().values()):
        assert torch.equal(a, b), name
    assert opt.state_dict()["state"][0]["step"] == opt2.state_dict()["state"][0]["step"]


def test_model_optimizer_gradients_and_modes_are_restored_exactly_after_the_check():
    model = dropout_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in DATA[:2]:  # momentum buffers and gradients exist before the check
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    before, grads = snapshot(model), [p.grad.clone() for p in model.parameters()]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    rng = torch.random.get_rng_state()
    with attach(model, opt, [OverfitBatch(X, Y, steps=20, verbose=False)],
                loss_fn=nn.functional.cross_entropy):
        after = snapshot(model)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], m)
               for p, m in zip(model.parameters(), momentum))
    assert not model.training and torch.equal(torch.random.get_rng_state(), rng)


def test_other_plugins_and_dropout_are_off_during_the_check():
    counter = CountSteps()
    model = dropout_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    check = OverfitBatch(X, Y, steps=10, verbose=False, on_fail="warn")
    with attach(model, opt, [counter, check], loss_fn=nn.functional.cross_entropy) as reg:
        assert counter.steps == 0 and reg.run.step == 0
        opt.zero_grad()
        reg.loss(nn.functional.cross_entropy(model(X), Y)).backward()
        opt.step()
    assert counter.steps == 1  # the hooks are back after the check


@pytest.mark.parametrize("broken, hint", [
    ("lr0", "the learning rate is 0"),
    ("detached", "none of the 6 parameter tensors got a gradient: is the output detached"),
    ("frozen", "does not require grad"),
])
def test_a_broken_setup_fails_before_training_with_a_useful_message(broken, hint):
    model = Detached() if broken == "detached" else dropout_mlp()
    if broken == "frozen":
        for p in model.parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0 if broken == "lr0" else 0.1)
    with pytest.raises(OverfitBatchError) as info:
        attach(model, opt, [OverfitBatch(X, Y, steps=20, verbose=False)],
               loss_fn=nn.functional.cross_entropy)
    message = str(info.value)
    assert message.startswith("overfit_batch (data): FAILED: loss ")
    assert hint in message
    attach(model, opt, []).close()  # nothing left attached: regplug attaches again


def test_labels_that_do_not_fit_the_loss_are_named_as_the_cause_without_misleading_hints():
    model = dropout_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(OverfitBatchError) as info:
        attach(model, opt, [OverfitBatch(X, Y[:, None], steps=5, verbose=False)],
               loss_fn=nn.functional.cross_entropy)
    message = str(info.value)
    assert "training raised: RuntimeError" in message
    assert "shapes and dtypes" in message
    # the loss was never computed: nothing about gradients, the optimizer or a non-finite loss
    assert "gradient" not in message and "optimizer" not in message
    assert "non-finite" not in message


def test_on_fail_warn_logs_and_goes_on(caplog):
    model = dropout_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    check = OverfitBatch(X, Y, steps=5, on_fail="warn", verbose=False)
    with attach(model, opt, [check], loss_fn=nn.functional.cross_entropy):
        pass
    assert check.passed is False
    assert "FAILED" in caplog.text and "learning rate is 0" in caplog.text


def test_noise_inputs_are_checked_as_well():
    model = dropout_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    check = OverfitBatch(X, Y, steps=80, noise=True, verbose=False)
    with attach(model, opt, [check], loss_fn=nn.functional.cross_entropy):
        pass
    assert [v.inputs for v in check.verdicts] == ["data", "noise"] and check.passed


def test_without_a_loss_function_the_plugin_is_refused_with_the_remedy():
    model = dropout_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(regplug.UnsupportedPluginError,
                       match=r"overfit_batch.*requires 'trial_training'.*loss_fn=criterion"):
        attach(model, opt, [OverfitBatch(X, Y)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "'steps' must be an integer >= 1"),
    (dict(factor=1.0), "'factor' must be a finite number > 1"),
    (dict(on_fail="ignore"), "'on_fail' must be one of 'raise', 'warn'"),
    (dict(noise="yes"), "'noise' must be True or False"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        OverfitBatch(X, Y, **kwargs)

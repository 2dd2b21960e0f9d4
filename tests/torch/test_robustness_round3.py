"""The PyTorch adapter's corner cases of robustness round 3 (issue 16): parameter groups added
after ``attach``, accumulation with autograd penalties, one-element metrics, a model with
nothing to train, sharded parameters refused before any step."""

from __future__ import annotations

import copy

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, weights_and_others
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import regplug
from regplug import Penalty, hookimpl
from regplug.adapters.torch import attach
from regplug.plugins import L1, L2, MaxNorm

criterion = nn.CrossEntropyLoss()


class SquaredSum:
    """A third-party penalty without a closed form: ``s·(Σθ)²`` over the last layer's weight."""

    name = "squared_sum"

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @hookimpl
    def on_loss(self, run):
        weight = run.params[-2].tensor  # the last Linear's weight (its bias comes after)
        return Penalty("squared_sum_penalty", value=lambda: self.strength * weight.sum() ** 2)


# -- item 19: accumulation with penalties that go through autograd -------------------------
@pytest.mark.parametrize("plugins,written", [
    (lambda: [L2(0.05), L1(0.01)],
     lambda m: sum(0.05 * w.pow(2).sum() + 0.01 * w.abs().sum()
                   for w in weights_and_others(m)[0])),
    (lambda: [SquaredSum(0.02)], lambda m: 0.02 * m[-1].weight.sum() ** 2),
], ids=["fused=False", "third-party-penalty"])
@pytest.mark.parametrize("micro", [2, 4])
def test_accumulation_adds_an_autograd_penalty_once_per_window(plugins, written, micro):
    """k micro-batches of loss/k and one step == one batch with the penalty once, also for
    penalties differentiated by autograd (fused=False, or no closed form)."""
    data = batches(5, size=32)
    ours = make_model()
    theirs = copy.deepcopy(ours)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    with attach(ours, opt, plugins(), fused=False) as reg:
        for x, y in data:
            opt.zero_grad()
            for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
                reg.loss(criterion(ours(xs), ys) / micro).backward()
            opt.step()
        assert reg.run.step == len(data)
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x, y in data:
        opt2.zero_grad()
        (criterion(theirs(x), y) + written(theirs)).backward()
        opt2.step()
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)


# -- item 17: one-element metrics ------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.lists(st.just(1), min_size=1, max_size=4), st.floats(-1e6, 1e6))
def test_epoch_end_takes_a_one_element_tensor_of_any_shape(shape, value):
    model = nn.Linear(2, 1)
    with attach(model, torch.optim.SGD(model.parameters(), lr=0.1), []) as reg:
        reg.epoch_end({"val_loss": torch.full(tuple(shape), value, dtype=torch.float64)})
        assert reg.history["val_loss"] == [value]


def test_epoch_end_still_refuses_a_tensor_of_several_elements():
    model = nn.Linear(2, 1)
    with attach(model, torch.optim.SGD(model.parameters(), lr=0.1), []) as reg:
        with pytest.raises(TypeError, match=r"array of shape \(1, 2\)"):
            reg.epoch_end({"val_loss": torch.ones(1, 2)})


# -- item 17: nothing trainable ----------------------------------------------------------------
def test_attach_refuses_a_model_with_nothing_trainable_in_one_line():
    model = nn.Linear(3, 2)
    model.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(regplug.UsageError) as caught:
        attach(model, opt, [L2(0.1)])
    message = str(caught.value)
    assert "\n" not in message and "nothing to regularize" in message
    assert "requires_grad" in message
    assert not hasattr(opt, "_regplug_attached")  # nothing left behind
    model.requires_grad_(True)
    attach(model, opt, [L2(0.1)]).close()  # the same optimizer works once there is something


def test_attach_with_no_plugins_on_a_frozen_model_is_not_refused():
    # Nothing to act on and nothing asked: a loop that attaches an empty plugin list (e.g.
    # the baseline of a comparison) keeps working.
    model = nn.Linear(3, 2)
    model.requires_grad_(False)
    attach(model, torch.optim.SGD(model.parameters(), lr=0.1), []).close()


# -- item 5: parameter groups added after attach ----------------------------------------------
def _unfreezing_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def test_a_parameter_group_added_after_attach_is_regularized_from_its_first_step():
    lam = 0.05
    data = batches(6)
    ours = _unfreezing_model()
    theirs = copy.deepcopy(ours)

    def train(model, reg=None):
        opt = torch.optim.SGD(model[2].parameters(), lr=0.1)  # the head first
        handle = attach(model, opt, [L2(lam)]) if reg else None
        for i, (x, y) in enumerate(data):
            if i == 3:  # progressive unfreezing: the body joins the optimizer
                opt.add_param_group({"params": list(model[0].parameters()), "lr": 0.05})
            opt.zero_grad()
            loss = criterion(model(x), y)
            if handle is not None:
                loss = handle.loss(loss)
            else:
                trained = [model[2].weight] + ([model[0].weight] if i >= 3 else [])
                loss = loss + lam * sum(w.pow(2).sum() for w in trained)
            loss.backward()
            opt.step()
        if handle is not None:
            assert [p.name for p in handle.run.parameters()] == ["2.weight", "0.weight"]
            handle.close()

    train(ours, reg=True)
    train(theirs)
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)


def test_max_norm_holds_for_a_parameter_group_added_after_attach():
    model = _unfreezing_model()
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # rows far above the bound
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with attach(model, opt, [MaxNorm(1.0)]) as reg:
        opt.add_param_group({"params": [model[0].weight]})
        x, y = batches(1)[0]
        opt.zero_grad()
        reg.loss(criterion(model(x), y)).backward()
        opt.step()
    norms = model[0].weight.detach().norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5


def test_a_group_added_after_attach_gets_its_own_learning_rate_in_update_plugins():
    # DecoupledWeightDecay multiplies by each group's learning rate: the new group's lr.
    wd = 0.1
    model = _unfreezing_model()
    opt = torch.optim.SGD(model[2].parameters(), lr=0.0)
    with attach(model, opt, [regplug.plugins.DecoupledWeightDecay(wd)]) as reg:
        opt.add_param_group({"params": [model[0].weight], "lr": 0.5})
        before = model[0].weight.detach().clone()
        x, y = batches(1)[0]
        opt.zero_grad()
        reg.loss(criterion(model(x), y)).backward()
        with torch.no_grad():
            model[0].weight.grad.zero_()  # only the decay moves it
        opt.step()
    torch.testing.assert_close(model[0].weight.detach(), before * (1 - 0.5 * wd))


# -- item 11: sharded parameters are refused before any step ------------------------------------
def test_a_dtensor_parameter_is_refused_in_one_line_before_any_step(monkeypatch):
    from regplug.adapters.torch import build as build_module

    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.setattr(build_module, "_is_dtensor", lambda t: t is model.weight)
    with pytest.raises(regplug.UsageError) as caught:
        attach(model, opt, [L2(0.1)])
    message = str(caught.value)
    assert "\n" not in message and "DTensor" in message and "'weight'" in message
    assert not hasattr(opt, "_regplug_attached")


@pytest.mark.parametrize("marker,name", [("ds_id", "DeepSpeed ZeRO"),
                                         ("_is_flat_param", "FSDP")])
def test_sharded_parameters_of_other_engines_are_refused_by_name(marker, name):
    model = nn.Linear(3, 2)
    setattr(model.weight, marker, 7 if marker == "ds_id" else True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(regplug.UsageError, match=name):
        attach(model, opt, [L2(0.1)])


def test_a_real_dtensor_parameter_is_refused(tmp_path):
    """A one-process gloo group: a Linear whose weight is distributed as a DTensor."""
    dist = pytest.importorskip("torch.distributed")
    tensor_api = pytest.importorskip("torch.distributed.tensor")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed, not initialised yet")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        mesh = tensor_api.init_device_mesh("cpu", (1,))
        model = nn.Linear(3, 2)
        model.weight = nn.Parameter(tensor_api.distribute_tensor(
            model.weight.detach(), mesh, [tensor_api.Shard(0)]))
        opt = torch.optim.SGD([model.weight], lr=0.1)
        with pytest.raises(regplug.UsageError, match=r"parameter 'weight' is a DTensor"):
            attach(model, opt, [L2(0.1)])
        assert not hasattr(opt, "_regplug_attached")
    finally:
        dist.destroy_process_group()

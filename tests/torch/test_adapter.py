"""The PyTorch adapter: the three-line pattern, its usage checks, AMP, accumulation, devices."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from _torch_models import assert_same_weights, batches, make_model, snapshot, weights_and_others
from torch import nn

import regplug
from regplug.adapters.torch import attach
from regplug.plugins import L1, L2, DecoupledWeightDecay, MaxNorm, ProximalL1

criterion = nn.CrossEntropyLoss()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_hooks_fire_at_the_documented_moments(recorder):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(2)
    with attach(model, opt, [recorder]) as reg:
        for _epoch in range(2):
            for x, y in data:
                opt.zero_grad()
                reg.loss(criterion(model(x), y)).backward()
                opt.step()
            model.eval()
            model(data[0][0])  # validation forward: no epoch_begin, no batch
            model.train()
            reg.epoch_end({"val_loss": 1.0})
    assert recorder.names() == [
        "train_begin",
        "epoch_begin", "loss", "before_step", "step", "loss", "before_step", "step", "epoch_end",
        "epoch_begin", "loss", "before_step", "step", "loss", "before_step", "step", "epoch_end",
        "train_end",
    ]
    assert recorder.events[-1] == ("train_end", 2, 4)


def test_epoch_begin_fires_before_the_first_forward_so_rate_changes_apply_to_it():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))

    class DropoutOn(regplug.Plugin):
        @regplug.hookimpl
        def on_epoch_begin(self, run, epoch):
            model[1].p = 0.999

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with attach(model, opt, [DropoutOn()]) as reg:
        out = model(torch.ones(64, 4))
        reg.loss(out.sum()).backward()
        opt.step()
    assert (out == 0).float().mean() > 0.9


def test_step_without_reg_loss_is_refused_and_parameters_stay_untouched():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    with attach(model, opt, [L2(0.1)]):
        before = snapshot(model)
        criterion(model(x), y).backward()
        with pytest.raises(regplug.UsageError, match=r"reg.loss\(loss\) was not called on a training loss .* penalties of l2 would be missing"):
            opt.step()
        after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_backward_on_the_original_loss_is_caught_for_autograd_penalties():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    with attach(model, opt, [L2(0.1)], fused=False) as reg:
        loss = criterion(model(x), y)
        reg.loss(loss)  # result dropped
        loss.backward()
        with pytest.raises(regplug.UsageError, match="was not backpropagated, so the penalties l2_penalty"):
            opt.step()


def test_attaching_twice_to_one_optimizer_is_refused_and_close_cleans_up():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = attach(model, opt, [L2(0.1)])
    with pytest.raises(regplug.UsageError, match="already has regplug attached"):
        attach(model, opt, [L2(0.1)])
    reg.close()
    assert "zero_grad" not in vars(opt) and not opt._optimizer_step_pre_hooks
    assert not model._forward_pre_hooks
    # after close, the optimizer is plain torch again: no penalty, no usage check
    theirs = copy.deepcopy(model)
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for m, o in ((model, opt), (theirs, opt2)):
        o.zero_grad()
        criterion(m(batches(1)[0][0]), batches(1)[0][1]).backward()
        o.step()
    assert_same_weights(model, theirs, rtol=0, atol=0)
    with pytest.raises(regplug.UsageError, match="closed"):
        reg.loss(torch.zeros(()))


def test_gradient_accumulation_applies_the_penalty_once_per_step():
    """4 micro-batches of 8 with loss/4 and one step == 1 batch of 32, penalty once."""
    lam = 0.05
    data = batches(10, size=32)
    ours = make_model()
    theirs = copy.deepcopy(ours)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    with attach(ours, opt, [L2(lam), L1(0.01)]) as reg:
        for x, y in data:
            opt.zero_grad()
            for xs, ys in zip(x.chunk(4), y.chunk(4)):
                loss = reg.loss(criterion(ours(xs), ys) / 4)
                loss.backward()
            opt.step()
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x, y in data:
        opt2.zero_grad()
        ws = weights_and_others(theirs)[0]
        penalty = lam * sum(w.pow(2).sum() for w in ws) + 0.01 * sum(w.abs().sum() for w in ws)
        (criterion(theirs(x), y) + penalty).backward()
        opt2.step()
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
def test_autocast_and_grad_scaler_give_the_float32_penalty_added_before_scaling(fused):
    """bfloat16 autocast + GradScaler: equal to the hand-written fp32 penalty in the loss."""
    lam, data = 0.02, batches(30)
    ours = make_model()
    theirs = copy.deepcopy(ours)

    def loop(model, penalty_fn, reg=None):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
        ctx = attach(model, opt, [L2(lam)], fused=fused) if reg else contextlib.nullcontext()
        with ctx as r:
            for x, y in data:
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = criterion(model(x), y)
                    loss = r.loss(loss) if r else loss + penalty_fn(model)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

    loop(ours, None, reg=True)
    loop(theirs, lambda m: lam * sum(w.float().pow(2).sum() for w in weights_and_others(m)[0]))
    assert_same_weights(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_step_skipped_by_grad_scaler_does_not_lose_the_next_penalty():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batches(1)[0]
    with attach(model, opt, [L2(0.5)]) as reg:
        opt.zero_grad()
        loss = reg.loss(criterion(model(x), y) * float("inf"))
        scaler.scale(loss).backward()
        before = snapshot(model)
        scaler.step(opt)  # non-finite gradients: the step is skipped
        scaler.update()
        assert reg.run.step == 0 and all(torch.equal(before[k], v) for k, v in snapshot(model).items())
        opt.zero_grad()
        loss = reg.loss(criterion(model(x), y) * 0.0)  # zero data gradient: only L2 acts
        scaler.scale(loss).backward()
        scaler.step(opt)
    torch.testing.assert_close(model[0].weight, before["0.weight"] * (1 - 0.1 * 2 * 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_no_host_synchronisation_on_the_per_step_path(device, monkeypatch):
    """Fail on any tensor-to-host read (.item(), float(), bool(), .tolist(), .cpu()) in a step."""
    model = make_model(norm=True).to(device)
    # SGD, because torch's Adam itself reads its step counter with .item() on the CPU.
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    plugins = [L2(0.01), L1(1e-3), DecoupledWeightDecay(0.01), ProximalL1(1e-3), MaxNorm(3.0)]
    data = [(x.to(device), y.to(device)) for x, y in batches(3)]
    with attach(model, opt, plugins) as reg:
        def forbidden(*args, **kwargs):
            raise AssertionError("host synchronisation on the per-step path")

        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
                patch.setattr(torch.Tensor, name, forbidden)
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            try:
                for x, y in data:
                    opt.zero_grad()
                    reg.loss(criterion(model(x), y)).backward()
                    opt.step()
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        assert reg.run.step == 3
        assert reg.penalty().device.type == device  # computed where the weights are


@pytest.mark.parametrize("device", DEVICES)
def test_a_strength_computed_on_the_device_is_added_to_gradients_without_a_host_read(device):
    class DeviceStrength(regplug.Plugin):
        @regplug.hookimpl
        def on_before_step(self, run):
            params = run.parameters()
            alpha = run.ops.sum_squares(params).detach() * 0.0 + 0.25  # a 0-d device tensor
            run.ops.add_to_grad_(params, alpha)
            run.ops.add_sign_to_grad_(params, alpha)

    model = nn.Linear(3, 2, bias=False).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    with attach(model, opt, [DeviceStrength()]) as reg:
        opt.zero_grad()
        reg.loss((model(torch.zeros(1, 3, device=device)) * 0.0).sum()).backward()
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(model.weight, before - 0.25 * before - 0.25 * before.sign())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_l2_on_cuda_equals_hand_written_on_cuda():
    data = [(x.cuda(), y.cuda()) for x, y in batches(40)]
    ours = make_model().cuda()
    theirs = copy.deepcopy(ours)
    opt = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    with attach(ours, opt, [L2(0.01)]) as reg:
        for x, y in data:
            opt.zero_grad()
            reg.loss(criterion(ours(x), y)).backward()
            opt.step()
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    for x, y in data:
        opt2.zero_grad()
        (criterion(theirs(x), y) + 0.01 * sum(w.pow(2).sum() for w in weights_and_others(theirs)[0])).backward()
        opt2.step()
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)


def test_epoch_logs_include_each_penalty_under_its_own_name():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [L2(0.1), L1(0.01)]) as reg:
        reg.loss(criterion(model(batches(1)[0][0]), batches(1)[0][1])).backward()
        opt.step()
        reg.epoch_end({"val_loss": torch.tensor(0.5)})
    ws = weights_and_others(model)[0]
    assert reg.history["val_loss"] == [0.5]
    assert reg.history["l2_penalty"][0] == pytest.approx(0.1 * sum(float(w.detach().pow(2).sum()) for w in ws), rel=1e-5)
    assert reg.history["l1_penalty"][0] == pytest.approx(0.01 * sum(float(w.detach().abs().sum()) for w in ws), rel=1e-5)


def test_a_third_party_penalty_without_closed_form_goes_through_autograd():
    class SpreadPenalty(regplug.Plugin):
        """strength · Σθ² written as a plain value: regplug must differentiate it."""

        @regplug.hookimpl
        def on_loss(self, run, loss):
            params = run.parameters()
            return regplug.Penalty("spread", value=lambda: 0.01 * run.ops.sum_squares(params))

    data = batches(20)
    ours = make_model()
    theirs = copy.deepcopy(ours)
    opt = torch.optim.SGD(ours.parameters(), lr=0.05)
    with attach(ours, opt, [SpreadPenalty()]) as reg:
        for x, y in data:
            opt.zero_grad()
            loss = reg.loss(criterion(ours(x), y))
            loss.backward()
            opt.step()
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.05)
    for x, y in data:
        opt2.zero_grad()
        (criterion(theirs(x), y) + 0.01 * sum(w.pow(2).sum() for w in weights_and_others(theirs)[0])).backward()
        opt2.step()
    assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)


def test_parameter_kinds_come_from_module_types():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.conv = nn.Conv1d(4, 4, 3)
            self.deconv = nn.ConvTranspose1d(4, 2, 3)
            self.bn = nn.BatchNorm1d(4)
            self.ln = nn.LayerNorm(4)
            self.gn = nn.GroupNorm(2, 4)
            self.attn = nn.MultiheadAttention(4, 2)
            self.head = nn.Linear(4, 2)
            self.tied = nn.Linear(4, 10, bias=False)
            self.tied.weight = self.emb.weight  # shared: must appear once

    model = Net()
    frozen = model.head.bias
    frozen.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with attach(model, opt, []) as reg:
        kinds = {p.name: (p.kind, p.unit_axis) for p in reg.run.params}
    assert kinds == {
        "emb.weight": ("embedding", 0),
        "conv.weight": ("weight", 0), "conv.bias": ("bias", None),
        "deconv.weight": ("weight", 1), "deconv.bias": ("bias", None),
        "bn.weight": ("normalization", None), "bn.bias": ("normalization", None),
        "ln.weight": ("normalization", None), "ln.bias": ("normalization", None),
        "gn.weight": ("normalization", None), "gn.bias": ("normalization", None),
        "attn.in_proj_weight": ("weight", 0), "attn.in_proj_bias": ("bias", None),
        "attn.out_proj.weight": ("weight", 0), "attn.out_proj.bias": ("bias", None),
        "head.weight": ("weight", 0),  # head.bias is frozen: not in the optimizer
    }


def test_names_are_those_of_the_unwrapped_module():
    model = make_model()
    compiled_like = nn.DataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(compiled_like, opt, []) as reg:
        assert [p.name for p in reg.run.parameters()] == ["0.weight", "2.weight", "4.weight"]


def test_state_dict_resumes_the_clock_and_schedules():
    schedule = regplug.LinearWarmup(1.0, warmup_steps=10)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [L2(schedule)]) as reg:
        for x, y in batches(4):
            opt.zero_grad()
            reg.loss(criterion(model(x), y)).backward()
            opt.step()
        reg.epoch_end({"val_loss": 0.3})
        state = reg.state_dict()
    assert state["step"] == 4 and state["epoch"] == 1
    model2 = make_model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    with attach(model2, opt2, [L2(schedule)]) as reg2:
        reg2.load_state_dict(state)
        assert reg2.run.step == 4 and reg2.history == {"val_loss": [0.3], "l2_penalty": state["history"]["l2_penalty"]}
        # The warmup resumes at step 4 of 10: the next step decays by lr * 2 * 0.4 (the
        # loss itself is zeroed, so the penalty is all that moves the weights).
        x, y = batches(1)[0]
        before = model2[0].weight.detach().clone()
        opt2.zero_grad()
        reg2.loss(criterion(model2(x), y) * 0.0).backward()
        opt2.step()
        torch.testing.assert_close(model2[0].weight, before * (1 - 0.1 * 2 * 0.4))
    model3 = make_model()
    with attach(model3, torch.optim.SGD(model3.parameters(), lr=0.1), [L1()]) as reg3:
        pass
    with pytest.raises(ValueError, match=r"checkpoint holds plugins \['l2'\], this run has \['l1'\]"):
        reg3.load_state_dict(state)


def test_attach_rejects_wrong_types_with_clear_messages():
    with pytest.raises(TypeError, match="'model' must be a torch.nn.Module"):
        attach("model", torch.optim.SGD(make_model().parameters(), lr=0.1), [])
    with pytest.raises(TypeError, match="'optimizer' must be a torch.optim.Optimizer"):
        attach(make_model(), "sgd", [])


def test_dropout_handles_change_the_rate_used_by_the_next_forward_pass():
    model = nn.Sequential(nn.Linear(4, 256), nn.Dropout(0.0), nn.ReLU(), nn.Linear(256, 1))
    rates = {0: 0.0, 1: 0.5, 2: 0.9}

    class Schedule(regplug.Plugin):
        @regplug.hookimpl
        def on_epoch_begin(self, run, epoch):
            for layer in run.dropout_layers():
                layer.rate = rates[epoch]

    captured = []
    model[1].register_forward_hook(lambda m, i, o: captured.append((o == 0).float().mean().item()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with attach(model, opt, [Schedule()]) as reg:
        assert [repr(h) for h in reg.run.dropout_layers()] == ["DropoutHandle('1', layer=Dropout, rate=0.0)"]
        for _epoch in range(3):
            x = torch.randn(512, 4).abs() + 0.1
            with torch.no_grad():
                model[0].weight.abs_()
                model[0].bias.fill_(0.1)  # every activation is non-zero before dropout
            reg.loss(model(x).sum()).backward()
            opt.step()
            opt.zero_grad()
            reg.epoch_end()
    assert captured[0] == 0.0
    assert captured[1] == pytest.approx(0.5, abs=0.02)
    assert captured[2] == pytest.approx(0.9, abs=0.02)


def test_a_validation_loss_under_no_grad_does_not_take_the_place_of_the_training_loss():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    with attach(model, opt, [L2(0.5)], fused=False) as reg:
        with torch.no_grad():
            val = reg.loss(criterion(model(x), y))
        assert not val.requires_grad
        opt.zero_grad()
        before = model[0].weight.detach().clone()
        loss = reg.loss(criterion(model(x), y) * 0.0)
        loss.backward()
        opt.step()
    torch.testing.assert_close(model[0].weight, before * (1 - 0.1 * 2 * 0.5))


def test_a_plugin_requiring_an_unknown_capability_is_refused_before_training():
    class Telepathic(regplug.Plugin):
        requires = ("telepathy",)

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(regplug.UnsupportedPluginError, match=r"telepathic: requires 'telepathy'.*known: eager_step, dropout_layers.*PyTorch adapter"):
        attach(model, opt, [Telepathic()])
    # nothing was left attached: the optimizer steps as plain torch, and takes regplug again
    plain = copy.deepcopy(model)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    x, y = batches(1)[0]
    for m, o in ((model, opt), (plain, plain_opt)):
        o.zero_grad()
        criterion(m(x), y).backward()
        o.step()
    assert_same_weights(plain, model)
    attach(model, opt, [L2(0.1)]).close()


def test_epoch_end_with_something_else_than_a_mapping_is_refused():
    model = make_model()
    with attach(model, torch.optim.SGD(model.parameters(), lr=0.1), []) as reg:
        with pytest.raises(TypeError, match=r"'logs' must be a mapping .* got float"):
            reg.epoch_end(0.5)

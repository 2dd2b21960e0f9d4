"""Plugins act in the order they are listed, in a PyTorch loop."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import regplug  # noqa: E402
from regplug.adapters.torch import attach  # noqa: E402
from regplug.plugins import EarlyStopping, GeneralizationGap, MaxNorm, ProximalL1  # noqa: E402


def test_early_stopping_acts_on_the_gap_a_monitor_listed_before_it_logs():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(monitor="gap", patience=2, restore_best_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", regplug.RegplugWarning)  # no "monitor not in logs"
        with attach(model, opt, [GeneralizationGap(), stopper]) as reg:
            stopped = [reg.epoch_end({"loss": 1.0, "val_loss": 1.0 + gap})
                       for gap in (0.1, 0.3, 0.5)]
    assert stopped == [False, False, True]
    assert reg.history["gap"] == pytest.approx([0.1, 0.3, 0.5])


def test_two_update_plugins_apply_in_list_order_so_the_result_depends_on_it():
    # Soft-thresholding then clipping differs from clipping then soft-thresholding: the
    # final weights tell which order ran.
    def run(plugins):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.05, 0.0, 0.0, 0.0]]))
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        with attach(model, opt, plugins) as reg:
            opt.zero_grad()
            reg.loss((model(torch.zeros(1, 4)) * 0).sum()).backward()
            opt.step()
        return model.weight.detach().clone()

    prox_then_clip = run([ProximalL1(1.0), MaxNorm(1.5)])
    clip_then_prox = run([MaxNorm(1.5), ProximalL1(1.0)])
    assert prox_then_clip[0, 0] == pytest.approx(1.5)          # 3 → 2 (prox) → 1.5 (clip)
    assert clip_then_prox[0, 0] == pytest.approx(0.5, abs=1e-6)  # 3 → 1.5 (clip) → 0.5 (prox)


def test_a_plain_hook_between_prepared_ones_sees_and_changes_what_they_act_on():
    """The built-in plugins' prepared hooks run in list order around a user's plain hook, and
    each filters the parameters when it runs: a gradient dropped by the user's on_before_step
    keeps DecoupledWeightDecay listed after it (and the optimizer) off that parameter, while
    the decay listed before it has already acted."""
    from regplug.plugins import DecoupledWeightDecay

    class DropBiasGradient(regplug.Plugin):
        @regplug.hookimpl
        def on_before_step(self, run):
            for p in run.params:
                if p.name == "bias":
                    p.tensor.grad = None

    def run(plugins):
        model = torch.nn.Linear(2, 1)
        with torch.no_grad():
            model.weight.fill_(1.0)
            model.bias.fill_(1.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        with attach(model, opt, plugins) as reg:
            opt.zero_grad()
            reg.loss((model(torch.zeros(1, 2)) * 0).sum()).backward()
            opt.step()
        return model.bias.item()

    assert run([DecoupledWeightDecay(0.2, kinds="all"), DropBiasGradient()]) == \
        pytest.approx(0.9)  # decayed (1 − 0.5·0.2), then left alone by SGD
    assert run([DropBiasGradient(), DecoupledWeightDecay(0.2, kinds="all")]) == 1.0


def test_a_faulty_prepare_hooks_is_refused_at_the_first_loss_before_anything_changed():
    from regplug.errors import PluginValidationError
    from regplug.plugins import L2

    class Faulty(regplug.Plugin):
        def prepare_hooks(self, run):
            return {"on_step": "clip"}  # not a function

        @regplug.hookimpl
        def on_step(self, run):
            pass

    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with attach(model, opt, [L2(0.1), Faulty()]) as reg:
        opt.zero_grad()
        with pytest.raises(PluginValidationError, match=r"faulty: prepare_hooks\(run\) must "
                                                        r"return a mapping"):
            reg.loss(model(torch.ones(1, 2)).sum())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())

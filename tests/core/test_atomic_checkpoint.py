"""Loading a checkpoint is all or nothing: a plugin that refuses its state leaves every
plugin, the clock and the history exactly as they were."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from _states import same

import regplug
from regplug.manager import load_plugin_states
from regplug.plugins import EarlyStopping


class Counter(regplug.Plugin):
    """A plugin whose load_state_dict changes itself before it fails (the worst case)."""

    def __init__(self) -> None:
        self.count = 0

    def on_step(self, run, step):
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = 0
        self.count = int(state["count"])


def test_a_failing_plugin_puts_back_the_ones_loaded_before_it_and_itself():
    first, second, third = Counter(), Counter(), Counter()
    for plugin, n in ((first, 1), (second, 2), (third, 3)):
        plugin.count = n
    with pytest.raises(ValueError, match=r"^load: the state of plugin 3 \('counter'\) cannot be "
                                         r"loaded, so no plugin's state was changed: KeyError"):
        load_plugin_states([first, second, third], [{"count": 10}, {"count": 20}, {}],
                           where="load")
    assert (first.count, second.count, third.count) == (1, 2, 3)


def test_a_plugin_count_mismatch_changes_nothing():
    plugin = Counter()
    with pytest.raises(ValueError, match="holds 2 plugin states, this run has 1 plugins"):
        load_plugin_states([plugin], [{"count": 1}, {"count": 2}], where="load")
    assert plugin.count == 0


torch = pytest.importorskip("torch")
from regplug.adapters.torch import attach  # noqa: E402  (after the skip)


def train(reg: Any, model: Any, opt: Any, epochs: int, val: list[float]) -> None:
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for _ in range(epochs):
        opt.zero_grad()
        loss = reg.loss(torch.nn.functional.mse_loss(model(x), y))
        loss.backward()
        opt.step()
        reg.epoch_end({"val_loss": val[reg.run.epoch]})


def test_torch_checkpoint_with_a_corrupt_third_plugin_leaves_plugins_and_clock_as_they_were():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plugins = [EarlyStopping(patience=5), EarlyStopping(patience=5, monitor="val_loss"),
               EarlyStopping(patience=5)]
    val = [0.9, 0.5, 0.7, 0.4, 0.6, 0.3]
    with attach(model, opt, plugins) as reg:
        train(reg, model, opt, 2, val)
        checkpoint = copy.deepcopy(reg.state_dict())      # after epoch 2: best 0.5 at epoch 1
        train(reg, model, opt, 2, val)                      # now: best 0.4 at epoch 3
        before = [copy.deepcopy(p.state_dict()) for p in plugins]
        clock = (reg.run.step, reg.run.epoch, copy.deepcopy(reg.history))
        checkpoint["plugins"][2]["state"]["wait"] = "corrupt"
        with pytest.raises(ValueError, match=r"reg.load_state_dict: the state of plugin 3 "
                                             r"\('early_stopping'\) cannot be loaded, so no "
                                             r"plugin's state was changed: ValueError"):
            reg.load_state_dict(checkpoint)
        assert all(same(p.state_dict(), b) for p, b in zip(plugins, before))
        assert (reg.run.step, reg.run.epoch, reg.history) == clock == (4, 4, clock[2])
        assert plugins[0].best == pytest.approx(0.4) and plugins[0].best_epoch == 3
        train(reg, model, opt, 2, val)  # and the run goes on as if nothing had been tried
        assert plugins[0].best == pytest.approx(0.3) and plugins[0].best_epoch == 5


@pytest.mark.parametrize("damage", [
    lambda c: c.pop("step"), lambda c: c.update(epoch="x"), lambda c: c.update(history=5),
    lambda c: c["plugins"][1].pop("state"), lambda c: c.update(plugins=None)])
def test_a_malformed_torch_checkpoint_is_refused_before_anything_is_loaded(damage):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plugins = [EarlyStopping(patience=5), EarlyStopping(patience=5)]
    with attach(model, opt, plugins) as reg:
        train(reg, model, opt, 1, [0.9])
        checkpoint = copy.deepcopy(reg.state_dict())
        checkpoint["plugins"][0]["state"]["wait"] = 4  # would change plugin 1 if loaded
        damage(checkpoint)
        with pytest.raises(ValueError, match="reg.load_state_dict: not a checkpoint written by "
                                             r"reg.state_dict\(\) .*; nothing was loaded"):
            reg.load_state_dict(checkpoint)
        assert plugins[0].wait == 0 and reg.run.epoch == 1

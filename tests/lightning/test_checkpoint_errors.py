"""A Lightning checkpoint whose Regularize entry does not fit this run is refused through the
real resume path, ``trainer.fit(ckpt_path=...)``: the message names the call, the checkpoint
and what is wrong, and nothing of the run state is loaded."""

from __future__ import annotations

import copy
import re
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from _lightning_models import Tiny, data, fit, trainer
from _states import same

from regplug.adapters.lightning import Regularize
from regplug.plugins import L2, EarlyStopping

# The checkpoints here are resumed without the ModelCheckpoint that wrote them, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")

# val_loss per epoch: the checkpoint after epochs 0 and 1 holds "best 0.5 at epoch 1".
SCRIPTED = [1.0, 0.5, 0.7, 0.8]


def plugins() -> list[Any]:
    return [EarlyStopping(patience=5), L2(1e-2), EarlyStopping(patience=5)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real Lightning checkpoint after 2 of the scripted epochs, as torch.load reads it."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    folder = tmp_path_factory.mktemp("ckpt")
    fit(Tiny(val_losses=SCRIPTED), epochs=2, validate=True, enable_checkpointing=True,
        callbacks=[Regularize(plugins()),
                   ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1)])
    loaded = torch.load(folder / "last.ckpt", weights_only=False)
    entry = loaded["callbacks"]["Regularize"]
    assert entry["step"] == 8 and entry["plugins"][0]["state"]["best"] == pytest.approx(0.5)
    return loaded


def resume(checkpoint: dict[str, Any], path: Any, reg: Regularize, epochs: int = 3) -> L.Trainer:
    torch.save(checkpoint, path)
    t = trainer(epochs, [reg])
    t.fit(Tiny(val_losses=SCRIPTED), data(), data(seed=1), ckpt_path=str(path))
    return t


def fresh_states(plugins: list[Any]) -> list[dict[str, Any]]:
    return [copy.deepcopy(p.state_dict()) for p in plugins]


def assert_nothing_loaded(reg: Regularize, before: list[dict[str, Any]]) -> None:
    assert all(same(p.state_dict(), b) for p, b in zip(reg.manager.plugins, before, strict=True))
    assert reg.manager.plugins[0].best_epoch != 1  # the checkpoint's best epoch did not arrive
    if reg.run is not None:
        assert (reg.run.step, reg.run.epoch, reg.history) == (0, 0, {})


def resuming(path: Any) -> str:
    return re.escape(f"Regularize.load_state_dict, resuming trainer.fit(ckpt_path='{path}'): ")


def test_the_intact_checkpoint_resumes_through_the_same_path(checkpoint, tmp_path):
    reg = Regularize(plugins())
    resume(copy.deepcopy(checkpoint), tmp_path / "good.ckpt", reg)
    assert reg.run is not None and reg.run.step == 12 and reg.run.epoch == 3
    assert reg.manager.plugins[0].best_epoch == 1
    assert reg.manager.plugins[0].best == pytest.approx(0.5)


@pytest.mark.parametrize(("damage", "what"), [
    (lambda e: e.pop("step"), "KeyError: 'step'"),
    (lambda e: e.update(epoch="x"), "ValueError: invalid literal for int() with base 10: 'x'"),
    (lambda e: e.update(history=5), "AttributeError: 'int' object has no attribute 'items'"),
    (lambda e: e["plugins"][2].pop("state"), "KeyError: 'state'"),
    (lambda e: e.update(plugins=None), "TypeError: 'NoneType' object is not iterable"),
], ids=["no-step", "epoch-not-int", "history-not-dict", "plugin-without-state", "no-plugins"])
def test_a_malformed_entry_is_refused_at_fit_start_and_nothing_is_loaded(checkpoint, tmp_path,
                                                                         damage, what):
    bad = copy.deepcopy(checkpoint)
    damage(bad["callbacks"]["Regularize"])
    reg = Regularize(plugins())
    before = fresh_states(reg.manager.plugins)
    path = tmp_path / "bad.ckpt"
    with pytest.raises(ValueError, match="^" + resuming(path) + re.escape(
            f"not a checkpoint written by Regularize.state_dict() ({what}); nothing was loaded")):
        resume(bad, path, reg)
    assert_nothing_loaded(reg, before)


def test_an_entry_that_is_not_a_dict_is_refused_when_lightning_hands_it_over(checkpoint,
                                                                               tmp_path):
    bad = copy.deepcopy(checkpoint)
    bad["callbacks"]["Regularize"] = ["step", 8]
    reg = Regularize(plugins())
    before = fresh_states(reg.manager.plugins)
    with pytest.raises(ValueError, match=r"^Regularize.load_state_dict: not a checkpoint written "
                                         r"by Regularize.state_dict\(\) \(a list, not a dict\); "
                                         r"nothing was loaded$"):
        resume(bad, tmp_path / "bad.ckpt", reg)
    assert_nothing_loaded(reg, before)
    with pytest.raises(ValueError, match=r"^Regularize\(optimizer=0\).load_state_dict: not a "
                                         r"checkpoint written by Regularize\(optimizer=0\)"
                                         r".state_dict\(\) \(a str, not a dict\)"):
        Regularize(plugins(), optimizer=0).load_state_dict("step")  # type: ignore[arg-type]


def test_a_checkpoint_of_other_plugins_is_refused_naming_both_lists(checkpoint, tmp_path):
    reg = Regularize([EarlyStopping(patience=5), L2(1e-2)])
    before = fresh_states(reg.manager.plugins)
    path = tmp_path / "other.ckpt"
    with pytest.raises(ValueError, match="^" + resuming(path) + re.escape(
            "the checkpoint holds plugins ['early_stopping', 'l2', 'early_stopping'], this run "
            "has ['early_stopping', 'l2']; nothing was loaded")):
        resume(copy.deepcopy(checkpoint), path, reg)
    assert_nothing_loaded(reg, before)


@pytest.mark.parametrize(("setup", "cause"), [
    (lambda e, ps: e["plugins"][2]["state"].update(wait="corrupt"),
     "ValueError: invalid literal for int() with base 10: 'corrupt'"),
    (lambda e, ps: ps.__setitem__(2, EarlyStopping(patience=5, monitor="val_acc")),
     "ValueError: early_stopping: the checkpoint was written for monitor='val_loss', this "
     "plugin has monitor='val_acc'"),
], ids=["corrupt-state", "other-monitor"])
def test_a_plugin_refusing_its_state_leaves_the_ones_before_it_unloaded(checkpoint, tmp_path,
                                                                        setup, cause):
    bad, ps = copy.deepcopy(checkpoint), plugins()
    setup(bad["callbacks"]["Regularize"], ps)
    reg = Regularize(ps)
    before = fresh_states(ps)
    path = tmp_path / "refused.ckpt"
    with pytest.raises(ValueError, match="^" + resuming(path) + re.escape(
            "the state of plugin 3 ('early_stopping') cannot be loaded, so no plugin's state "
            f"was changed: {cause}")):
        resume(bad, path, reg)
    assert_nothing_loaded(reg, before)  # plugin 1 was loaded first, then put back


def test_loading_into_a_running_fit_names_load_state_dict_and_changes_nothing(checkpoint):
    entry = copy.deepcopy(checkpoint["callbacks"]["Regularize"])
    entry["plugins"][2]["state"]["wait"] = "corrupt"
    reg = Regularize(plugins())
    seen: dict[str, Any] = {}

    class LoadMidFit(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
            if trainer.current_epoch == 1:
                seen["before"] = fresh_states(reg.manager.plugins)
                seen["clock"] = (reg.run.step, reg.run.epoch, copy.deepcopy(reg.history))
                with pytest.raises(ValueError, match=r"^Regularize.load_state_dict: the state "
                                                     r"of plugin 3 \('early_stopping'\) cannot "
                                                     r"be loaded"):
                    reg.load_state_dict(entry)
                seen["after"] = fresh_states(reg.manager.plugins)
                seen["clock after"] = (reg.run.step, reg.run.epoch, copy.deepcopy(reg.history))

    fit(Tiny(val_losses=[0.9, 0.8]), epochs=2, callbacks=[reg, LoadMidFit()], validate=True)
    assert all(same(a, b) for a, b in zip(seen["after"], seen["before"], strict=True))
    assert seen["clock after"] == seen["clock"] and seen["clock"][:2] == (4, 1)
    assert reg.manager.plugins[0].best == pytest.approx(0.8)  # the fit went on as before

"""Freeze without a framework: the schedule (which parameters unfreeze when), the frozen set
following the clock, the in-step hold used where a framework cannot freeze for real (Keras),
its configuration and registry name."""

from __future__ import annotations

import numpy as np
import pytest

import regplug
from regplug.numpy_ops import NumpyOps
from regplug.plugins import Freeze
from regplug.plugins.freeze import unfreeze_epochs
from regplug.testing import numpy_run

NAMES = ["embed.weight", "layers.0.weight", "layers.0.bias", "layers.1.weight", "head.weight",
         "head.bias"]


def _run(ops: NumpyOps | None = None) -> regplug.Run:
    run = numpy_run({n: np.ones((2, 2)) if n.endswith("weight") else np.zeros(2)
                     for n in NAMES}, kinds={"embed.weight": "embedding"})
    if ops is not None:
        run.ops = ops
    return run


def test_unfreeze_epochs_all_at_once_and_gradually():
    assert unfreeze_epochs(["a", "b"], None) == {"a": None, "b": None}
    depths = {"e": 0, "a": 1, "b": 1, "h": 2}
    assert unfreeze_epochs(["e", "a", "b"], 2, depths=depths) == {"e": 3, "a": 2, "b": 2}
    with pytest.raises(ValueError, match="needs a number of epochs"):
        unfreeze_epochs(["e"], None, depths=depths)


def test_the_frozen_set_follows_the_epoch_and_the_end_gives_everything_back():
    run = _run()
    plugin = Freeze(1, gradual=True, exclude="head.*")
    plugin.on_train_begin(run)
    ops: NumpyOps = run.ops  # type: ignore[assignment]
    assert ops.frozen == {"embed.weight", "layers.0.weight", "layers.0.bias",
                          "layers.1.weight"}
    seen = []
    for epoch in range(1, 5):
        run.epoch = epoch
        plugin.on_epoch_begin(run, epoch)
        seen.append(set(ops.frozen))
    assert seen == [{"embed.weight", "layers.0.weight", "layers.0.bias"}, {"embed.weight"},
                    set(), set()]
    assert plugin.frozen() == []
    run.epoch = 1  # the clock moved back (a resumed run): the next batch follows it
    plugin.on_batch_begin(run, 0)
    assert ops.frozen == {"embed.weight", "layers.0.weight", "layers.0.bias"}
    plugin.on_train_end(run)
    assert ops.frozen == set()


class HoldingOps(NumpyOps):
    """A framework that cannot take parameters out of its compiled step (as Keras)."""

    def set_trainable_(self, params, trainable):
        return False


def test_where_the_framework_cannot_freeze_the_step_holds_the_weights_bit_for_bit():
    run = _run(HoldingOps())
    plugin = Freeze(2, include="layers.*")
    plugin.on_train_begin(run)
    tensors = {p.name: p.tensor for p in run.params}
    before = {n: t.copy() for n, t in tensors.items()}
    for epoch in range(3):
        run.epoch = epoch
        run.update_scalars()
        plugin.on_epoch_begin(run, epoch)
        run.ops.grads = {n: np.full_like(t, 0.5) for n, t in tensors.items()}
        plugin.on_before_step(run)
        zeroed = {n for n, g in run.ops.grads.items() if not g.any()}
        for n, t in tensors.items():  # an update that moves everything, decay included
            t -= 0.1 * run.ops.grads[n] + 0.01 * t + 0.3
        plugin.on_step(run)
        layers = {"layers.0.weight", "layers.0.bias", "layers.1.weight"}
        if epoch < 2:
            assert zeroed == layers
            for n in layers:
                np.testing.assert_array_equal(tensors[n], before[n])
        else:
            assert zeroed == set()
            assert not np.array_equal(tensors["layers.0.weight"], before["layers.0.weight"])
        assert not np.array_equal(tensors["head.weight"], before["head.weight"])


def test_config_state_and_registry_name():
    plugin = regplug.create_plugin("freeze", epochs=2, gradual=True, include="layers.*")
    assert isinstance(plugin, Freeze)
    assert plugin.config() == {"epochs": 2, "gradual": True, "depth": None,
                               "kinds": list(regplug.PARAM_KINDS), "include": ["layers.*"],
                               "exclude": []}
    Freeze(**plugin.config()).load_state_dict(plugin.state_dict())  # the same: accepted
    with pytest.raises(ValueError, match="configured differently"):
        Freeze(3).load_state_dict(plugin.state_dict())
    assert repr(plugin) == "Freeze(epochs=2, gradual=True, include=['layers.*'])"
    assert repr(Freeze(None, kinds="weight")) == "Freeze(epochs=None, kinds=['weight'])"


def test_nothing_selected_is_refused_naming_plugin_argument_and_fix():
    run = _run()
    with pytest.raises(ValueError, match=r"^Freeze: argument 'include' \('dec\.\*'\) matches "
                       "none of the 6 parameters the optimizer holds .*give them to the "
                       "optimizer up front"):
        Freeze(1, include="dec.*").on_train_begin(run)
    with pytest.raises(ValueError, match="Freeze: argument 'kinds/include/exclude'"):
        Freeze(1, kinds="embedding", exclude="embed.*").on_train_begin(run)
    with pytest.raises(ValueError, match="freeze every parameter the optimizer holds in "
                       "epoch 0, so nothing would train; leave the head out"):
        Freeze().on_train_begin(run)
    with pytest.raises(ValueError, match="nothing would train"):
        Freeze(1, gradual=True).on_train_begin(run)
    assert run.ops.frozen == set()  # type: ignore[attr-defined]
    Freeze(0, gradual=True).on_train_begin(run)  # ULMFiT over the whole model: head first
    assert run.ops.frozen == set(NAMES) - {"head.weight", "head.bias"}  # type: ignore[attr-defined]

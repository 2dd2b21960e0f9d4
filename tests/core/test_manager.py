"""The plugin manager: validation that names the faulty plugin, and how results combine."""

from __future__ import annotations

import numpy as np
import pytest

import regplug
from regplug.testing import NumpyLoop


class Misspelled(regplug.Plugin):
    @regplug.hookimpl
    def on_los(self, run, loss):  # typo for on_loss
        return None


class WrongArgument(regplug.Plugin):
    @regplug.hookimpl
    def on_step(self, run, stp):  # typo for step
        pass


class MarkedHelper(regplug.Plugin):
    @regplug.hookimpl
    def compute(self, run):
        pass


class Undecorated:
    """A plain object: methods named after hooks count without the decorator."""

    name = "undecorated"

    def __init__(self):
        self.steps = 0

    def on_step(self, run, step):
        self.steps += 1


def test_misspelled_hook_is_refused_with_plugin_name_and_suggestion():
    with pytest.raises(regplug.PluginValidationError, match=r"misspelled: .*'on_los'.*did you mean 'on_loss'"):
        regplug.PluginManager([Misspelled()])


def test_misspelled_hook_argument_is_refused_naming_the_argument():
    with pytest.raises(regplug.PluginValidationError, match=r"wrong_argument: hook on_step\(\) takes argument\(s\) \['stp'\]"):
        regplug.PluginManager([WrongArgument()])


def test_hookimpl_on_a_non_hook_method_is_refused():
    with pytest.raises(regplug.PluginValidationError, match="marked_helper: method 'compute' is not a regplug hook"):
        regplug.PluginManager([MarkedHelper()])


def test_registering_a_class_instead_of_an_instance_is_refused():
    with pytest.raises(regplug.PluginValidationError, match=r"register an instance, not the class \(write L2\(...\)\)"):
        regplug.PluginManager([regplug.plugins.L2])


def test_registering_the_same_object_twice_is_refused():
    l2 = regplug.plugins.L2(0.1)
    with pytest.raises(regplug.PluginValidationError, match="the same plugin object was given twice"):
        regplug.PluginManager([l2, l2])


def test_undecorated_methods_named_after_hooks_are_called():
    plugin = Undecorated()
    loop = NumpyLoop({"w": np.ones((2, 2))}, [plugin])
    loop.step({"w": np.zeros((2, 2))})
    loop.step({"w": np.zeros((2, 2))})
    assert plugin.steps == 2


def test_penalties_of_several_plugins_add_up():
    params = {"w": np.array([[1.0, -2.0]])}
    loop = NumpyLoop(params, [regplug.plugins.L2(0.5), regplug.plugins.L1(0.25)])
    assert loop.penalty() == pytest.approx(0.5 * 5.0 + 0.25 * 3.0)


def test_hooks_fire_in_training_order(recorder):
    loop = NumpyLoop({"w": np.ones((1, 1))}, [recorder])
    loop.step({"w": np.zeros((1, 1))})
    loop.step({"w": np.zeros((1, 1))})
    assert loop.epoch_end({"loss": 1.0}) is False
    loop.step({"w": np.zeros((1, 1))})
    loop.close()
    assert recorder.events == [
        ("train_begin", 0, 0),
        ("epoch_begin", 0, 0), ("loss", 0, 0), ("before_step", 0, 0), ("step", 0, 1),
        ("loss", 0, 1), ("before_step", 0, 1), ("step", 0, 2),
        ("epoch_end", 0, 2),
        ("epoch_begin", 1, 2), ("loss", 1, 2), ("before_step", 1, 2), ("step", 1, 3),
        ("train_end", 1, 3),
    ]


def test_on_loss_returning_something_else_than_a_penalty_is_an_error():
    class ReturnsFloat(regplug.Plugin):
        @regplug.hookimpl
        def on_loss(self, run, loss):
            return 1.0

    loop = NumpyLoop({"w": np.ones((1, 1))}, [ReturnsFloat()])
    with pytest.raises(TypeError, match="on_loss must return a regplug.Penalty or None"):
        loop.step({"w": np.zeros((1, 1))})


def test_a_stop_vote_carries_its_reason_and_source():
    class StopAtOne(regplug.Plugin):
        @regplug.hookimpl
        def on_epoch_end(self, run, epoch, logs):
            if logs["val_loss"] > 1:
                run.stop(f"val_loss {logs['val_loss']} above 1", source=self.name)

    loop = NumpyLoop({"w": np.ones((1, 1))}, [StopAtOne()])
    assert loop.epoch_end({"val_loss": 0.5}) is False
    assert loop.epoch_end({"val_loss": 2.0}) is True
    (request,) = loop.run.stop_requests
    assert str(request) == "stop_at_one: val_loss 2.0 above 1"
    assert request.epoch == 1
    assert loop.run.history["val_loss"] == [0.5, 2.0]


def test_plugin_names_default_to_snake_case_and_can_be_overridden():
    assert regplug.plugins.DecoupledWeightDecay().name == "decoupled_weight_decay"
    assert regplug.plugins.L2().name == "l2"
    renamed = regplug.plugins.L2(0.1)
    renamed.name = "l2_encoder"
    assert renamed.name == "l2_encoder" and regplug.plugins.L2().name == "l2"


def test_per_step_hooks_run_in_list_order_with_tryfirst_and_trylast():
    calls = []

    def make(label, **opts):
        class Ordered(regplug.Plugin):
            name = label

            @regplug.hookimpl(**opts)
            def on_step(self, run, step):
                calls.append(label)

            @regplug.hookimpl(**opts)
            def on_before_step(self, step):
                calls.append(f"{label}:before")
        return Ordered()

    plugins = [make("a"), make("late", trylast=True), make("b"), make("early", tryfirst=True)]
    loop = NumpyLoop({"w": np.ones((1, 1))}, plugins)
    loop.clock.manager.hook.on_step(run=loop.run, step=0)  # pluggy's own dispatch
    expected, calls[:] = list(calls), []
    loop.step({"w": np.zeros((1, 1))})
    assert expected == ["early", "a", "b", "late"]
    assert calls == [f"{x}:before" for x in expected] + expected


def test_a_stop_voted_on_another_process_stops_this_one_with_a_reason():
    class OtherRankVotes:
        rank, size = 1, 2

        def __init__(self):
            self.asked = []

        def any(self, flag):
            self.asked.append(flag)
            return True  # rank 0 voted to stop

    loop = NumpyLoop({"w": np.ones((1, 1))}, [])
    loop.run.world = OtherRankVotes()
    assert loop.epoch_end({"val_loss": 1.0}) is True
    assert loop.run.world.asked == [False]  # this rank had no vote of its own
    (request,) = loop.run.stop_requests
    assert str(request) == "rank 1: another process voted to stop"


def test_on_several_processes_plugins_see_the_logs_averaged_over_the_processes():
    class TwoRanks:
        rank, size = 0, 2

        def any(self, flag):
            return flag

        def mean(self, keys, values):
            other = {"loss": 0.5, "val_loss": 0.9}  # what the other rank passed
            return [(v + other[k]) / 2 for k, v in zip(keys, values)]

    seen = []

    class Watch(regplug.Plugin):
        @regplug.hookimpl
        def on_epoch_end(self, logs):
            seen.append(dict(logs))

    loop = NumpyLoop({"w": np.ones((1, 1))}, [Watch()])
    loop.run.world = TwoRanks()
    loop.epoch_end({"val_loss": 0.7, "loss": 0.3})
    assert seen == [{"val_loss": pytest.approx(0.8), "loss": pytest.approx(0.4)}]
    assert loop.run.history["val_loss"] == [pytest.approx(0.8)]


def test_every_hook_runs_the_plugins_in_the_order_they_were_listed():
    calls: list[tuple[str, str]] = []

    def make(label: str) -> regplug.Plugin:
        class Listed(regplug.Plugin):
            name = label

            def on_train_begin(self, run):
                calls.append(("train_begin", label))

            def on_epoch_begin(self, run, epoch):
                calls.append(("epoch_begin", label))

            def on_batch_begin(self, run, step):
                calls.append(("batch_begin", label))

            def on_loss(self, run, loss):
                calls.append(("loss", label))

            def on_before_step(self, run, step):
                calls.append(("before_step", label))

            def on_step(self, run, step):
                calls.append(("step", label))

            def on_epoch_end(self, run, epoch, logs):
                calls.append(("epoch_end", label))

            def on_train_end(self, run):
                calls.append(("train_end", label))
        return Listed()

    loop = NumpyLoop({"w": np.ones((1, 1))}, [make("first"), make("second"), make("third")])
    loop.step({"w": np.zeros((1, 1))})
    loop.epoch_end({"loss": 1.0})
    loop.close()
    hooks = list(dict.fromkeys(hook for hook, _ in calls))
    assert hooks == ["train_begin", "epoch_begin", "batch_begin", "loss", "before_step", "step",
                     "epoch_end", "train_end"]
    for hook in hooks:
        assert [label for h, label in calls if h == hook] == ["first", "second", "third"], hook


def test_a_plugin_reads_the_key_an_earlier_plugin_added_without_any_warning(recwarn):
    # GeneralizationGap adds "gap" to the logs; EarlyStopping listed after it monitors it.
    from regplug.plugins import EarlyStopping, GeneralizationGap

    stopper = EarlyStopping(monitor="gap", patience=2, restore_best_weights=False)
    loop = NumpyLoop({"w": np.ones((1, 1))}, [GeneralizationGap(), stopper])
    stopped = [loop.epoch_end({"loss": 1.0, "val_loss": 1.0 + gap}) for gap in (0.1, 0.3, 0.5)]
    assert [w for w in recwarn if issubclass(w.category, regplug.RegplugWarning)] == []
    assert stopped == [False, False, True]
    assert loop.run.history["gap"] == pytest.approx([0.1, 0.3, 0.5])
    assert "gap" in str(loop.run.stop_requests[0])


def test_the_monitor_check_runs_after_the_plugins_and_still_names_a_missing_key():
    from regplug.plugins import EarlyStopping

    loop = NumpyLoop({"w": np.ones((1, 1))}, [EarlyStopping(monitor="val_los", mode="min")])
    with pytest.warns(regplug.RegplugWarning, match="Did you mean 'val_loss'"):
        loop.epoch_end({"loss": 1.0, "val_loss": 1.0})


def test_the_old_capability_name_batch_training_still_works_with_a_deprecation_warning():
    from regplug.plugin import check_requirements

    class Old(regplug.Plugin):
        requires = ("batch_training",)

    with pytest.warns(DeprecationWarning, match="write requires = \\('trial_training',\\)"):
        check_requirements([Old()], {"trial_training": None}, adapter="a test adapter")
    with pytest.warns(DeprecationWarning), pytest.raises(
            regplug.UnsupportedPluginError, match="requires 'trial_training'.*no loss"):
        check_requirements([Old()], {"trial_training": "no loss"}, adapter="a test adapter")

"""Prepared per-update hooks (``prepare_hooks``): the step window calls them in place of the
dispatch, in the same order as the dispatch, and a plugin without them is called as before."""

from __future__ import annotations

import numpy as np
import pytest

import regplug
from regplug.errors import PluginValidationError
from regplug.manager import PluginManager
from regplug.plugins import L2, DecoupledWeightDecay, MaxNorm, ProximalL1
from regplug.testing import NumpyLoop, numpy_run


class Recorder(regplug.Plugin):
    """Records the order of its calls and what it saw, through the plain hooks."""

    def __init__(self, log: list[tuple[str, object]], tag: str) -> None:
        self.log, self.tag = log, tag

    @regplug.hookimpl
    def on_before_step(self, step, run):  # arguments in the other order on purpose
        self.log.append((f"{self.tag}.before", (step, run.step)))

    @regplug.hookimpl
    def on_step(self, step):
        self.log.append((f"{self.tag}.step", step))

    @regplug.hookimpl
    def on_loss(self, loss, run):
        self.log.append((f"{self.tag}.loss", loss))


class Prepared(regplug.Plugin):
    """A plugin with prepared hooks whose plain hooks must not be called by the window."""

    def __init__(self, log: list[tuple[str, object]], tag: str) -> None:
        self.log, self.tag = log, tag
        self.prepared_for: list[object] = []

    def prepare_hooks(self, run):
        self.prepared_for.append(run)
        return {"on_before_step": lambda: self.log.append((f"{self.tag}.before", run.step)),
                "on_step": lambda: self.log.append((f"{self.tag}.step", run.step - 1))}

    @regplug.hookimpl
    def on_before_step(self, run):
        raise AssertionError("the window should call the prepared on_before_step")

    @regplug.hookimpl
    def on_step(self, run):
        raise AssertionError("the window should call the prepared on_step")


def test_prepared_and_plain_hooks_run_in_list_order_with_their_arguments():
    log: list[tuple[str, object]] = []
    first, middle, last = Recorder(log, "a"), Prepared(log, "b"), Recorder(log, "c")
    loop = NumpyLoop({"w": np.ones((2, 2))}, [first, middle, last])
    for _ in range(2):
        loop.step({"w": np.zeros((2, 2))})
    assert log == [
        ("a.loss", 0.0), ("c.loss", 0.0),
        ("a.before", (0, 0)), ("b.before", 0), ("c.before", (0, 0)),
        ("a.step", 0), ("b.step", 0), ("c.step", 0),
        ("a.loss", 0.0), ("c.loss", 0.0),
        ("a.before", (1, 1)), ("b.before", 1), ("c.before", (1, 1)),
        ("a.step", 1), ("b.step", 1), ("c.step", 1),
    ]
    assert middle.prepared_for == [loop.run, loop.run]  # once per hook, not per step


def test_tryfirst_moves_a_plain_hook_before_prepared_ones():
    log: list[tuple[str, object]] = []

    class First(regplug.Plugin):
        @regplug.hookimpl(tryfirst=True)
        def on_step(self, step):
            log.append(("first.step", step))

    loop = NumpyLoop({"w": np.ones((2, 2))}, [Prepared(log, "b"), First()])
    loop.step({"w": np.zeros((2, 2))})
    assert [name for name, _ in log] == ["b.before", "first.step", "b.step"]


@pytest.mark.parametrize("plugin", [L2(0.1), DecoupledWeightDecay(0.2), ProximalL1(0.3),
                                    MaxNorm(0.5)], ids=repr)
def test_a_built_in_plugin_prepared_or_dispatched_gives_the_same_weights(plugin):
    """The window calls the prepared functions; a subclass without them is dispatched:
    the same parameters bit for bit, with a strength that changes every step."""
    class Dispatched:
        """The plugin's hooks without its prepare_hooks: the window dispatches them."""

        def __init__(self, inner):
            self.inner = inner

        def on_train_begin(self, run):
            self.inner.on_train_begin(run)

        def on_loss(self, run):
            on_loss = getattr(self.inner, "on_loss", None)
            return None if on_loss is None else on_loss(run)

        def on_before_step(self, run):
            getattr(self.inner, "on_before_step", lambda run: None)(run)

        def on_step(self, run):
            getattr(self.inner, "on_step", lambda run: None)(run)

    arg = next(iter(plugin._schedules))
    schedule = {"schedule": "linear", "start": 0.0, "end": 2 * plugin._schedules[arg].value,
                "span": 5, "per": "step"} if arg != "max_value" else 0.5
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "bias": rng.normal(size=3)}
    grads = [{"w": rng.normal(size=(3, 4)), "bias": rng.normal(size=3)} for _ in range(5)]
    built = [type(plugin)(**{arg: schedule}, kinds="all") for _ in range(2)]
    loops = [NumpyLoop(params, [built[0]], lr=0.1), NumpyLoop(params, [Dispatched(built[1])],
                                                               lr=0.1)]
    for g in grads:
        for loop in loops:
            loop.step(g)
    for name in params:
        np.testing.assert_array_equal(loops[0].params[name], loops[1].params[name])
    assert not np.array_equal(loops[0].params["w"], params["w"])


def test_a_prepare_hooks_that_returns_no_mapping_is_refused_naming_the_plugin():
    class Broken(regplug.Plugin):
        def prepare_hooks(self, run):
            return [lambda: None]

        @regplug.hookimpl
        def on_step(self, run):
            pass

    loop = NumpyLoop({"w": np.ones((2, 2))}, [Broken()])
    with pytest.raises(PluginValidationError, match=r"broken: prepare_hooks\(run\) must return "
                                                    r"a mapping .* got list"):
        loop.step({"w": np.zeros((2, 2))})


def test_run_caller_of_a_hook_with_a_wrapper_goes_through_pluggy():
    log = []

    class Wrapper(regplug.Plugin):
        @regplug.hookimpl(wrapper=True)
        def on_step(self, step):
            log.append(("enter", step))
            result = yield
            log.append(("exit", step))
            return result

    run = numpy_run({"w": np.ones((1, 1))})
    pm = PluginManager([Wrapper(), MaxNorm(0.5)])
    assert pm.run_caller("on_step", run, "step")(7) == []
    assert log == [("enter", 7), ("exit", 7)]
    assert run.params[0].tensor.round(6).tolist() == [[0.5]]


def test_a_shared_plugin_keeps_each_runs_own_parameters():
    """One plugin object serving two runs at once: each window's prepared hook acts on its
    own run's parameters, whichever run bound the plugin last."""
    decay = DecoupledWeightDecay(0.5)
    a = NumpyLoop({"w": np.ones((1, 1))}, [decay], lr=0.1)
    b = NumpyLoop({"w": np.full((1, 1), 2.0)}, [decay], lr=0.2)
    for _ in range(2):
        a.step({"w": np.zeros((1, 1))})
        b.step({"w": np.zeros((1, 1))})
    assert a.params["w"].item() == pytest.approx(0.95 ** 2)
    assert b.params["w"].item() == pytest.approx(2.0 * 0.9 ** 2)


def test_a_misspelled_or_unimplemented_prepared_hook_is_refused_naming_it():
    class Typo(regplug.Plugin):
        def prepare_hooks(self, run):
            return {"on_steps": lambda: None}

        @regplug.hookimpl
        def on_step(self, run):
            pass

    class Unimplemented(regplug.Plugin):
        def prepare_hooks(self, run):
            return {"on_before_step": lambda: None}

        @regplug.hookimpl
        def on_step(self, run):
            pass

    typo = NumpyLoop({"w": np.ones((2, 2))}, [Typo()])
    with pytest.raises(PluginValidationError,
                       match=r"typo: prepare_hooks\(run\) prepared 'on_steps', which is not a "
                             r"hook fired at every update; did you mean 'on_step'\?"):
        typo.step({"w": np.zeros((2, 2))})
    unimplemented = NumpyLoop({"w": np.ones((2, 2))}, [Unimplemented()])
    with pytest.raises(PluginValidationError,
                       match=r"unimplemented: .*'on_before_step', but the plugin does not "
                             r"implement on_before_step"):
        unimplemented.step({"w": np.zeros((2, 2))})


def test_a_subclass_that_overrides_a_hook_gets_its_override_called():
    calls = []

    class CountedMaxNorm(MaxNorm):
        def on_step(self, run):
            calls.append(run.step)
            super().on_step(run)

    class NoPenalty(L2):
        def on_loss(self, run):
            return None

    loop = NumpyLoop({"w": np.full((1, 1), 3.0)}, [CountedMaxNorm(1.0), NoPenalty(0.5)], lr=0.1)
    for _ in range(3):
        loop.step({"w": np.zeros((1, 1))})
    assert calls == [1, 2, 3]
    assert loop.params["w"].round(6).tolist() == [[1.0]]  # clipped, never decayed by L2
    assert MaxNorm(1.0).prepare_hooks(loop.run).keys() == {"on_step"}
    assert CountedMaxNorm(1.0).prepare_hooks(loop.run) == {}

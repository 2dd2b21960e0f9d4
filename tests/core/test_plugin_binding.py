"""A plugin that keeps state serves one running run at a time: a second run that starts while
the first holds it is refused with the plugin's name and the fix; stateless plugins are shared
freely, and a run that ends — in any way — lets go of its plugins."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import regplug
from regplug.plugins import L2, EarlyStopping
from regplug.testing import NumpyLoop

REFUSAL = (r"early_stopping: this plugin object is already in use by another run that has not "
           r"ended \(NumpyLoop\).*Create one instance per run")


def loop(plugins: list[object]) -> NumpyLoop:
    return NumpyLoop({"w": np.zeros((1, 1))}, plugins)


def test_one_early_stopping_in_two_running_runs_is_refused_naming_it():
    stopper = EarlyStopping(patience=1)
    first = loop([stopper])
    with pytest.raises(regplug.UsageError, match=REFUSAL):
        loop([L2(0.1), stopper])
    first.epoch_end({"val_loss": 0.5})
    assert stopper.best == 0.5  # the first run kept its plugin and its state


def test_after_the_first_run_ends_the_plugin_serves_the_next():
    stopper = EarlyStopping()
    first = loop([stopper])
    first.close()
    second = loop([stopper])
    second.epoch_end({"val_loss": 0.5})
    second.close()


def test_stateless_plugins_may_serve_two_runs_at_once():
    l2 = L2(0.1)
    first, second = loop([l2]), loop([l2])
    first.close()
    second.close()


def test_a_run_whose_train_begin_fails_lets_go_of_its_plugins():
    class Refuses(regplug.Plugin):
        def on_train_begin(self, run):
            raise RuntimeError("not today")

    stopper = EarlyStopping()
    with pytest.raises(RuntimeError, match="not today"):
        loop([stopper, Refuses()])
    loop([stopper]).close()


def test_a_run_dropped_without_closing_lets_go_when_collected():
    stopper = EarlyStopping()
    first = loop([stopper])
    del first
    gc.collect()
    loop([stopper]).close()


def test_two_threads_starting_runs_with_one_plugin_get_one_run_and_one_refusal():
    stopper = EarlyStopping()
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            outcomes.append(loop([stopper]))
        except regplug.UsageError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["NumpyLoop", "UsageError"]


def test_two_attach_blocks_sharing_early_stopping_are_refused_and_model_1_keeps_its_weights():
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import attach

    torch.manual_seed(0)
    models = [torch.nn.Linear(2, 1) for _ in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    stopper = EarlyStopping(patience=5)
    with attach(models[0], opts[0], [stopper]) as reg:
        reg.epoch_end({"val_loss": 0.5})
        best = models[0].weight.detach().clone()
        with pytest.raises(regplug.UsageError, match=r"early_stopping: this plugin object is "
                                                     r"already in use .*\(attach\)"):
            attach(models[1], opts[1], [stopper])
        with torch.no_grad():
            models[0].weight.add_(1.0)
        reg.epoch_end({"val_loss": 0.9})
    assert torch.equal(models[0].weight, best)   # its own best epoch came back
    with attach(models[1], opts[1], [stopper]):  # and the plugin is free again
        pass

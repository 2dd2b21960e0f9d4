"""The Keras callback's corner cases of robustness round 3 (issue 16): gradient accumulation
with penalties (one per optimizer update, also without a closed form), and memory over many
re-fits of one model."""

from __future__ import annotations

import gc
import tracemalloc

import keras
import pytest
from _keras_models import BACKEND, assert_same_weights, data, fit, sgd
from keras import ops

import regplug
from regplug.adapters.keras import Regularize
from regplug.plugins import L2

X, Y = data()


def dense(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(1)], name="dense")


class SquaredSum(regplug.Plugin):
    """A third-party penalty without a closed form: ``s·(Σθ)²`` over every kernel."""

    name = "squared_sum"

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @regplug.hookimpl
    def on_loss(self, run):
        kernels = run.parameters()
        return regplug.Penalty("squared_sum_penalty", value=lambda: self.strength * sum(
            ops.square(ops.sum(k.tensor)) for k in kernels))


@pytest.mark.parametrize("plugin", [lambda: L2(0.05), lambda: SquaredSum(0.01)],
                         ids=["L2", "third-party-penalty"])
def test_accumulation_adds_the_penalty_once_per_update(plugin):
    """Two micro-batches of 8 averaged into one update == one batch of 16 with the penalty
    once (Keras averages the accumulated gradients)."""
    accumulated = dense()
    accumulated.compile(optimizer=keras.optimizers.SGD(0.05, gradient_accumulation_steps=2),
                        loss="mse")
    fit(accumulated, X, Y, batch_size=8, callbacks=[Regularize([plugin()])])
    one_batch = dense()
    one_batch.compile(optimizer=sgd(0.05), loss="mse")
    fit(one_batch, X, Y, batch_size=16, callbacks=[Regularize([plugin()])])
    assert_same_weights(accumulated, one_batch, rtol=1e-5, atol=1e-6)
    plain = dense()
    plain.compile(optimizer=sgd(0.05), loss="mse")
    fit(plain, X, Y, batch_size=16)
    with pytest.raises(AssertionError):  # the penalty made a difference
        assert_same_weights(plain, one_batch, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the traced steps were kept alive by "
                    "TensorFlow's custom-gradient registry (a TensorFlow-only leak)")
def test_refitting_with_regularize_keeps_no_earlier_fits_traced_step():
    """Each fit with Regularize retraces the step (its patches are in it); TensorFlow kept
    every earlier trace alive (+~2 MB a fit). Now the heap stays flat, as for a plain fit."""
    from tensorflow.python.framework.func_graph import FuncGraph

    model = dense()
    model.compile(optimizer=sgd(), loss="mse")

    def refit(times):
        for _ in range(times):
            fit(model, X, Y, epochs=1, batch_size=32, callbacks=[Regularize([L2(0.01)])])
        gc.collect()
        return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

    graphs = refit(3)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        assert refit(10) == graphs  # no traced step of an earlier fit is kept
        grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before,
                                                                                "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 10 * 30_000, f"{grown / 10 / 1e3:.0f} KB a fit"  # was ~220 KB a fit

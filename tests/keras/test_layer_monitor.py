"""LayerMonitor in Keras fit: weight norms, update ratio, zeros and dead units in the History
(measured from the weights); no gradient norm (on_before_step is traced)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from regplug.adapters.keras import Regularize
from regplug.plugins import LayerMonitor


def _model(dead: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    first = keras.layers.Dense(8, activation="relu", name="first",
                               bias_initializer=keras.initializers.Constant(-100.0)
                               if dead else "zeros")
    return keras.Sequential([keras.Input((4,)), first, keras.layers.Dense(3, name="head")])


def _fit(model, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 4)).astype("float32")
    y = rng.integers(0, 3, 64)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    starts = [model.layers[0].kernel.numpy().copy()]

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            starts.append(model.layers[0].kernel.numpy().copy())

    reg = Regularize([LayerMonitor()])
    history = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[reg, Keep()])
    return history.history, starts


def test_history_holds_the_numbers_of_the_weights():
    h, starts = _fit(_model())
    key = "first.kernel"
    assert h[f"weight_norm/{key}"] == pytest.approx(
        [float(np.linalg.norm(s)) for s in starts[1:]], rel=1e-5)
    ratios = [float(np.linalg.norm(b - a) / np.linalg.norm(a))
              for a, b in itertools.pairwise(starts)]
    assert h[f"update_ratio/{key}"] == pytest.approx(ratios, rel=1e-4)
    unmoved = [float(np.mean(np.all(b == a, axis=0))) for a, b in itertools.pairwise(starts)]
    assert h[f"dead_units/{key}"] == unmoved and max(unmoved) < 0.5  # kernel: (in, units)
    assert not any(k.startswith("grad_norm/") for k in h)


def test_dead_relu_units_in_keras():
    h, _ = _fit(_model(dead=True))
    assert h["dead_units/first.kernel"] == [1.0, 1.0]
    # the head's inputs are all 0, so no gradient reaches its kernel either (its bias learns)
    assert h["dead_units/head.kernel"] == [1.0, 1.0]
    assert h["weight_norm/head.kernel"][0] == h["weight_norm/head.kernel"][1]

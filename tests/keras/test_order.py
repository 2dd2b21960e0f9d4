"""Plugins act in the order they are listed, inside Keras' compiled train step and in the
callback's Python-side hooks."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import regplug
from regplug.adapters.keras import Regularize
from regplug.plugins import EarlyStopping, GeneralizationGap, MaxNorm, ProximalL1


class FixedGap(keras.callbacks.Callback):
    """Makes the validation loss exceed the training loss by a growing gap."""

    def __init__(self, gaps):
        super().__init__()
        self.gaps = gaps

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = logs["loss"] + self.gaps[epoch]


def test_early_stopping_acts_on_the_gap_a_monitor_listed_before_it_logs():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.ones((8, 1), "float32")
    stopper = EarlyStopping(monitor="gap", patience=2, restore_best_weights=False)
    reg = Regularize([GeneralizationGap(), stopper])
    with warnings.catch_warnings():
        warnings.simplefilter("error", regplug.RegplugWarning)  # no "monitor not in logs"
        history = model.fit(x, y, epochs=6, verbose=0, callbacks=[FixedGap([0.1, 0.3, 0.5, 0.7,
                                                                            0.9, 1.1]), reg])
    assert len(history.history["loss"]) == 3
    assert reg.history["gap"] == pytest.approx([0.1, 0.3, 0.5], abs=1e-6)


def test_two_update_plugins_apply_in_list_order_inside_the_compiled_step():
    def run(plugins):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False)])
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
        kernel = np.zeros((4, 2), "float32")
        kernel[0, 0], kernel[0, 1] = 3.0, 0.05
        model.layers[0].kernel.assign(kernel)
        x, y = np.zeros((1, 4), "float32"), np.zeros((1, 2), "float32")  # zero gradient
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Regularize(plugins)])
        return keras.ops.convert_to_numpy(model.layers[0].kernel.value)

    prox_then_clip = run([ProximalL1(1.0), MaxNorm(1.5)])
    clip_then_prox = run([MaxNorm(1.5), ProximalL1(1.0)])
    assert prox_then_clip[0, 0] == pytest.approx(1.5)
    assert clip_then_prox[0, 0] == pytest.approx(0.5, abs=1e-6)

"""DecoupledWeightDecay on top of the Keras optimizer's own weight_decay decays the weights
twice: Regularize warns at the start of fit, once, naming the plugin and the optimizer's
weight_decay (issue 18)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from regplug import RegplugWarning
from regplug.adapters.keras import Regularize
from regplug.plugins import L2, DecoupledWeightDecay

X = np.random.default_rng(0).random((8, 3)).astype("float32")
Y = np.random.default_rng(1).random((8, 1)).astype("float32")


def _fit(optimizer: keras.optimizers.Optimizer, plugins: list[object], *,
         exclude_hidden: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(1, name="out")])
    if exclude_hidden:  # the hidden layer's kernel: the optimizer leaves it alone
        optimizer.exclude_from_weight_decay(var_list=[model.get_layer("hidden").kernel])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[Regularize(plugins)])
    return model


@pytest.mark.parametrize("make, shown", [
    (lambda: keras.optimizers.AdamW(), "AdamW decays too (its weight_decay=0.004)"),
    (lambda: keras.optimizers.Adam(weight_decay=0.1), "Adam decays too (its weight_decay=0.1)"),
    (lambda: keras.optimizers.SGD(weight_decay=1e-3), "SGD decays too (its weight_decay=0.001)"),
])
def test_an_optimizer_that_decays_too_gets_one_warning_at_the_start_of_fit(make, shown):
    with pytest.warns(RegplugWarning) as caught:
        _fit(make(), [DecoupledWeightDecay(0.01), L2(1e-4)])
    messages = [str(w.message) for w in caught if "decay twice" in str(w.message)]
    assert messages == [f"Regularize: DecoupledWeightDecay(weight_decay=0.01) decays 2 "
                        f"variables that {shown}: the weights decay twice. Compile with the "
                        "optimizer's weight_decay=None (Adam + DecoupledWeightDecay is AdamW "
                        "with undecayed biases), or drop the plugin"]


def test_no_warning_where_the_optimizer_does_not_decay_the_plugin_s_variables():
    excluded = keras.optimizers.AdamW(weight_decay=0.1)
    excluded.exclude_from_weight_decay(var_names=["kernel"])  # the plugin's default selection
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegplugWarning)
        _fit(keras.optimizers.Adam(), [DecoupledWeightDecay(0.01)])
        _fit(excluded, [DecoupledWeightDecay(0.01)])
        _fit(keras.optimizers.AdamW(), [L2(1e-4)])  # the optimizer decays, no plugin does
    with pytest.warns(RegplugWarning, match="decays 1 variable that AdamW decays too"):
        _fit(keras.optimizers.AdamW(weight_decay=0.1), [DecoupledWeightDecay(0.01)],
             exclude_hidden=True)

"""regplug plugins through the callback give the weights of Keras' own regularization.

Each test trains two identical models from the same seed on the same batches: one with
Keras' built-in mechanism (``kernel_regularizer``, ``AdamW``, ``kernel_constraint``), one
with the regplug plugin in ``callbacks=[Regularize(...)]`` and nothing else changed.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, assert_same_weights, data, fit, mlp, sgd

from regplug.adapters.keras import Regularize
from regplug.plugins import L1, L2, DecoupledWeightDecay, ElasticNet, MaxNorm

X, Y = data()

PAIRS = {
    "l2": (lambda: keras.regularizers.L2(0.01), lambda: L2(0.01)),
    "l1": (lambda: keras.regularizers.L1(0.003), lambda: L1(0.003)),
    "l1l2": (lambda: keras.regularizers.L1L2(l1=0.003, l2=0.01),
             lambda: ElasticNet(l1=0.003, l2=0.01)),
}


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_penalty_through_callback_gives_the_weights_of_keras_kernel_regularizer(kind):
    keras_reg, plugin = PAIRS[kind]
    baseline = mlp(reg=keras_reg())
    baseline.compile(optimizer=sgd(), loss="mse")
    ours = mlp()
    ours.compile(optimizer=sgd(), loss="mse")
    h_base = fit(baseline, X, Y, epochs=3, validation_data=(X[:16], Y[:16]))
    h_ours = fit(ours, X, Y, epochs=3, validation_data=(X[:16], Y[:16]),
                 callbacks=[Regularize([plugin()])])
    # Same weights, biases and BatchNorm parameters untouched by the default selection
    # (Keras regularizes kernels only), same loss (the penalty is in it), same val_loss.
    assert_same_weights(baseline, ours)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h_ours.history[key], h_base.history[key], rtol=1e-6)


def test_selection_of_biases_and_normalization_matches_keras_bias_and_gamma_regularizers():
    baseline = mlp(reg=keras.regularizers.L2(0.01), bias_reg=keras.regularizers.L2(0.01),
                   norm_reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=sgd(), loss="mse")
    ours = mlp()
    ours.compile(optimizer=sgd(), loss="mse")
    fit(baseline, X, Y)
    fit(ours, X, Y, callbacks=[Regularize([L2(0.01, kinds="all")])])
    assert_same_weights(baseline, ours)


def test_adam_with_decoupled_weight_decay_gives_the_weights_of_keras_adamw():
    baseline = mlp()
    adamw = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.1)
    adamw.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    baseline.compile(optimizer=adamw, loss="mse")
    ours = mlp()
    ours.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    fit(baseline, X, Y, epochs=3)
    fit(ours, X, Y, epochs=3, callbacks=[Regularize([DecoupledWeightDecay(0.1)])])
    # AdamW computes w - w·wd·lr, the plugin w·(1 - lr·wd): equal up to rounding.
    assert_same_weights(baseline, ours, rtol=1e-5, atol=1e-6)


def test_max_norm_after_each_update_matches_keras_kernel_constraint():
    baseline = mlp(constraint=keras.constraints.MaxNorm(0.5, axis=0))
    baseline.compile(optimizer=sgd(0.2), loss="mse")
    ours = mlp()
    ours.compile(optimizer=sgd(0.2), loss="mse")
    fit(baseline, X, Y)
    fit(ours, X, Y, callbacks=[Regularize([MaxNorm(0.5)])])
    # Keras also rescales units within the bound by norm/(norm + 1e-7); regplug leaves them.
    assert_same_weights(baseline, ours, rtol=1e-5, atol=1e-6)
    kernel = keras.ops.convert_to_numpy(ours.layers[0].kernel)
    assert np.linalg.norm(kernel, axis=0).max() <= 0.5 + 1e-6


@pytest.mark.skipif(BACKEND == "torch", reason="the torch backend runs one step per call")
def test_steps_per_execution_keeps_the_penalty_in_every_step():
    baseline = mlp(reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=sgd(), loss="mse", steps_per_execution=3)
    ours = mlp()
    ours.compile(optimizer=sgd(), loss="mse", steps_per_execution=3)
    fit(baseline, X, Y, batch_size=8)  # 8 steps an epoch: executions of 3, 3 and 2
    fit(ours, X, Y, batch_size=8, callbacks=[Regularize([L2(0.01)])])
    assert_same_weights(baseline, ours)


def test_two_fits_with_one_callback_equal_two_fits_with_kernel_regularizer():
    baseline = mlp(reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=sgd(), loss="mse")
    ours = mlp()
    ours.compile(optimizer=sgd(), loss="mse")
    callback = Regularize([L2(0.01)])
    for _ in range(2):
        fit(baseline, X, Y, epochs=1)
        fit(ours, X, Y, epochs=1, callbacks=[callback])
    assert_same_weights(baseline, ours)  # a doubled penalty would shrink the kernels more


def test_one_callback_reused_on_a_second_model_leaks_nothing_between_them():
    callback = Regularize([L2(0.01)])
    first = mlp(seed=1)
    first.compile(optimizer=sgd(), loss="mse")
    fit(first, X, Y, epochs=1, callbacks=[callback])
    first_after = [w.copy() for w in first.get_weights()]

    baseline = mlp(reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=sgd(), loss="mse")
    second = mlp()
    second.compile(optimizer=sgd(), loss="mse")
    fit(baseline, X, Y)
    fit(second, X, Y, callbacks=[callback])
    assert_same_weights(baseline, second)
    for before, after in zip(first_after, first.get_weights()):
        np.testing.assert_array_equal(before, after)  # the first model was not touched
    assert [p.tensor for p in callback.run.params][0] is second.trainable_variables[0]

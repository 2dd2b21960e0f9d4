"""LayerwiseLR in ``model.fit`` equals one Keras optimizer per depth at lr·γ^(L−d).

Keras has no parameter groups. The honest reference is what a user would write without
regplug: a training loop by hand (the backend's own gradients) that applies one optimizer per
layer, each built with that layer's rate. Keras' optimizers update each variable from its own
slots only (AdamW's decay included), so this is exactly "a learning rate per layer".
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, fit, regplug_leftovers
from keras import ops

from regplug.adapters.keras import Regularize
from regplug.depth import DepthError
from regplug.plugins import LayerwiseLR

GAMMA = 0.6
WIDTHS = (16, 16, 16)  # three hidden Dense layers, then the head: depths 0..3
N, BATCH, EPOCHS = 160, 16, 10  # 100 updates


def stack(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    layers: list = [keras.Input((8,))]
    layers += [keras.layers.Dense(w, activation="tanh", name=f"l{i}")
               for i, w in enumerate(WIDTHS)]
    layers.append(keras.layers.Dense(1, name="head"))
    return keras.Sequential(layers, name="stack")


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 8)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(8, 1))).astype("float32")
    return x, y


def gradients(model: keras.Model, x: np.ndarray, y: np.ndarray) -> list:
    """d mean((model(x) − y)²) / d trainable variables, by the backend's own autodiff."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = ops.mean(ops.square(model(x, training=True) - y))
        return tape.gradient(loss, variables)
    if BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        loss = ops.mean(ops.square(model(x, training=True) - ops.convert_to_tensor(y)))
        loss.backward()
        return [v.value.grad.detach().clone() for v in variables]
    import jax

    values = [v.value for v in variables]
    others = [v.value for v in model.non_trainable_variables]

    def loss_of(values):
        out, _ = model.stateless_call(values, others, x, training=True)
        return ops.mean(ops.square(out - y))

    return jax.grad(loss_of)(values)


def train_by_hand(model: keras.Model, make, lr: float, gamma: float = GAMMA) -> None:
    """One optimizer per layer, layer i of the stack at lr·γ^(top − i)."""
    top = len(model.layers) - 1
    opts = [make(lr * gamma ** (top - i)) for i in range(len(model.layers))]
    x, y = data()
    for _ in range(EPOCHS):
        for start in range(0, N, BATCH):
            grads = gradients(model, x[start:start + BATCH], y[start:start + BATCH])
            index = {id(v): g for v, g in zip(model.trainable_variables, grads)}
            for layer, opt in zip(model.layers, opts):
                opt.apply([index[id(v)] for v in layer.trainable_variables],
                          layer.trainable_variables)


def train_with_plugin(model: keras.Model, make, lr: float, plugins) -> keras.callbacks.History:
    model.compile(optimizer=make(lr), loss="mse")
    x, y = data()
    return fit(model, x, y, epochs=EPOCHS, batch_size=BATCH, callbacks=[Regularize(plugins)])


OPTIMIZERS = {
    "SGD-momentum": (lambda lr: keras.optimizers.SGD(lr, momentum=0.9), 0.05),
    "SGD-nesterov": (lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True), 0.05),
    "Adam": (lambda lr: keras.optimizers.Adam(lr), 3e-3),
    "AdamW": (lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.05), 3e-3),
}


def assert_close(a: keras.Model, b: keras.Model, *, rtol: float, atol: float) -> None:
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_allclose(ops.convert_to_numpy(va), ops.convert_to_numpy(vb),
                                   rtol=rtol, atol=atol, err_msg=va.path)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fit_equals_one_optimizer_per_layer_over_100_updates(name):
    make, lr = OPTIMIZERS[name]
    ours, theirs = stack(), stack()
    plugin = LayerwiseLR(GAMMA)
    train_with_plugin(ours, make, lr, [plugin])
    train_by_hand(theirs, make, lr)
    assert plugin.factors["l0.kernel"] == pytest.approx(GAMMA ** 3)
    assert "head.kernel" not in plugin.factors  # the top is neither copied nor scaled
    assert_close(ours, theirs, rtol=2e-4, atol=2e-5)
    # and the scaling mattered
    plain = stack()
    plain.compile(optimizer=make(lr), loss="mse")
    fit(plain, *data(), epochs=EPOCHS, batch_size=BATCH)
    assert not np.allclose(ops.convert_to_numpy(plain.layers[0].kernel),
                           ops.convert_to_numpy(ours.layers[0].kernel), atol=1e-3)


def test_multipliers_for_discriminative_rates():
    make, lr = OPTIMIZERS["Adam"]
    ours, theirs = stack(), stack()
    train_with_plugin(ours, make, lr, [LayerwiseLR(multipliers={"l0.*": 0.1, "l1.*": 0.5})])
    opts = {"l0": make(lr * 0.1), "l1": make(lr * 0.5), "l2": make(lr), "head": make(lr)}
    x, y = data()
    for _ in range(EPOCHS):
        for start in range(0, N, BATCH):
            grads = gradients(theirs, x[start:start + BATCH], y[start:start + BATCH])
            index = {id(v): g for v, g in zip(theirs.trainable_variables, grads)}
            for layer in theirs.layers:
                opts[layer.name].apply([index[id(v)] for v in layer.trainable_variables],
                                       layer.trainable_variables)
    assert_close(ours, theirs, rtol=2e-4, atol=2e-5)
    assert regplug_leftovers(ours) == []  # the copies are gone with the fit


def test_not_exact_for_ftrl_whose_update_is_not_linear_in_the_learning_rate():
    make = lambda lr: keras.optimizers.Ftrl(lr, l1_regularization_strength=0.01)  # noqa: E731
    ours, theirs = stack(), stack()
    train_with_plugin(ours, make, 0.5, [LayerwiseLR(GAMMA)])
    train_by_hand(theirs, make, 0.5)
    gap = np.abs(ops.convert_to_numpy(ours.layers[0].kernel)
                 - ops.convert_to_numpy(theirs.layers[0].kernel)).max()
    assert gap > 1e-3  # documented: beyond float noise


def test_bad_patterns_are_refused_when_fit_starts_before_any_weight_changes():
    model = stack()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    with pytest.raises(DepthError, match=r"LayerwiseLR: argument 'multipliers': pattern "
                                         r"'backbone\.\*' matches none"):
        fit(model, *data(), epochs=1,
            callbacks=[Regularize([LayerwiseLR(multipliers={"backbone.*": 0.1})])])
    with pytest.raises(DepthError, match=r"LayerwiseLR: argument 'layers': entry 1"):
        fit(model, *data(), epochs=1,
            callbacks=[Regularize([LayerwiseLR(0.9, layers=["l0.*", "encoder.*", "*"])])])
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), b)


def test_explicit_patterns_bottom_to_top():
    make, lr = OPTIMIZERS["SGD-momentum"]
    ours, theirs = stack(), stack()
    # l0 and l1 share the bottom depth, l2 is next, the head on top: γ², γ², γ, 1
    train_with_plugin(ours, make, lr, [LayerwiseLR(GAMMA, layers=[["l0.*", "l1.*"], "l2.*",
                                                                  "head.*"])])
    opts = [make(lr * GAMMA ** 2), make(lr * GAMMA ** 2), make(lr * GAMMA), make(lr)]
    x, y = data()
    for _ in range(EPOCHS):
        for start in range(0, N, BATCH):
            grads = gradients(theirs, x[start:start + BATCH], y[start:start + BATCH])
            index = {id(v): g for v, g in zip(theirs.trainable_variables, grads)}
            for layer, opt in zip(theirs.layers, opts):
                opt.apply([index[id(v)] for v in layer.trainable_variables],
                          layer.trainable_variables)
    assert_close(ours, theirs, rtol=2e-4, atol=2e-5)

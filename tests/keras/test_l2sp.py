"""L2SP in Keras ``fit`` (every backend: tox reruns this folder on torch and JAX): the weights
equal those of the same penalty written as Keras regularizers, the decoupled variant equals
the penalty under plain SGD, θ₀ survives a state round trip, frozen layers are left alone."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import data, fit
from keras import ops

import regplug
from regplug.adapters.keras import KerasOps, Regularize, discover_parameters
from regplug.plugins import L2SP

ALPHA, BETA, LR = 0.5, 0.05, 0.05


def net(*, body_reg=None, head_reg=None, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="tanh", name="body", kernel_regularizer=body_reg),
        keras.layers.Dense(1, name="head", kernel_regularizer=head_reg)], name="net")
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


def start_kernel() -> np.ndarray:
    return np.array(ops.convert_to_numpy(net().get_layer("body").kernel))


def kernels(model: keras.Model) -> list[np.ndarray]:
    return [np.array(ops.convert_to_numpy(v)) for v in model.trainable_variables]


def test_l2sp_equals_the_same_penalty_as_keras_regularizers():
    theta0 = start_kernel()
    x, y = data()
    ours = net()
    fit(ours, x, y, epochs=3, callbacks=[Regularize([L2SP(ALPHA, BETA, new="head.*")])])
    written = net(body_reg=lambda w: ALPHA / 2 * ops.sum(ops.square(w - theta0)),
                  head_reg=keras.regularizers.L2(BETA / 2))
    fit(written, x, y, epochs=3)
    plain = net()
    fit(plain, x, y, epochs=3)
    for a, b, c in zip(kernels(ours), kernels(written), kernels(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(b - c).max() for b, c in zip(kernels(written), kernels(plain))) > 1e-4


def test_decoupled_equals_the_penalty_under_plain_sgd():
    x, y = data()
    coupled, decoupled = net(), net()
    fit(coupled, x, y, epochs=3, callbacks=[Regularize([L2SP(ALPHA, BETA, new="head.*")])])
    fit(decoupled, x, y, epochs=3,
        callbacks=[Regularize([L2SP(ALPHA, BETA, new="head.*", decoupled=True)])])
    for a, b in zip(kernels(coupled), kernels(decoupled)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_state_carries_the_first_start_point_into_the_next_fit():
    x, y = data()
    whole = net()
    fit(whole, x, y, epochs=4, callbacks=[Regularize([L2SP(ALPHA)])])
    split, first = net(), L2SP(ALPHA)
    fit(split, x, y, epochs=2, callbacks=[Regularize([first])])
    state = first.state_dict()
    np.testing.assert_array_equal(state["anchors"]["body.kernel"], start_kernel())
    again = L2SP(ALPHA)
    again.load_state_dict(state)
    fit(split, x, y, epochs=2, callbacks=[Regularize([again])])
    for a, b in zip(kernels(split), kernels(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again.anchors()["body.kernel"], start_kernel())


def test_a_frozen_layer_is_left_alone():
    x, y = data()
    model = net()
    model.get_layer("body").trainable = False
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    before = np.array(ops.convert_to_numpy(model.get_layer("body").kernel))
    plugin = L2SP(1.0, 1.0, new="head.*")
    with pytest.warns(regplug.RegplugWarning, match="every selected parameter is new"):
        fit(model, x, y, epochs=2, callbacks=[Regularize([plugin])])
    np.testing.assert_array_equal(ops.convert_to_numpy(model.get_layer("body").kernel), before)
    assert plugin.anchors() == {}  # nothing pretrained is trained: nothing to anchor


def test_a_reference_of_another_shape_is_refused_before_any_change():
    x, y = data()
    model = net()
    before = kernels(model)
    with pytest.raises(ValueError, match=r"L2SP: argument 'reference' does not fit the model: "
                                         r"it has other shapes \(body.kernel: given \(16, 8\), "
                                         r"model \(8, 16\)\)"):
        fit(model, x, y, callbacks=[Regularize([L2SP(
            ALPHA, reference={"body.kernel": np.zeros((16, 8))})])])
    for a, b in zip(kernels(model), before):
        np.testing.assert_array_equal(a, b)


def test_keras_ops_distance_terms_match_numpy():
    model = net()
    params = discover_parameters(model)
    k = KerasOps()
    anchors = k.clone(params)
    rng = np.random.default_rng(0)
    moved = [np.array(ops.convert_to_numpy(p.tensor)) + rng.normal(size=p.shape)
             for p in params]
    for p, m in zip(params, moved):
        p.tensor.assign(m.astype("float32"))
    start = [np.array(ops.convert_to_numpy(a)) for a in anchors]
    expected = sum(np.sum((m.astype("float32") - s) ** 2) for m, s in zip(moved, start))
    assert k.to_float(k.sum_squares_diff(params, anchors)) == pytest.approx(expected, rel=1e-5)
    grads = [ops.zeros(p.shape) for p in params]
    k.open_gradients(grads, [p.tensor for p in params])
    k.add_diff_to_grad_(params, anchors, 0.25)
    for g, m, s in zip(k.close_gradients(), moved, start):
        np.testing.assert_allclose(ops.convert_to_numpy(g), 0.25 * (m.astype("float32") - s),
                                   rtol=1e-6, atol=1e-7)


def test_a_reference_keyed_by_keras_variable_paths_anchors_there():
    x, y = data()
    pretrained = net(seed=7)
    body = pretrained.get_layer("body").kernel
    reference = {body.path: np.array(ops.convert_to_numpy(body))}  # "net/body/kernel"
    model = net()
    plugin = L2SP(ALPHA, reference=reference)
    fit(model, x, y, epochs=1, callbacks=[Regularize([plugin])])
    assert list(plugin.anchors()) == ["body.kernel"]  # the head is absent: new
    np.testing.assert_array_equal(plugin.anchors()["body.kernel"], reference[body.path])

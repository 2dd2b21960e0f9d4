"""KerasOps against the NumPy reference semantics, and how Keras parameters are typed."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import regplug
from regplug import functional as F
from regplug.adapters.keras import KerasOps, discover_parameters
from regplug.numpy_ops import NumpyOps
from regplug.run import ParamHandle


def _handles(arrays: dict[str, np.ndarray]) -> list[ParamHandle]:
    out = []
    for name, array in arrays.items():
        var = keras.Variable(array.astype("float32"), name=name)
        axis = array.ndim - 1 if array.ndim > 1 else None
        out.append(ParamHandle(name, "weight", var, "Dense", axis, array.shape))
    return out


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(5, 3)), "b": rng.normal(size=(2, 2, 4)), "c": rng.normal(size=4)}


def _np(handle: ParamHandle) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(handle.tensor))


def test_sums_match_the_numpy_reference():
    arrays = _arrays()
    ours, ref = _handles(arrays), NumpyOps()
    ref_handles = [ParamHandle(n, "weight", a, "x", None, a.shape) for n, a in arrays.items()]
    k = KerasOps()
    assert k.to_float(k.sum_squares(ours)) == pytest.approx(float(ref.sum_squares(ref_handles)),
                                                            rel=1e-6)
    assert k.to_float(k.sum_abs(ours)) == pytest.approx(float(ref.sum_abs(ref_handles)), rel=1e-6)
    assert k.to_float(k.sum_squares([])) == 0.0


def test_scale_and_soft_threshold_change_the_variables_in_place_with_exact_zeros():
    arrays = _arrays(1)
    handles = _handles(arrays)
    k = KerasOps()
    k.scale_(handles, keras.Variable(0.5))  # a strength held in a variable works too
    k.soft_threshold_(handles, 0.3)
    for h, (name, a) in zip(handles, arrays.items()):
        expected = F.soft_threshold(a.astype("float32") * 0.5, 0.3)
        np.testing.assert_allclose(_np(h), expected, atol=1e-7)
        assert ((_np(h) == 0) == (expected == 0)).all()
    zeros, total = k.count_zeros(handles)
    assert total == sum(a.size for a in arrays.values())
    assert zeros == sum(int((_np(h) == 0).sum()) for h in handles) and zeros > 0


def test_clip_unit_norms_bounds_each_output_unit_and_leaves_the_others_exactly():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 4)).astype("float32")
    w[:, 0] *= 0.01  # one unit well within the bound
    (h,) = _handles({"kernel": w})
    KerasOps().clip_unit_norms_([h], 1.0)
    got = _np(h)
    np.testing.assert_allclose(got, F.clip_unit_norms(w, 1.0, unit_axis=1), rtol=1e-6)
    np.testing.assert_array_equal(got[:, 0], w[:, 0])
    assert np.linalg.norm(got, axis=0).max() <= 1.0 + 1e-6


def test_gradients_are_reachable_only_inside_the_before_step_window():
    (h,) = _handles({"w": np.ones((2, 2))})
    k = KerasOps()
    with pytest.raises(regplug.UsageError, match="on_before_step"):
        k.add_to_grad_([h], 0.1)
    k.open_gradients([ops.zeros((2, 2))], [h.tensor])
    k.add_to_grad_([h], 0.1)
    k.add_sign_to_grad_([h], 0.5)
    (grad,) = k.close_gradients()
    np.testing.assert_allclose(ops.convert_to_numpy(grad), np.full((2, 2), 0.6), rtol=1e-6)


def test_parameters_are_named_by_path_and_typed_by_their_layer():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.layers.Dense(3, name="inner_dense")], name="block")
    frozen = keras.layers.Dense(3, name="frozen")
    inp = keras.Input((4, 4, 2), name="img")
    x = keras.layers.Conv2D(3, 2, name="conv")(inp)
    x = keras.layers.Conv2DTranspose(2, 2, name="deconv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    x = frozen(inner(x))
    x = keras.layers.LayerNormalization(name="ln")(x)
    ids = keras.Input((2,), dtype="int32", name="ids")
    e = keras.layers.Flatten()(keras.layers.Embedding(10, 3, name="emb")(ids))
    out = keras.layers.Dense(1, name="head")(keras.layers.Concatenate()([x, e]))
    model = keras.Model([inp, ids], out)
    frozen.trainable = False

    table = {h.native_name: (h.kind, h.layer_type, h.unit_axis)
             for h in discover_parameters(model)}
    assert table == {
        "conv/kernel": ("weight", "Conv2D", 3), "conv/bias": ("bias", "Conv2D", None),
        "deconv/kernel": ("weight", "Conv2DTranspose", 2),
        "deconv/bias": ("bias", "Conv2DTranspose", None),
        "bn/gamma": ("normalization", "BatchNormalization", None),
        "bn/beta": ("normalization", "BatchNormalization", None),
        "block/inner_dense/kernel": ("weight", "Dense", 1),
        "block/inner_dense/bias": ("bias", "Dense", None),
        "ln/gamma": ("normalization", "LayerNormalization", None),
        "ln/beta": ("normalization", "LayerNormalization", None),
        "emb/embeddings": ("embedding", "Embedding", 0),
        "head/kernel": ("weight", "Dense", 1), "head/bias": ("bias", "Dense", None),
    }  # the frozen layer's variables are not handed to plugins

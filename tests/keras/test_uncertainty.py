"""MC dropout for Keras models: regplug.adapters.keras.mc_predict, on the backend Keras was
imported with (tox reruns the tests marked keras_backends under the others)."""

from __future__ import annotations

import doctest
import gc
import random
import weakref

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, data, mlp
from keras import ops

from regplug import RegplugWarning
from regplug.adapters.keras import is_dropout_layer, mc_predict
from regplug.adapters.keras import uncertainty as keras_uncertainty

X, _ = data(24)


def trained_bn_mlp(dropout: float = 0.3) -> keras.Model:
    """``_keras_models.mlp`` with BatchNorm moving statistics away from their initial values."""
    model = mlp(dropout=dropout)
    shifted = X * 2.0 + 1.0
    for _ in range(3):
        model(shifted, training=True)
    return model


def state(model: keras.Model) -> list[np.ndarray]:
    """Every variable of the model: weights, BN statistics and the seed generators' states."""
    return [np.array(ops.convert_to_numpy(v.value)) for v in model.variables]


def test_samples_differ_with_dropout_active():
    p = mc_predict(trained_bn_mlp(), X, samples=20, seed=0, keep_samples=True)
    assert p.samples.shape == (20, 24, 1)
    assert len({s.tobytes() for s in p.samples}) == 20
    assert (p.std > 0).all()


def test_no_variable_of_the_model_changes_bn_statistics_and_seed_states_included():
    model = trained_bn_mlp()
    before = state(model)
    moving_mean = model.layers[1].moving_mean
    assert np.abs(ops.convert_to_numpy(moving_mean)).max() > 0  # statistics were trained
    mc_predict(model, X, samples=40, seed=1)
    mc_predict(model, X, samples=5, compiled=False)
    for old, new, var in zip(before, state(model), model.variables):
        np.testing.assert_array_equal(new, old, err_msg=var.path)  # bit-exact


@pytest.mark.parametrize("compiled", [True, False])
def test_one_sample_with_dropout_off_equals_the_plain_prediction(compiled):
    for model in (trained_bn_mlp(dropout=0.0),
                  keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="tanh"),
                                    keras.layers.BatchNormalization(), keras.layers.Dense(1)])):
        p = mc_predict(model, X, samples=1, compiled=compiled)
        plain = ops.convert_to_numpy(model(X, training=False))
        np.testing.assert_allclose(p.mean, plain.astype(np.float64), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(p.std, 0.0)
        np.testing.assert_array_equal(p.upper, p.mean)
    if not compiled:  # the same eager forward: bit for bit
        np.testing.assert_array_equal(p.mean, plain.astype(np.float64))


def test_batchnorm_uses_moving_statistics_while_dropout_samples():
    # Each sample, dropout aside, is the inference-mode network: with dropout before the
    # last Dense only, the sample mean over many draws approaches model(x, training=False).
    model = trained_bn_mlp(dropout=0.2)
    p = mc_predict(model, X, samples=3000, seed=2, interval="normal")
    plain = ops.convert_to_numpy(model(X, training=False)).astype(np.float64)
    assert (np.abs(p.mean - plain) < 5 * p.std / np.sqrt(3000) + 1e-6).all()
    batch_stats = ops.convert_to_numpy(model(X, training=True)).astype(np.float64)
    assert np.abs(batch_stats - plain).max() > 10 * (p.std / np.sqrt(3000)).max()


def test_same_seed_repeats_exactly_and_another_seed_differs():
    model = trained_bn_mlp()
    a = mc_predict(model, X, samples=8, seed=7, keep_samples=True)
    b = mc_predict(model, X, samples=8, seed=7, keep_samples=True)
    c = mc_predict(model, X, samples=8, seed=8, keep_samples=True)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)


def test_compiled_and_eager_draw_the_same_samples():
    model = trained_bn_mlp()
    a = mc_predict(model, X, samples=7, seed=3, batch_size=10, samples_per_batch=3,
                   keep_samples=True)
    b = mc_predict(model, X, samples=7, seed=3, batch_size=10, samples_per_batch=3,
                   keep_samples=True, compiled=False)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5, atol=1e-6)


def test_a_seed_leaves_global_random_state_alone_and_no_seed_follows_set_random_seed():
    model = trained_bn_mlp()
    random.seed(11)
    np.random.seed(11)
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    torch_state = _torch_rng_state()
    mc_predict(model, X, samples=4, seed=1)
    assert random.getstate() == py_state
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    if torch_state is not None:
        assert _torch_rng_state().equal(torch_state)
    keras.utils.set_random_seed(5)
    a = mc_predict(model, X, samples=4, keep_samples=True)
    keras.utils.set_random_seed(5)
    b = mc_predict(model, X, samples=4, keep_samples=True)
    c = mc_predict(model, X, samples=4, keep_samples=True)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(b.samples, c.samples)


def _torch_rng_state():
    if BACKEND != "torch":
        return None
    import torch

    return torch.get_rng_state()


def test_dropout_layers_are_left_as_they_were_even_after_an_error():
    model = trained_bn_mlp()
    dropout = model.get_layer("dropout")
    mc_predict(model, X, samples=2)
    assert "call" not in dropout.__dict__
    with pytest.raises(Exception):  # noqa: B017 - the backend's own shape error
        mc_predict(model, np.zeros((4, 3), "float32"), samples=2)
    assert "call" not in dropout.__dict__
    # model.predict still switches dropout off afterwards
    np.testing.assert_array_equal(model.predict(X, verbose=0), model.predict(X, verbose=0))


def test_stacked_samples_draw_the_same_distribution_as_one_sample_per_pass():
    model, x = trained_bn_mlp(dropout=0.5), X[:2]
    stacked = mc_predict(model, x, samples=2000, seed=0, samples_per_batch=500,
                         interval="normal")
    single = mc_predict(model, x, samples=300, seed=1, samples_per_batch=1, interval="normal")
    se = np.sqrt(stacked.std ** 2 / 2000 + single.std ** 2 / 300)
    assert (np.abs(stacked.mean - single.mean) < 5 * se).all()
    np.testing.assert_allclose(stacked.std, single.std, rtol=0.2)


def test_batches_of_rows_keep_rows_in_order():
    model = trained_bn_mlp(dropout=0.0)
    whole = mc_predict(model, X, samples=1)
    parts = mc_predict(model, X, samples=1, batch_size=7)  # the last batch is padded
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-6, atol=1e-7)
    sampled = mc_predict(trained_bn_mlp(), X, samples=5, batch_size=7, keep_samples=True)
    assert sampled.samples.shape == (5, 24, 1)


def test_streaming_and_quantile_modes_see_the_same_samples():
    model = trained_bn_mlp()
    q = mc_predict(model, X, samples=30, seed=4, keep_samples=True)
    n = mc_predict(model, X, samples=30, seed=4, interval="normal")
    np.testing.assert_allclose(n.mean, q.mean, rtol=1e-12)
    np.testing.assert_allclose(n.std, q.std, rtol=1e-9, atol=1e-12)
    assert n.samples is None


def test_uncertainty_is_larger_far_from_the_training_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.1),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.1),
        keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = np.linspace(-1, 1, 128, dtype="float32")[:, None]
    model.fit(np.tile(x, (300, 1)), np.sin(3 * np.tile(x, (300, 1))), batch_size=128,
              epochs=1, shuffle=False, verbose=0)  # 300 full-batch steps
    far = np.array([[-10.0], [10.0]], "float32")
    near = np.linspace(-1, 1, 9, dtype="float32")[:, None]
    p = mc_predict(model, np.concatenate([far, near]), samples=200, seed=0)
    # (One side may extrapolate flat, where every ReLU path is dead: compare the average.)
    assert p.std[:2].mean() > 3 * p.std[2:].max()
    width = p.upper - p.lower
    assert width[:2].mean() > 3 * width[2:].max()


def test_list_and_dict_inputs_of_a_functional_model():
    keras.utils.set_random_seed(0)
    left, right = keras.Input((3,), name="left"), keras.Input((5,), name="right")
    h = keras.layers.Concatenate()([keras.layers.Dense(4)(left), keras.layers.Dense(4)(right)])
    model = keras.Model([left, right], keras.layers.Dense(1)(keras.layers.Dropout(0.5)(h)))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))  # float64: cast to floatx
    as_list = mc_predict(model, [a, b], samples=5, seed=2)
    as_dict = mc_predict(model, {"left": a, "right": b}, samples=5, seed=2)
    assert as_list.shape == (6, 1) and (as_list.std > 0).any()
    np.testing.assert_allclose(as_dict.mean, as_list.mean, rtol=1e-6)


class Twice(keras.layers.Layer):
    """Doubles its input in training mode: a stand-in for a custom stochastic layer."""

    def call(self, x, training=None):
        return x * 2.0 if training else x


def test_is_dropout_chooses_which_layers_sample_and_the_rest_stay_in_inference():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3), Twice(),
                              keras.layers.Dropout(0.5)])
    plain = ops.convert_to_numpy(model(X, training=False)).astype(np.float64)
    only_twice = mc_predict(model, X, samples=1, is_dropout=lambda layer: isinstance(layer, Twice))
    np.testing.assert_allclose(only_twice.mean, 2 * plain, rtol=1e-6)
    default = mc_predict(model, X, samples=3, keep_samples=True, seed=0)
    kept = default.samples != 0
    np.testing.assert_allclose(default.samples[kept], np.broadcast_to(2 * plain, kept.shape)[kept],
                               rtol=1e-6)  # Twice stayed in inference; Dropout scaled by 2


def test_a_model_without_dropout_warns_that_samples_are_identical():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    with pytest.warns(RegplugWarning, match=r"mc_predict: all 4 samples are identical.*no dropout"):
        p = mc_predict(model, X, samples=4)
    np.testing.assert_array_equal(p.std, 0.0)


def test_default_dropout_layers():
    assert is_dropout_layer(keras.layers.SpatialDropout1D(0.2))
    assert is_dropout_layer(keras.layers.GaussianDropout(0.2))
    assert is_dropout_layer(keras.layers.AlphaDropout(0.2))
    assert is_dropout_layer(keras.layers.LSTM(2, recurrent_dropout=0.2))
    assert not is_dropout_layer(keras.layers.LSTM(2))
    assert not is_dropout_layer(keras.layers.GaussianNoise(0.1))
    assert not is_dropout_layer(keras.layers.BatchNormalization())


def test_spatial_and_gaussian_dropout_sample_per_row():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 3))
    h = keras.layers.SpatialDropout1D(0.5)(inp)
    h = keras.layers.GaussianDropout(0.3)(keras.layers.Flatten()(h))
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype("float32")
    p = mc_predict(model, x, samples=6, seed=0, keep_samples=True)
    assert len({s.tobytes() for s in p.samples}) == 6 and (p.std > 0).all()


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense, self.drop, self.head = (keras.layers.Dense(8), keras.layers.Dropout(0.5),
                                            keras.layers.Dense(1))

    def call(self, x, training=None):
        return self.head(self.drop(self.dense(x), training=training))


def test_an_unbuilt_subclassed_model_is_built_on_first_use():
    keras.utils.set_random_seed(0)
    model = Subclassed()
    p = mc_predict(model, X, samples=5, seed=0)
    assert model.built and (p.std > 0).any()


def test_the_compiled_forward_is_reused_and_does_not_keep_the_model_alive():
    model = trained_bn_mlp()
    # Python runs a layer's ``call`` only while the forward is traced (TensorFlow, JAX), at
    # every forward pass on the eager torch backend.
    dense, calls = model.layers[0], []
    original = dense.call

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)  # noqa: F821 (deleted below, after its last call)

    dense.call = counted
    mc_predict(model, X, samples=3, seed=0)
    traced = len(calls)
    assert traced > 0
    mc_predict(model, X, samples=3, seed=0)
    if BACKEND in ("tensorflow", "jax"):
        assert len(calls) == traced  # the second call ran the traced forward again
    mc_predict(model, X[:5], samples=3, seed=0)
    alive = weakref.ref(model)
    del model, dense, original, counted
    gc.collect()
    assert alive() is None


def test_outputs_must_be_one_tensor_with_a_row_per_input_row():
    inp = keras.Input((8,))
    h = keras.layers.Dropout(0.1)(keras.layers.Dense(2)(inp))
    two = keras.Model(inp, [h, h])
    with pytest.raises(TypeError, match="mc_predict: the model must return one tensor"):
        mc_predict(two, X, samples=2, compiled=False)
    summed = keras.Model(inp, keras.layers.Lambda(lambda t: ops.sum(t, axis=0, keepdims=True))(h))
    with pytest.raises(ValueError, match="one row per input row"):
        mc_predict(summed, X, samples=2, compiled=False)


def test_bad_arguments_name_the_function_and_argument():
    model = trained_bn_mlp()
    with pytest.raises(ValueError, match="mc_predict: argument 'samples' must be an integer >= 1"):
        mc_predict(model, X, samples=0)
    with pytest.raises(ValueError, match=r"mc_predict: argument 'level' .* in \(0, 1\)"):
        mc_predict(model, X, level=0.0)
    with pytest.raises(TypeError, match="mc_predict: argument 'model' must be a Keras model"):
        mc_predict(lambda x: x, X)
    with pytest.raises(TypeError, match="mc_predict: argument 'x' must"):
        mc_predict(model, "not data")
    with pytest.raises(ValueError, match="mc_predict: the arrays of 'x' must share a first axis"):
        mc_predict(model, [X, X[:3]])
    with pytest.raises(TypeError, match="mc_predict: argument 'compiled' must be True or False"):
        mc_predict(model, X, compiled="yes")


# -- prefix reuse ------------------------------------------------------------------------------
def first_dropout_mlp(rate: float = 0.5) -> keras.Model:
    """Dense → Dropout → Dense(tanh) → Dense: the split falls after the first Dense."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dropout(rate, seed=3),
                             keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])


def test_the_prefix_is_reused_and_the_rest_draws_the_whole_models_masks():
    model = trained_bn_mlp()
    new = mc_predict(model, X, samples=7, seed=3, batch_size=10, keep_samples=True)
    old = mc_predict(model, X, samples=7, seed=3, batch_size=10, keep_samples=True,
                     reuse_prefix=False)
    assert new.reused == tuple(layer.name for layer in model.layers[:2])  # Dense, BatchNorm
    assert old.reused == ()
    # The rest sees the shapes and seed states the whole model saw: the same masks, so the
    # same samples up to the prefix's float rounding (a dropped prefix or a skipped dropout
    # would be far off).
    np.testing.assert_allclose(new.samples, old.samples, rtol=1e-5, atol=1e-6)
    assert len({s.tobytes() for s in new.samples}) == 7
    eager = mc_predict(model, X, samples=7, seed=3, batch_size=10, keep_samples=True,
                       compiled=False)
    np.testing.assert_allclose(eager.samples, new.samples, rtol=1e-5, atol=1e-6)


def test_rate_zero_gives_the_deterministic_forward_for_every_sample():
    model = first_dropout_mlp(rate=0.0)
    with pytest.warns(RegplugWarning, match="all 4 samples are identical"):
        p = mc_predict(model, X, samples=4, keep_samples=True)
    assert p.reused == (model.layers[0].name,)
    plain = ops.convert_to_numpy(model(X, training=False))
    for sample in p.samples:
        np.testing.assert_allclose(sample, plain, rtol=1e-6, atol=1e-7)


def test_reuse_agrees_with_the_naive_loop_in_mean_and_spread():
    model, x, t = first_dropout_mlp(), 3 * X[:2], 2000
    p = mc_predict(model, x, samples=t, seed=0, interval="normal")
    assert p.reused == (model.layers[0].name,)
    keras.utils.set_random_seed(1)
    naive = np.stack([ops.convert_to_numpy(model(x, training=True)) for _ in range(200)])
    naive = naive.astype(np.float64)
    se = np.sqrt(p.std ** 2 / t + naive.std(axis=0) ** 2 / 200)
    assert (np.abs(p.mean - naive.mean(axis=0)) < 5 * se).all()
    np.testing.assert_allclose(p.std, naive.std(axis=0), rtol=0.2)
    assert (p.std > 0.01).all()  # the dropout sampled


def test_models_that_cannot_be_split_give_the_same_numbers_as_before():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    residual = keras.Model(inp, keras.layers.Dense(1)(
        keras.layers.Add()([keras.layers.Dropout(0.5)(h), inp])))
    lambda_first = keras.Sequential([keras.Input((8,)), keras.layers.Lambda(lambda t: t * 2.0),
                                     keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    for model in (residual, lambda_first, Subclassed()):
        new = mc_predict(model, X, samples=5, seed=2, keep_samples=True)
        old = mc_predict(model, X, samples=5, seed=2, keep_samples=True, reuse_prefix=False)
        assert new.reused == ()
        np.testing.assert_array_equal(new.samples, old.samples)


def test_reuse_prefix_must_be_a_bool():
    with pytest.raises(TypeError, match="argument 'reuse_prefix' must be True or False"):
        mc_predict(first_dropout_mlp(), X, reuse_prefix=1)


def test_module_docstring_examples_run():
    result = doctest.testmod(keras_uncertainty, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

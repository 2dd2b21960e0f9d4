"""The Keras runner's fast path: prebuilt tf.data pipelines give the runs the arrays gave.

On the TensorFlow backend ``regplug compare`` hands ``fit`` pipelines built once per data set
(:func:`regplug.adapters.keras.compare._fit_inputs`) instead of NumPy arrays. These tests
prove the two paths train on the same batches in the same order and so give the same
histories, accuracies and weights, bit for bit. Timings: ``benchmarks/bench_compare.py``.
"""

from __future__ import annotations

import gc
import math
from dataclasses import replace

import numpy as np
import pytest

from regplug.compare import TrainSettings
from regplug.compare.datasets import Splits, resolve_data, split_validation
from regplug.compare.models import resolve_model
from regplug.compare.results import TrainOutcome
from regplug.compare.strategies import BUILTIN_STRATEGIES, Strategy

keras = pytest.importorskip("keras")
pytest.importorskip("sklearn")

from regplug.adapters.keras import compare as keras_compare  # noqa: E402

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="the pipelines serve the TensorFlow backend")


@pytest.fixture(scope="module")
def digits() -> Splits:
    return split_validation(resolve_data(None, seed=0), seed=0)


def _recorded_label_order(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int,
                          **fit_args: object) -> np.ndarray:
    """The labels a fit's train steps saw, one row per epoch (the labels are row numbers)."""
    import tensorflow as tf

    class Recorder(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.seen = tf.Variable(tf.zeros((0,), tf.int64), shape=(None,), trainable=False)

        def call(self, inputs: object) -> object:
            return self.dense(inputs)

        def train_step(self, data: object) -> dict[str, object]:
            _, labels = data
            self.seen.assign(tf.concat([self.seen, tf.cast(labels, tf.int64)], 0))
            return {"seen": tf.size(self.seen)}

    keras.utils.set_random_seed(seed)
    model = Recorder()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=epochs, verbose=0, **fit_args)
    return model.seen.numpy().reshape(epochs, len(x))


@tensorflow_only
@pytest.mark.parametrize(("n", "batch_size", "seed"), [(1069, 128, 0), (40, 8, 7), (30, 64, 3)])
def test_shuffle_order_is_the_order_fit_draws_for_numpy_arrays(n, batch_size, seed):
    x = np.arange(n, dtype=np.float32)[:, None]
    rows = np.arange(n)
    seen = _recorded_label_order(x, rows, epochs=3, seed=seed, batch_size=batch_size,
                                 shuffle=True)
    order = keras_compare.shuffle_order(n, seed)
    assert sorted(order) == list(range(n))
    assert not np.array_equal(order, rows)  # it is shuffled
    for epoch in seen:  # every epoch in this one order (Keras' array adapter on TensorFlow)
        np.testing.assert_array_equal(epoch, order)
    assert not np.array_equal(order, keras_compare.shuffle_order(n, seed + 1))


@tensorflow_only
@pytest.mark.parametrize(("n", "batch_size"), [(1069, 128), (1024, 128), (5, 128)])
def test_the_pipelines_batch_what_fit_cut_from_the_arrays(n, batch_size):
    rng = np.random.default_rng(1)
    x = rng.random((n, 3), dtype=np.float32)
    y = np.arange(n)
    splits = Splits("toy", x, y, x[:7], y[:7], x[:2], y[:2], n_classes=n)
    settings = TrainSettings(batch_size=batch_size, seed=2)
    keras.utils.set_random_seed(settings.seed)
    inputs = keras_compare._fit_inputs(splits, settings, pipeline=True)
    assert inputs["steps_per_epoch"] == math.ceil(n / batch_size)
    assert inputs["shuffle"] is False
    order = keras_compare.shuffle_order(n, settings.seed)
    batches = list(inputs["x"].take(2 * inputs["steps_per_epoch"]))
    labels = [b[1].numpy() for b in batches]
    expected = [order[i:i + batch_size] for i in range(0, n, batch_size)] * 2  # two epochs
    assert [len(b) for b in labels] == [len(b) for b in expected]
    for got, want in zip(labels, expected, strict=True):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(batches[0][0].numpy(), x[order[:batch_size]])
    validation = list(inputs["validation_data"])
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in validation]), x[:7])


def _assert_same_outcome(fast: TrainOutcome, slow: TrainOutcome) -> None:
    assert fast.history == slow.history  # every epoch's every log, exactly
    assert (fast.acc_train, fast.acc_test, fast.steps, fast.stop_reason) == (
        slow.acc_train, slow.acc_test, slow.steps, slow.stop_reason)
    # The layers' names differ (Keras numbers them per model), their kinds and places do not.
    assert [(w.kind, w.layer_type, w.array.shape) for w in fast.weights] == [
        (w.kind, w.layer_type, w.array.shape) for w in slow.weights]
    for a, b in zip(fast.weights, slow.weights, strict=True):
        np.testing.assert_array_equal(a.array, b.array, err_msg=a.name)


IMPATIENT = Strategy("impatient", ({"name": "early_stopping", "patience": 0,
                                    "min_delta": 100.0, "restore_best_weights": True},))


@tensorflow_only
def test_pipelines_give_the_array_path_runs_bit_for_bit(digits):
    # Penalties, a proximal update, dropout (its own random stream), batch norm, a dropout
    # schedule and early stopping with restored weights: each strategy's fit with the
    # pipelines equals its fit with the arrays; the later strategies reuse the pipelines.
    model = resolve_model(None)
    settings = TrainSettings(epochs=3)
    names = ["l2", "proximal_l1", "batch_norm_dropout", "dropout_schedule"]
    strategies = [BUILTIN_STRATEGIES[name] for name in names] + [IMPATIENT]
    shared = None
    for strategy in strategies:
        slow = keras_compare._train(digits, strategy, strategy.build_plugins(), model, settings,
                                    pipeline=False)
        fast = keras_compare._train(digits, strategy, strategy.build_plugins(), model, settings,
                                    pipeline=True)
        _assert_same_outcome(fast, slow)
        assert fast.history["loss"][-1] < fast.history["loss"][0]  # it trained
        pipelines = keras_compare._CACHE.get(digits, settings)
        assert shared is None or pipelines is shared  # built once for the data set
        shared = pipelines
    assert len(fast.history["loss"]) == 2  # IMPATIENT stopped after its second epoch
    assert fast.stop_reason is not None


@tensorflow_only
def test_pipelines_follow_the_seed_and_batch_size(digits):
    model = resolve_model(None)
    strategy = BUILTIN_STRATEGIES["dropout"]
    settings = TrainSettings(epochs=2, batch_size=50, seed=11)
    slow = keras_compare._train(digits, strategy, strategy.build_plugins(), model, settings,
                                pipeline=False)
    fast = keras_compare.train_strategy(digits, strategy, strategy.build_plugins(), model,
                                        settings)  # the default: pipelines on TensorFlow
    _assert_same_outcome(fast, slow)
    other = keras_compare.train_strategy(digits, strategy, strategy.build_plugins(), model,
                                         replace(settings, seed=12))
    assert other.history["loss"] != fast.history["loss"]


@tensorflow_only
def test_the_pipeline_cache_keys_on_the_data_set_seed_and_batch_size(digits):
    settings = TrainSettings()
    first = keras_compare._CACHE.get(digits, settings)
    assert keras_compare._CACHE.get(digits, settings) is first
    assert keras_compare._CACHE.get(digits, replace(settings, epochs=3)) is first
    assert keras_compare._CACHE.get(digits, replace(settings, seed=1)) is not first
    copy = replace(digits)  # equal arrays, another data set object
    built = keras_compare._CACHE.get(copy, settings)
    assert built is not first
    del copy, built
    gc.collect()
    assert keras_compare._CACHE._pipelines is None  # dropped with its data set


def test_other_backends_keep_the_arrays(digits, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    inputs = keras_compare._fit_inputs(digits, TrainSettings())
    assert inputs["x"] is digits.x_train and inputs["y"] is digits.y_train
    assert inputs["shuffle"] is True and inputs["batch_size"] == 128
    assert inputs["validation_data"][0] is digits.x_val

"""The Keras runner's fast path: a prebuilt tf.data pipeline gives the runs the NumPy batches
give.

On the TensorFlow backend ``regplug compare`` hands ``fit`` a pipeline built once per data
set (:func:`regplug.adapters.keras.compare._fit_inputs`); the other backends get a generator
of NumPy batches. Both serve every epoch its own order of the rows
(:func:`~regplug.adapters.keras.compare.shuffle_orders`; what the train step sees is pinned
on every backend in tests/keras/test_compare_shuffle.py). These tests prove the two paths
yield the same batches and so give the same histories, accuracies and weights, bit for bit.
Timings: ``benchmarks/bench_compare.py``.
"""

from __future__ import annotations

import gc
import math
import types
from dataclasses import replace

import numpy as np
import pytest

from regplug.experiment import TrainSettings
from regplug.experiment.datasets import Splits, resolve_data, split_validation
from regplug.experiment.models import resolve_model
from regplug.experiment.strategies import BUILTIN_STRATEGIES, Strategy
from regplug.experiment.training import TrainOutcome

keras = pytest.importorskip("keras")
pytest.importorskip("sklearn")

from regplug.adapters.keras import compare as keras_compare  # noqa: E402

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="the pipelines serve the TensorFlow backend")


@pytest.fixture(scope="module")
def digits() -> Splits:
    return split_validation(resolve_data(None, seed=0), seed=0)


def _toy(n: int) -> Splits:
    rng = np.random.default_rng(1)
    x = rng.random((n, 3), dtype=np.float32)
    y = np.arange(n)  # the labels are the row numbers
    return Splits("toy", x, y, x[:7], y[:7], x[:2], y[:2], n_classes=n)


@tensorflow_only
@pytest.mark.parametrize(("n", "batch_size"), [(1069, 128), (1024, 128), (5, 128)])
def test_the_pipeline_yields_the_numpy_batches(n, batch_size):
    splits = _toy(n)
    settings = TrainSettings(epochs=3, batch_size=batch_size, seed=2)
    fast = keras_compare._fit_inputs(splits, settings, pipeline=True)
    slow = keras_compare._fit_inputs(splits, settings, pipeline=False)
    steps = math.ceil(n / batch_size)
    assert fast["steps_per_epoch"] == slow["steps_per_epoch"] == steps
    assert fast["shuffle"] is slow["shuffle"] is False
    pipeline = [(x.numpy(), y.numpy()) for x, y in fast["x"]]  # ends after the last epoch
    batches = list(slow["x"])
    assert len(pipeline) == len(batches) == settings.epochs * steps
    orders = keras_compare.shuffle_orders(n, settings.epochs, settings.seed)
    for i, ((x, y), (want_x, want_y)) in enumerate(zip(pipeline, batches, strict=True)):
        epoch, start = divmod(i, steps)
        rows = orders[epoch, start * batch_size:(start + 1) * batch_size]
        np.testing.assert_array_equal(want_y, rows)  # the labels are the row numbers
        np.testing.assert_array_equal(want_x, splits.x_train[rows])
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(x, want_x)
    # Validation: in row order, in batches of batch_size, on both paths.
    validation = list(fast["validation_data"])
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in validation]),
                                  splits.x_val)
    assert slow["validation_data"][0] is splits.x_val
    assert slow["validation_batch_size"] == batch_size


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
def test_the_pipeline_gives_the_numpy_batches_runs_bit_for_bit(digits):
    # Penalties, a proximal update, dropout (its own random stream), batch norm, a dropout
    # schedule and early stopping with restored weights: each strategy's fit with the
    # pipeline equals its fit with the NumPy batches; the later strategies reuse the pipeline.
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
def test_the_pipeline_follows_the_seed_and_batch_size(digits):
    model = resolve_model(None)
    strategy = BUILTIN_STRATEGIES["dropout"]
    settings = TrainSettings(epochs=2, batch_size=50, seed=11)
    slow = keras_compare._train(digits, strategy, strategy.build_plugins(), model, settings,
                                pipeline=False)
    fast = keras_compare.train_strategy(digits, strategy, strategy.build_plugins(), model,
                                        settings)  # the default: the pipeline on TensorFlow
    _assert_same_outcome(fast, slow)
    other = keras_compare.train_strategy(digits, strategy, strategy.build_plugins(), model,
                                         replace(settings, seed=12))
    assert other.history["loss"] != fast.history["loss"]


@tensorflow_only
def test_the_pipeline_cache_keys_on_the_data_set_seed_batch_size_and_epochs(digits):
    settings = TrainSettings()
    first = keras_compare._CACHE.get(digits, settings)
    assert keras_compare._CACHE.get(digits, settings) is first
    assert keras_compare._CACHE.get(digits, replace(settings, learning_rate=0.1)) is first
    for change in ({"seed": 1}, {"batch_size": 64}, {"epochs": 3}):
        assert keras_compare._CACHE.get(digits, replace(settings, **change)) is not first
    first = keras_compare._CACHE.get(digits, settings)
    copy = replace(digits)  # equal arrays, another data set object
    built = keras_compare._CACHE.get(copy, settings)
    assert built is not first
    del copy, built
    gc.collect()
    assert keras_compare._CACHE._pipelines is None  # dropped with its data set


def test_other_backends_get_a_fresh_generator_of_numpy_batches(digits, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    settings = TrainSettings(epochs=2)
    inputs = keras_compare._fit_inputs(digits, settings)
    assert isinstance(inputs["x"], types.GeneratorType)  # what Keras reads as a generator
    assert "y" not in inputs and inputs["shuffle"] is False  # the batches come shuffled
    steps = math.ceil(len(digits.x_train) / 128)
    assert inputs["steps_per_epoch"] == steps
    assert inputs["validation_data"][0] is digits.x_val
    assert inputs["validation_batch_size"] == 128
    batches = list(inputs["x"])
    assert len(batches) == settings.epochs * steps
    orders = keras_compare.shuffle_orders(len(digits.x_train), settings.epochs, settings.seed)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]),
                                  digits.y_train[orders.ravel()])
    assert keras_compare._fit_inputs(digits, settings)["x"] is not inputs["x"]

"""``regplug compare``'s Keras runner reshuffles the mini-batches every epoch, on every backend.

A layer writes, inside the train step (compiled on TensorFlow and JAX), the row numbers of
each batch it trains on into non-trainable variables: what the model saw, not what the data
path meant to send. Every epoch is a permutation of all rows, each epoch its own, drawn from
the seed alone (:func:`regplug.adapters.keras.compare.shuffle_orders`, the same orders on
every backend), cut into batches whose last one per epoch is the partial one. On TensorFlow
both input paths are checked: the ``tf.data`` pipeline and the NumPy batches the other
backends get.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from regplug.adapters.keras import compare as keras_compare
from regplug.experiment import TrainSettings
from regplug.experiment.datasets import Splits

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
#: The input paths of this backend: ``_fit_inputs``' ``pipeline`` argument.
PATHS = [pytest.param(True, id="tf.data pipeline"), pytest.param(False, id="numpy batches")]
if not ON_TENSORFLOW:
    PATHS = PATHS[1:]


class RowRecorder(keras.layers.Layer):
    """Passes its inputs on; in training, appends their first column (the row numbers) to
    ``rows`` and the batch's size to ``sizes``."""

    def __init__(self, rows: int, steps: int) -> None:
        super().__init__()

        def counter(name: str, shape: tuple[int, ...]) -> keras.Variable:
            return self.add_weight(shape=shape, initializer="zeros", dtype="int32",
                                   trainable=False, name=name)

        self.rows, self.sizes = counter("rows", (rows,)), counter("sizes", (steps,))
        self.filled, self.step = counter("filled", ()), counter("step", ())

    def call(self, inputs, training=None):
        if training:
            rows = ops.cast(inputs[:, 0], "int32")
            filled, step = ops.convert_to_tensor(self.filled), ops.convert_to_tensor(self.step)
            size = ops.shape(rows)[0]
            at = ops.expand_dims(filled + ops.arange(size, dtype="int32"), 1)
            self.rows.assign(ops.scatter_update(self.rows, at, rows))
            size = ops.cast(size, "int32")
            self.sizes.assign(ops.scatter_update(self.sizes, ops.reshape(step, (1, 1)),
                                                 ops.reshape(size, (1,))))
            self.filled.assign(filled + size)
            self.step.assign(step + 1)
        return inputs


def _splits(n: int) -> Splits:
    """``n`` training rows whose first feature is the row's number."""
    x = np.column_stack([np.arange(n), np.random.default_rng(0).random(n)]).astype(np.float32)
    y = np.arange(n) % 3
    return Splits("rows", x, y, x[:5], y[:5], x[:2], y[:2], n_classes=3)


def _trained_on(splits: Splits, settings: TrainSettings,
                pipeline: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows each epoch's train steps saw, in order, and each step's batch size: arrays of
    shape (epochs, rows) and (epochs, steps an epoch)."""
    n = len(splits.x_train)
    steps = math.ceil(n / settings.batch_size)
    recorder = RowRecorder(settings.epochs * n, settings.epochs * steps)
    model = keras.Sequential([keras.Input((2,)), recorder, keras.layers.Dense(3)])
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    inputs = keras_compare._fit_inputs(splits, settings, pipeline=pipeline)
    assert inputs["steps_per_epoch"] == steps
    model.fit(**inputs, epochs=settings.epochs, verbose=0)
    assert int(ops.convert_to_numpy(recorder.step)) == settings.epochs * steps
    return (ops.convert_to_numpy(recorder.rows).reshape(settings.epochs, n),
            ops.convert_to_numpy(recorder.sizes).reshape(settings.epochs, steps))


@pytest.mark.parametrize("pipeline", PATHS)
@pytest.mark.parametrize(("n", "batch_size"), [(43, 8), (40, 8)])
def test_every_epoch_trains_on_a_fresh_permutation_of_all_rows(pipeline, n, batch_size):
    settings = TrainSettings(epochs=4, batch_size=batch_size, seed=5)
    rows, sizes = _trained_on(_splits(n), settings, pipeline)
    for epoch in rows:
        assert sorted(epoch.tolist()) == list(range(n))  # each row once an epoch
    assert len({tuple(epoch) for epoch in rows}) == settings.epochs  # no order twice
    assert all(not np.array_equal(epoch, np.arange(n)) for epoch in rows)  # shuffled
    np.testing.assert_array_equal(rows, keras_compare.shuffle_orders(n, settings.epochs, 5))
    # Batches are cut per epoch: only each epoch's last may be partial (43 = 5 * 8 + 3).
    full, rest = divmod(n, batch_size)
    expected = [batch_size] * full + ([rest] if rest else [])
    np.testing.assert_array_equal(sizes, [expected] * settings.epochs)


def test_the_orders_follow_the_seed_alone():
    splits = _splits(30)
    settings = TrainSettings(epochs=3, batch_size=8, seed=3)
    keras.utils.set_random_seed(3)
    first, _ = _trained_on(splits, settings)
    keras.utils.set_random_seed(99)  # the global random state plays no part
    np.random.seed(12)
    again, _ = _trained_on(splits, settings)
    np.testing.assert_array_equal(again, first)
    keras.utils.set_random_seed(3)
    other, _ = _trained_on(splits, TrainSettings(epochs=3, batch_size=8, seed=4))
    assert all(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    np.testing.assert_array_equal(other, keras_compare.shuffle_orders(30, 3, 4))

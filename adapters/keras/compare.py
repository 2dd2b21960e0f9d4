"""The Keras side of ``regplug compare``: ``model.fit`` with one :class:`Regularize` callback.

The same hyper-parameters as the PyTorch runner (:class:`regplug.compare.TrainSettings`):
SGD with momentum, cross-entropy on logits, Keras' default Glorot-uniform weights and zero
biases. Validation runs through ``fit``'s ``validation_data``, so ``val_loss`` includes the
penalties, as it does with Keras' own regularizers. Runs on whichever Keras backend is
configured (TensorFlow by default; ``KERAS_BACKEND=torch`` or ``jax`` work too).

On the TensorFlow backend ``fit`` gets ``tf.data`` pipelines built once per data set instead
of the NumPy arrays (:func:`_fit_inputs`): the same batches in the same order, so the same
results, in less than half the time (most of a 30-epoch run on the digits went into the
iterators Keras' array adapter builds every epoch). ``benchmarks/bench_compare.py`` measures it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from regplug.compare.datasets import Splits
from regplug.compare.frameworks import EpochCallback, TrainSettings
from regplug.compare.models import FactoryCheck, ModelChoice, ModelSpec
from regplug.compare.results import TrainOutcome, WeightArray
from regplug.compare.strategies import Strategy
from regplug.compare.toy import (
    TOY_DROPOUT,
    TOY_EPOCHS,
    TOY_HIDDEN,
    TOY_LEARNING_RATE,
    TOY_SAMPLES,
    RegressionToy,
)
from regplug.uncertainty import MCPrediction

from .callback import Regularize
from .discovery import SCHEDULABLE_DROPOUT_TYPES, all_layers
from .uncertainty import mc_predict

__all__ = ["KerasRunner", "describe", "build_mlp", "build_model", "compile_model", "train_strategy",
           "mc_dropout", "shuffle_order"]

_EVAL_ROWS = 8192


def describe() -> str:
    """The framework, its version and backend, for the results' settings."""
    return f"keras {keras.__version__} ({keras.backend.backend()} backend)"


def build_mlp(hidden: tuple[int, ...], spec: ModelSpec) -> keras.Model:
    """Dense layers of widths ``hidden`` with ReLU, then batch normalization and dropout
    (when the spec asks) after the last hidden layer — where the comparison notebook puts
    them — then a Dense layer to the class logits.

    >>> model = build_mlp((50, 250), ModelSpec("keras", 64, 10, dropout=0.2, batch_norm=True))
    >>> [type(layer).__name__ for layer in model.layers]
    ['Dense', 'Dense', 'BatchNormalization', 'Dropout', 'Dense']
    """
    layers: list[Any] = [keras.Input((spec.n_features,))]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
    if spec.batch_norm:
        layers.append(keras.layers.BatchNormalization())
    if spec.dropout is not None:
        layers.append(keras.layers.Dropout(spec.dropout, seed=spec.seed))
    layers.append(keras.layers.Dense(spec.n_classes))
    return keras.Sequential(layers, name="mlp")


def build_model(choice: ModelChoice, spec: ModelSpec, *, strategy: str) -> keras.Model:
    """The built-in MLP, or the user's factory's model, checked against the spec."""
    if choice.factory is None:
        return build_mlp(choice.hidden, spec)
    model = choice.factory(spec)
    check = FactoryCheck(f"--model {choice.name!r} (strategy {strategy!r}, keras)",
                         "keras.Model", "keras.layers.Dropout", "BatchNormalization")
    if not isinstance(model, keras.Model):
        raise check.wrong_type(model)
    try:
        out = keras.ops.convert_to_numpy(model(np.zeros((2, spec.n_features), np.float32),
                                               training=False))
    except Exception as err:  # each backend raises its own error types for a bad input
        raise check.failed_forward(spec, err) from err
    if not model.trainable_weights:  # known after the trial batch built the layers
        raise check.nothing_to_train(
            f"{len(model.weights)} weights, none trainable: trainable=False on the model or "
            "every layer" if model.weights else "it has no weights")
    layers = all_layers(model)
    check.verify(spec,
                 has_dropout=any(isinstance(layer, SCHEDULABLE_DROPOUT_TYPES) for layer in layers),
                 has_batch_norm=any(isinstance(layer, keras.layers.BatchNormalization)
                                    for layer in layers),
                 output_shape=tuple(out.shape))
    return model


def compile_model(model: keras.Model, settings: TrainSettings) -> None:
    """SGD with momentum (torch's update), cross-entropy on logits, accuracy and the
    cross-entropy alone as metrics (``loss`` also holds the penalties)."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=settings.learning_rate,
                                       momentum=settings.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseCategoricalCrossentropy(from_logits=True,
                                                             name="cross_entropy")])


def shuffle_order(n: int, seed: int) -> np.ndarray:
    """The order of the ``n`` training rows in every epoch of ``model.fit(x, y, shuffle=True)``
    on the TensorFlow backend after ``keras.utils.set_random_seed(seed)``.

    Keras' array adapter draws the order with ``tf.random.shuffle`` inside a ``tf.data`` map
    function; the op's seed derives from the global seed and the function's own graph
    alone, and each epoch's iterator starts the op afresh, so every epoch gets this same
    order (Keras 3.15, TensorFlow 2.21; torch's runner reshuffles each epoch). The function
    below is the adapter's, op for op, so it draws what fit drew;
    ``tests/compare/test_compare_speed.py`` pins that against fit on the arrays. Sets
    TensorFlow's global seed to ``seed``, as ``set_random_seed`` did.
    """
    import tensorflow as tf

    tf.random.set_seed(seed)

    def permutation(_: Any) -> Any:  # keras/src/trainers/data_adapters/array_data_adapter.py
        indices = tf.range(n, dtype=tf.int64)
        return tf.random.shuffle(indices)

    return np.asarray(next(iter(tf.data.Dataset.range(1).map(permutation))))


class _Pipelines:
    """The training and validation pipelines of one data set, seed and batch size.

    The training pipeline holds the rows in :func:`shuffle_order`, batched, repeated without
    end: ``fit`` reads it through one iterator with ``steps_per_epoch`` batches an epoch,
    the last one partial, as the array adapter cuts them. Validation is batched in row
    order. The strategies of one run share one instance (:data:`_CACHE`).
    """

    def __init__(self, splits: Splits, settings: TrainSettings) -> None:
        import tensorflow as tf

        order = shuffle_order(len(splits.x_train), settings.seed)
        self.steps_per_epoch = math.ceil(len(splits.x_train) / settings.batch_size)
        self.train = tf.data.Dataset.from_tensor_slices(
            (splits.x_train[order], splits.y_train[order])
        ).batch(settings.batch_size).repeat()
        self.validation = tf.data.Dataset.from_tensor_slices(
            (splits.x_val, splits.y_val)).batch(settings.batch_size)


class _PipelineCache:
    """The last data set's :class:`_Pipelines`, dropped when its :class:`Splits` is."""

    def __init__(self) -> None:
        self._splits: weakref.ref[Splits] | None = None
        self._key: tuple[int, int] | None = None
        self._pipelines: _Pipelines | None = None

    def get(self, splits: Splits, settings: TrainSettings) -> _Pipelines:
        key = (settings.seed, settings.batch_size)
        if (self._pipelines is None or self._splits is None or self._splits() is not splits
                or self._key != key):
            self._pipelines = _Pipelines(splits, settings)
            self._splits, self._key = weakref.ref(splits, self._drop), key
        return self._pipelines

    def _drop(self, ref: weakref.ref[Splits]) -> None:
        if ref is self._splits:
            self._splits = self._key = self._pipelines = None


_CACHE = _PipelineCache()


def _fit_inputs(splits: Splits, settings: TrainSettings, *,
                pipeline: bool | None = None) -> dict[str, Any]:
    """The data arguments of ``model.fit``: what to train and validate on, and how.

    ``pipeline=True`` (the default on the TensorFlow backend): :class:`_Pipelines`, built
    once per data set. ``False`` (the default on the other backends): the NumPy arrays with
    ``shuffle=True``, read by Keras' array adapter, which on TensorFlow rebuilds its
    iterators every epoch (the default run's MLP on the digits: 57 ms an epoch after the
    first, against 17.5 ms with the pipelines; a 30-epoch fit 2.2 s against 1.05 s). The
    batches and their order are the same either way (:func:`shuffle_order`), so are the
    results, bit for bit. Call it right after ``keras.utils.set_random_seed(settings.seed)``.
    """
    if pipeline is None:
        pipeline = keras.backend.backend() == "tensorflow"
    if not pipeline:
        return {"x": splits.x_train, "y": splits.y_train, "batch_size": settings.batch_size,
                "shuffle": True, "validation_data": (splits.x_val, splits.y_val)}
    pipelines = _CACHE.get(splits, settings)
    return {"x": pipelines.train, "steps_per_epoch": pipelines.steps_per_epoch,
            "shuffle": False, "validation_data": pipelines.validation}


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    correct = 0
    for i in range(0, len(x), _EVAL_ROWS):
        logits = keras.ops.convert_to_numpy(model(x[i:i + _EVAL_ROWS], training=False))
        correct += int((logits.argmax(axis=1) == y[i:i + _EVAL_ROWS]).sum())
    return correct / len(x)


class _EpochReporter(keras.callbacks.Callback):
    """Hands each epoch's logs (after Regularize added its entries) to the progress bar."""

    def __init__(self, on_epoch: EpochCallback) -> None:
        super().__init__()
        self._on_epoch = on_epoch

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._on_epoch(epoch, {k: float(v) for k, v in (logs or {}).items()})


def train_strategy(splits: Splits, strategy: Strategy, plugins: list[object],
                   model_choice: ModelChoice, settings: TrainSettings,
                   on_epoch: EpochCallback | None = None) -> TrainOutcome:
    """Train a fresh model under ``strategy`` (its model options and ``plugins``)."""
    return _train(splits, strategy, plugins, model_choice, settings, on_epoch)


def _train(splits: Splits, strategy: Strategy, plugins: list[object], model_choice: ModelChoice,
           settings: TrainSettings, on_epoch: EpochCallback | None = None, *,
           pipeline: bool | None = None) -> TrainOutcome:
    """:func:`train_strategy`, with the choice of :func:`_fit_inputs` (for the tests)."""
    keras.utils.set_random_seed(settings.seed)
    inputs = _fit_inputs(splits, settings, pipeline=pipeline)
    dropout, batch_norm = strategy.model_options(plugins)
    spec = ModelSpec("keras", splits.n_features, splits.n_classes, dropout, batch_norm,
                     settings.seed)
    model = build_model(model_choice, spec, strategy=strategy.name)
    compile_model(model, settings)
    regularize = Regularize(plugins)
    callbacks: list[keras.callbacks.Callback] = [regularize]
    if on_epoch is not None:
        callbacks.append(_EpochReporter(on_epoch))
    start = time.perf_counter()
    fitted = model.fit(**inputs, epochs=settings.epochs, verbose=0, callbacks=callbacks)
    # fit's end fired on_train_end: early stopping has put its best weights back.
    seconds = time.perf_counter() - start
    run = regularize.run
    assert run is not None  # fit ran, so the callback built its run
    weights = [WeightArray(h.name, h.kind, h.layer_type, h.unit_axis,
                           np.array(keras.ops.convert_to_numpy(h.tensor), copy=True),
                           native_name=h.native_name)
               for h in run.params]
    return TrainOutcome(
        history={k: [float(v) for v in values] for k, values in fitted.history.items()},
        acc_train=_accuracy(model, splits.x_train, splits.y_train),
        acc_test=_accuracy(model, splits.x_test, splits.y_test),
        weights=weights, steps=int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        seconds=seconds,
        stop_reason="; ".join(str(r) for r in regularize.stop_requests) or None)


def mc_dropout(toy: RegressionToy, *, seed: int = 0) -> MCPrediction:
    """Train the toy regression network with dropout, then predict the grid with dropout on."""
    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input((1,))]
    for units in TOY_HIDDEN:
        layers += [keras.layers.Dense(units, activation="relu"),
                   keras.layers.Dropout(TOY_DROPOUT, seed=seed)]
    model = keras.Sequential([*layers, keras.layers.Dense(1)], name="toy")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=TOY_LEARNING_RATE), loss="mse")
    # TOY_EPOCHS full-batch updates, as one epoch over the data repeated: the same steps
    # without fit's per-epoch overhead.
    model.fit(np.tile(toy.x_train, (TOY_EPOCHS, 1)), np.tile(toy.y_train, (TOY_EPOCHS, 1)),
              batch_size=len(toy.x_train), epochs=1, shuffle=False, verbose=0)
    return mc_predict(model, toy.x_grid, samples=TOY_SAMPLES, seed=seed)


class KerasRunner:
    """The Keras runner of ``regplug compare``
    (:class:`regplug.compare.frameworks.FrameworkRunner`), registered as entry point
    ``keras`` of group ``regplug.frameworks``."""

    name = "keras"
    describe = staticmethod(describe)
    train_strategy = staticmethod(train_strategy)
    mc_dropout = staticmethod(mc_dropout)

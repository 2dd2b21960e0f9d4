"""The Keras side of ``regplug compare``: ``model.fit`` with one :class:`Regularize` callback.

The PyTorch runner's hyper-parameters (:class:`regplug.experiment.TrainSettings`): SGD with
momentum, cross-entropy on logits, Glorot-uniform weights, zero biases. Validation runs
through ``fit``'s ``validation_data``, so ``val_loss`` includes the penalties, as it does with
Keras' own regularizers. Runs on any Keras backend (TensorFlow by default).

The mini-batches are reshuffled every epoch, as in the PyTorch runner, in an order drawn with
NumPy from the seed alone (:func:`shuffle_orders`), the same on every backend. On TensorFlow
``fit`` reads them from a ``tf.data`` pipeline built once per data set (:func:`_fit_inputs`);
on the other backends from a generator of NumPy batches in the same order, so the two paths
give the same results, in less than half the time of Keras' array adapter
(``benchmarks/bench_compare.py``).

Docs: docs/compare.md
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, cast

import keras
import numpy as np

from regplug.experiment.datasets import Splits
from regplug.experiment.finetune import (
    HEAD,
    FinetuneSplits,
    check_finetune_model,
    starts_pretrained,
)
from regplug.experiment.frameworks import EpochCallback, TrainSettings
from regplug.experiment.models import FactoryCheck, ModelChoice, ModelError, ModelSpec
from regplug.experiment.strategies import Strategy
from regplug.experiment.toy import (
    TOY_DROPOUT,
    TOY_EPOCHS,
    TOY_HIDDEN,
    TOY_LEARNING_RATE,
    TOY_SAMPLES,
    RegressionToy,
)
from regplug.experiment.training import TrainOutcome, WeightArray
from regplug.uncertainty import MCPrediction

from .callback import Regularize
from .discovery import SCHEDULABLE_DROPOUT_TYPES, all_layers
from .uncertainty import mc_predict

__all__ = ["KerasRunner", "describe", "build_mlp", "build_model", "compile_model", "train_strategy",
           "mc_dropout", "shuffle_orders", "build_finetune_mlp", "head_layer"]

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


def build_finetune_mlp(hidden: tuple[int, ...], spec: ModelSpec) -> keras.Model:
    """The built-in MLP of ``--task finetune``, its layers named for the fine-tuning plugins:
    hidden Dense layers ``layers.0``, ``layers.1``, ... (ReLU), then batch normalization
    (``norm``) and dropout (``dropout``) when the spec asks, then the output layer ``head``,
    the one replaced after pretraining (as the PyTorch runner's ``FinetuneMLP``).

    >>> model = build_finetune_mlp((50, 250), ModelSpec("keras", 64, 5))
    >>> [layer.name for layer in model.layers]
    ['layers.0', 'layers.1', 'head']
    """
    layers: list[Any] = [keras.Input((spec.n_features,))]
    layers += [keras.layers.Dense(units, activation="relu", name=f"layers.{i}")
               for i, units in enumerate(hidden)]
    if spec.batch_norm:
        layers.append(keras.layers.BatchNormalization(name="norm"))
    if spec.dropout is not None:
        layers.append(keras.layers.Dropout(spec.dropout, seed=spec.seed, name="dropout"))
    layers.append(keras.layers.Dense(spec.n_classes, name=HEAD))
    return keras.Sequential(layers, name="finetune_mlp")


def head_layer(model: keras.Model, *, where: str = "--task finetune") -> int:
    """The index in :func:`~regplug.adapters.keras.discovery.all_layers` of ``model``'s
    output layer, replaced after pretraining: the layer named ``head`` where there is one,
    else the last layer that holds weights of its own."""
    layers = all_layers(model)
    owners = [i for i, layer in enumerate(layers)
              if layer.weights and not isinstance(layer, keras.Model)]
    named = [i for i in owners if layers[i].name == HEAD]
    if named:
        return named[-1]
    if len(owners) < 2:
        raise ModelError(f"{where}: the model has {'one layer' if owners else 'no layer'} with "
                         "weights; fine-tuning replaces the last one (the head) and needs "
                         "layers below it to pretrain")
    return owners[-1]


def _finetune_model(choice: ModelChoice, spec: ModelSpec, *, strategy: str) -> keras.Model:
    """The fine-tuning task's model: :func:`build_finetune_mlp`, or the user's factory's."""
    if choice.factory is not None:
        return build_model(choice, spec, strategy=strategy)
    check_finetune_model(choice)
    return build_finetune_mlp(choice.hidden, spec)


def _pretrained(task: FinetuneSplits, choice: ModelChoice, spec: ModelSpec, *, strategy: str,
                seed: int) -> dict[int, list[np.ndarray]]:
    """The weights (trainable and not) of every layer of a model pretrained on
    ``task.pretrain`` (classes 0-4) with the run's ``seed`` but its head, by index in
    :func:`~regplug.adapters.keras.discovery.all_layers`: trained once per seed, model and
    model options, then kept in ``task.cache`` for every strategy of that seed."""
    key = ("keras", choice.name, spec.dropout, spec.batch_norm, seed)
    cached = task.cache.get(key)
    if cached is not None:
        return cast(dict[int, list[np.ndarray]], cached)
    pre = task.pretrain
    assert pre is not None  # finetune_splits always sets it
    settings = replace(task.pretrain_settings, seed=seed)
    keras.utils.set_random_seed(seed)
    model = _finetune_model(choice, replace(spec, n_classes=pre.n_classes), strategy=strategy)
    compile_model(model, settings)
    inputs = {k: v for k, v in _fit_inputs(pre, settings).items()
              if not k.startswith("validation")}  # pretraining needs no validation
    model.fit(**inputs, epochs=settings.epochs, verbose=0)
    head = head_layer(model)
    weights = {i: [np.array(w, copy=True) for w in layer.get_weights()]
               for i, layer in enumerate(all_layers(model))
               if i != head and layer.weights and not isinstance(layer, keras.Model)}
    task.cache[key] = weights
    return weights


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


def shuffle_orders(n: int, epochs: int, seed: int) -> np.ndarray:
    """The order of the ``n`` training rows in each of ``epochs`` epochs: an ``(epochs, n)``
    array whose every row is a permutation of ``range(n)``, each epoch's drawn afresh from
    NumPy's generator seeded with ``seed`` (nothing else: no global random state).

    Epoch ``e`` trains on the rows ``orders[e]`` in mini-batches cut in that order, the last
    one holding the rows left (a partial batch), on every Keras backend (:func:`_fit_inputs`).

    >>> orders = shuffle_orders(5, 3, seed=0)
    >>> orders.shape, sorted(orders[2].tolist())
    ((3, 5), [0, 1, 2, 3, 4])
    >>> bool((orders == shuffle_orders(5, 3, seed=0)).all())
    True
    """
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(n) for _ in range(epochs)], dtype=np.int64).reshape(
        epochs, n)


def _numpy_batches(splits: Splits, orders: np.ndarray,
                   batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The training mini-batches of every epoch in ``orders``, one after the other."""
    for order in orders:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield splits.x_train[rows], splits.y_train[rows]


class _Pipelines:
    """The training and validation pipelines of one data set, seed, batch size and number of
    epochs.

    The training pipeline yields every epoch's mini-batches, epoch after epoch: the rows in
    that epoch's :func:`shuffle_orders` row, cut into ``steps_per_epoch`` batches, the last
    one of each epoch holding the rows left. ``fit`` reads it through one iterator,
    ``steps_per_epoch`` batches an epoch; a new ``fit`` starts again at the first epoch. Each
    batch is gathered from the arrays when it is read, so the pipeline holds the data once,
    not once an epoch. Validation is batched in row order. The strategies of one run share
    one instance (:data:`_CACHE`).
    """

    def __init__(self, splits: Splits, settings: TrainSettings) -> None:
        import tensorflow as tf

        n, batch_size = len(splits.x_train), settings.batch_size
        steps = self.steps_per_epoch = math.ceil(n / batch_size)
        orders = tf.constant(shuffle_orders(n, settings.epochs, settings.seed))
        x, y = tf.constant(splits.x_train), tf.constant(splits.y_train)

        def batch(step: Any) -> Any:  # one map per batch: 2x faster than batching row by row
            epoch, start = step // steps, step % steps * batch_size
            rows = orders[epoch, start:start + batch_size]  # an epoch's last: the rows left
            return tf.gather(x, rows), tf.gather(y, rows)

        self.train = (tf.data.Dataset.range(settings.epochs * steps)
                      .map(batch, num_parallel_calls=tf.data.AUTOTUNE)  # keeps the order
                      .prefetch(tf.data.AUTOTUNE))
        self.validation = tf.data.Dataset.from_tensor_slices(
            (splits.x_val, splits.y_val)).batch(batch_size)


class _PipelineCache:
    """The last data set's :class:`_Pipelines`, dropped when its :class:`Splits` is."""

    def __init__(self) -> None:
        self._splits: weakref.ref[Splits] | None = None
        self._key: tuple[int, int, int] | None = None
        self._pipelines: _Pipelines | None = None

    def get(self, splits: Splits, settings: TrainSettings) -> _Pipelines:
        key = (settings.seed, settings.batch_size, settings.epochs)
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

    Every epoch trains on its own order of the rows (:func:`shuffle_orders`), in
    ``steps_per_epoch`` mini-batches of ``settings.batch_size``, the last the rows left.
    ``pipeline=True`` (the default on the TensorFlow backend): :class:`_Pipelines`, built
    once per data set. ``False`` (the default on the other backends): a generator of NumPy
    batches, a fresh one each call. Both yield the same batches, so give the same results.

    Not the NumPy arrays with ``shuffle=True``: Keras' array adapter draws its orders from
    each backend's global random state, so each backend trained on other batches, and on
    TensorFlow every epoch on the same order (Keras 3.15, TensorFlow 2.21: each epoch's
    iterator restarts its seeded ``tf.random.shuffle``); it also rebuilds its iterators every
    epoch there (the default run's MLP on the digits: 57 ms an epoch after the first, against
    17.5 ms with a pipeline; a 30-epoch fit 2.2 s against 1.05 s).
    """
    if pipeline is None:
        pipeline = keras.backend.backend() == "tensorflow"
    if pipeline:
        pipelines = _CACHE.get(splits, settings)
        return {"x": pipelines.train, "steps_per_epoch": pipelines.steps_per_epoch,
                "shuffle": False, "validation_data": pipelines.validation}
    orders = shuffle_orders(len(splits.x_train), settings.epochs, settings.seed)
    return {"x": _numpy_batches(splits, orders, settings.batch_size),
            "steps_per_epoch": math.ceil(len(splits.x_train) / settings.batch_size),
            "shuffle": False, "validation_data": (splits.x_val, splits.y_val),
            "validation_batch_size": settings.batch_size}


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
    """:func:`train_strategy`, with the choice of :func:`_fit_inputs` (for the tests).

    With :class:`~regplug.experiment.finetune.FinetuneSplits` (``--task finetune``) the
    model starts from the weights pretrained on classes 0-4 (cached per seed), its head
    fresh, unless the strategy starts from scratch."""
    dropout, batch_norm = strategy.model_options(plugins)
    spec = ModelSpec("keras", splits.n_features, splits.n_classes, dropout, batch_norm,
                     settings.seed)
    task = splits if isinstance(splits, FinetuneSplits) else None
    backbone = None
    if task is not None and starts_pretrained(strategy):  # before the seed: cached or not
        backbone = _pretrained(task, model_choice, spec, strategy=strategy.name,
                               seed=settings.seed)
    keras.utils.set_random_seed(settings.seed)
    inputs = _fit_inputs(splits, settings, pipeline=pipeline)
    if task is None:
        model = build_model(model_choice, spec, strategy=strategy.name)
    else:
        model = _finetune_model(model_choice, spec, strategy=strategy.name)
    if backbone is not None:  # every layer but the head: pretrained
        layers = all_layers(model)
        for index, arrays in backbone.items():
            layers[index].set_weights(arrays)
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
    (:class:`regplug.experiment.frameworks.FrameworkRunner`), registered as entry point
    ``keras`` of group ``regplug.frameworks``."""

    name = "keras"
    describe = staticmethod(describe)
    train_strategy = staticmethod(train_strategy)
    mc_dropout = staticmethod(mc_dropout)

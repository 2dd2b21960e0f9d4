"""Small Keras models, data and probes shared by the Keras test modules (tests/keras/ and others).

Everything is backend-neutral (``keras.ops``); the modules run under the backend Keras was
imported with (tensorflow by default; tox reruns the tests marked keras_backends under the others).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

import regplug

BACKEND = keras.backend.backend()
COMPILED = BACKEND in ("tensorflow", "jax")  # fit traces the train step by default


def data(n: int = 64, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    w = rng.normal(size=(d, 1)).astype("float32")
    y = (x @ w + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def mlp(seed: int = 0, *, reg: Any = None, bias_reg: Any = None, norm_reg: Any = None,
        constraint: Any = None, dropout: float = 0.2, d: int = 8) -> keras.Model:
    """Dense → BatchNorm → Dropout → Dense, optionally with Keras' own regularizers."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(16, activation="relu", kernel_regularizer=reg,
                           bias_regularizer=bias_reg, kernel_constraint=constraint),
        keras.layers.BatchNormalization(gamma_regularizer=norm_reg, beta_regularizer=norm_reg),
        keras.layers.Dropout(dropout, seed=1, name="dropout"),  # seeded: same masks everywhere
        keras.layers.Dense(1, kernel_regularizer=reg, bias_regularizer=bias_reg,
                           kernel_constraint=constraint),
    ], name="mlp")


def linear(seed: int = 0, *, d: int = 8, units: int = 4) -> keras.Model:
    """One bias-free Dense layer: with :func:`zero_loss` only the plugins move its kernel."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(units, use_bias=False)],
                            name="linear")


def zero_loss(y_true: Any, y_pred: Any) -> Any:
    """A loss whose gradient is exactly 0: the data leave the weights alone."""
    return 0.0 * ops.mean(y_pred)


def sgd(lr: float = 0.05) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=lr)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def kernel(model: keras.Model, index: int = 0) -> np.ndarray:
    kernels = [v for v in model.trainable_variables if v.name == "kernel"]
    return np.array(ops.convert_to_numpy(kernels[index]))


def assert_same_weights(a: keras.Model, b: keras.Model, *, rtol: float = 1e-6,
                        atol: float = 1e-7) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for va, vb, var in zip(wa, wb, a.weights):
        np.testing.assert_allclose(vb, va, rtol=rtol, atol=atol, err_msg=var.path)


def plain_twin(model: keras.Model, reg: object = None) -> keras.Model:
    """A compiled :func:`mlp` (SGD, MSE) that never met regplug, with Keras' own ``reg`` on
    its kernels if given, in exactly ``model``'s state: weights, batch-norm statistics,
    dropout seed state, optimizer slots and iterations (``model``'s regplug variables, if it
    still has any, are left out)."""
    twin = mlp(reg=reg)
    twin.compile(optimizer=sgd(), loss="mse")
    twin.optimizer.build(twin.trainable_variables)
    theirs = [v for v in model.variables if "regplug" not in v.path]
    assert len(theirs) == len(twin.variables)
    for a, b in zip(twin.variables, theirs):
        a.assign(ops.convert_to_numpy(b))
    for a, b in zip(twin.optimizer.variables, model.optimizer.variables):
        a.assign(ops.convert_to_numpy(b))
    return twin


def regplug_leftovers(model: keras.Model) -> list[str]:
    """What regplug left on a compiled model: attributes it set (``_regplug*`` or values of
    its classes), the optimizer's patched ``apply``, patched layer ``call``s, penalty metrics
    and regplug variables. Empty once the adapter has detached."""
    found = [f"model.{k}" for k, v in vars(model).items()
             if k.startswith("_regplug") or getattr(v, "__module__", "").startswith("regplug")]
    found += ["optimizer.apply"] * ("apply" in vars(model.optimizer))
    found += [f"{layer.name}.call" for layer in model.layers if "call" in vars(layer)]
    found += [f"metric {m.name}" for m in model.metrics if "penalty" in m.name]
    found += [f"variable {v.path}" for v in model.variables if "regplug" in v.path]
    return found


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, *, epochs: int = 2,
        batch_size: int = 16, callbacks: list[Any] | None = None, **kw: Any
        ) -> keras.callbacks.History:
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0,
                     callbacks=callbacks or [], **kw)


class DropProbe(keras.layers.Layer):
    """Measures, inside the train step, the fraction of exact zeros in its input.

    Its input is all ones, so every zero is a dropped unit. The fraction of the last
    training batch is kept in a non-trainable variable; ``traced`` counts how often the
    Python body of ``call`` ran in training mode (once per trace when compiled).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.zeros = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="zeros")
        self.mean = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    name="mean")
        self.traced = 0

    def call(self, x: Any, training: bool | None = None) -> Any:
        if training:
            self.traced += 1
            self.zeros.assign(ops.mean(ops.cast(ops.equal(x, 0.0), "float32")))
            self.mean.assign(ops.mean(x))
        return x


def dropout_model(rates: tuple[float, ...] = (0.0, 0.5), width: int = 512) -> keras.Model:
    """Input → [Dropout(rate_i) → DropProbe_i]… → Dense(1); layers named drop_i/probe_i."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((width,))
    x = inp
    for i, rate in enumerate(rates):
        x = keras.layers.Dropout(rate, name=f"drop_{i}")(x)
        x = DropProbe(name=f"probe_{i}")(x)
    out = keras.layers.Dense(1, name="head")(x)
    return keras.Model(inp, out)


class SetRates(regplug.Plugin):
    """Sets dropout rates per epoch through ``run.dropout_layers()`` handles."""

    def __init__(self, schedule: dict[str, list[float]]) -> None:
        self.schedule = schedule
        self.handles: dict[str, regplug.DropoutHandle] = {}

    @regplug.hookimpl
    def on_train_begin(self, run):
        self.handles = {h.name: h for h in run.dropout_layers()}

    @regplug.hookimpl
    def on_epoch_begin(self, run, epoch):
        for name, rates in self.schedule.items():
            self.handles[name].rate = rates[epoch]


class ProbeLog(keras.callbacks.Callback):
    """Reads the probes after each epoch (a test-only host read)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names
        self.zeros: dict[str, list[float]] = {n: [] for n in names}
        self.means: dict[str, list[float]] = {n: [] for n in names}

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        for name in self.names:
            probe = self.model.get_layer(name)
            self.zeros[name].append(float(ops.convert_to_numpy(probe.zeros)))
            self.means[name].append(float(ops.convert_to_numpy(probe.mean)))


class StopAt(regplug.Plugin):
    """Votes to stop at the end of a given epoch and records the logs it saw."""

    def __init__(self, epoch: int) -> None:
        self.stop_epoch = epoch
        self.seen: list[dict[str, float]] = []

    @regplug.hookimpl
    def on_epoch_end(self, run, epoch, logs):
        self.seen.append(dict(logs))
        logs["seen_by_plugin"] = float(epoch)
        if epoch == self.stop_epoch:
            run.stop(f"asked to stop at epoch {epoch}", source=self.name)


class CountHooks(regplug.Plugin):
    """Counts Python executions of the step hooks (once per trace when compiled)."""

    def __init__(self) -> None:
        self.calls = {"on_loss": 0, "on_before_step": 0, "on_step": 0}
        self.loss_shapes: list[tuple[int, ...]] = []

    @regplug.hookimpl
    def on_loss(self, run, loss):
        if loss is None:  # the adapter asking for the penalties' names at fit start
            return
        self.calls["on_loss"] += 1
        self.loss_shapes.append(tuple(ops.shape(loss)))

    @regplug.hookimpl
    def on_before_step(self, run):
        self.calls["on_before_step"] += 1

    @regplug.hookimpl
    def on_step(self, run):
        self.calls["on_step"] += 1

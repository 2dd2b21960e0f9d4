"""Keras ``model.fit`` under ``tf.distribute.MirroredStrategy`` on two logical CPU devices.

Run by tests/distributed/test_keras_mirrored.py as ``python _keras_distributed.py OUT_DIR`` in a fresh
process (not a test module): the CPU must be split into two logical devices before
TensorFlow initialises its devices, which in the test process has long happened. Each
scenario writes the weights it ends with to ``OUT_DIR/<scenario>.npz`` and what else it
observed to ``OUT_DIR/report.json``; the test compares them.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _keras_models import ProbeLog, SetRates, StopAt, data, dropout_model, fit, mlp, sgd  # noqa: E402

import regplug  # noqa: E402
from regplug.adapters.keras import Regularize  # noqa: E402
from regplug.plugins import L2, DecoupledWeightDecay, EarlyStopping, MaxNorm  # noqa: E402
from regplug.schedules import LinearWarmup  # noqa: E402

X, Y = data()


class GradientTerm(regplug.Plugin):
    """Adds ``alpha·θ`` to the gradient of every weight, through ``run.ops`` (an L2 term
    applied to the gradient, as a third-party plugin might)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    @regplug.hookimpl
    def on_before_step(self, run, step):
        run.ops.add_to_grad_(run.parameters(), self.alpha)


def mlp_without_batch_norm() -> keras.Model:
    # BatchNormalization normalizes each replica's half batch on its own (not synchronized),
    # so a model with it cannot match a one-device run; this one can.
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)],
                            name="plain")


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v) for v in model.weights}


def floats(history: keras.callbacks.History) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in history.history.items()}


def keras_own_vs_plugins(strategy: tf.distribute.Strategy, out: Path) -> dict[str, Any]:
    """Keras' kernel_regularizer + kernel_constraint + AdamW vs the three plugins + Adam,
    both built and compiled in the strategy's scope."""
    with strategy.scope():
        theirs = mlp(dropout=0.0, reg=keras.regularizers.L2(0.01),
                     constraint=keras.constraints.MaxNorm(0.5, axis=0))
        adamw = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.1)
        adamw.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        theirs.compile(optimizer=adamw, loss="mse")
        ours = mlp(dropout=0.0)
        ours.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    # No validation data: tracing the replicated test step would double the time, and it
    # adds the penalties through the same compute_loss as the train step.
    h_theirs = fit(theirs, X, Y, epochs=2)
    h_ours = fit(ours, X, Y, epochs=2, callbacks=[
        Regularize([L2(0.01), MaxNorm(0.5), DecoupledWeightDecay(0.1)])])
    np.savez(out / "keras_theirs.npz", **weights(theirs))
    np.savez(out / "keras_ours.npz", **weights(ours))
    return {"theirs": floats(h_theirs), "ours": floats(h_ours)}


def one_device_vs_mirrored(strategy: tf.distribute.Strategy, out: Path) -> dict[str, Any]:
    """The same plugins on one device and on two replicas, with a scheduled strength."""
    def plugins() -> list[object]:
        return [L2(LinearWarmup(0.02, warmup_steps=5)), GradientTerm(0.3),
                DecoupledWeightDecay(0.1), MaxNorm(0.7)]

    histories = {}
    for where in ("one_device", "mirrored"):
        if where == "mirrored":
            with strategy.scope():
                model = mlp_without_batch_norm()
                model.compile(optimizer=sgd(), loss="mse")
        else:
            model = mlp_without_batch_norm()
            model.compile(optimizer=sgd(), loss="mse")
        histories[where] = floats(fit(model, X, Y, epochs=3, callbacks=[Regularize(plugins())]))
        np.savez(out / f"{where}.npz", **weights(model))
    return histories


def stop_vote(strategy: tf.distribute.Strategy, out: Path) -> dict[str, Any]:
    with strategy.scope():
        model = mlp(dropout=0.0)
        model.compile(optimizer=sgd(), loss="mse")
    callback = Regularize([StopAt(1)])
    history = fit(model, X, Y, epochs=5, callbacks=[callback])
    return {"epochs_run": len(history.history["loss"]),
            "requests": [[r.reason, r.source, r.epoch] for r in callback.stop_requests]}


def dropout_rates(strategy: tf.distribute.Strategy, out: Path) -> dict[str, Any]:
    """Rates set per epoch by a plugin, measured inside the replicated step."""
    with strategy.scope():
        model = dropout_model(rates=(0.0, 0.5))
        model.compile(optimizer=sgd(), loss="mse")
    x = np.ones((64, 512), "float32")
    y = np.zeros((64, 1), "float32")
    probe = ProbeLog(["probe_0", "probe_1"])
    fit(model, x, y, epochs=3, callbacks=[
        Regularize([SetRates({"drop_0": [0.0, 0.3, 0.6], "drop_1": [0.5, 0.0, 0.2]})]), probe])
    return {"zeros": probe.zeros}


class ScriptedMetric(keras.callbacks.Callback):
    """Puts a scripted ``val_score`` into each epoch's logs (before Regularize reads them)
    and saves the weights every epoch ended with."""

    def __init__(self, series: list[float], out: Path) -> None:
        super().__init__()
        self.series, self.out = series, out

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = self.series[epoch]
        np.savez(self.out / f"epoch_{epoch}.npz", **weights(self.model))


def early_stopping(strategy: tf.distribute.Strategy, out: Path) -> dict[str, Any]:
    """Best weights kept and restored while the variables are mirrored (batch norm too)."""
    with strategy.scope():
        model = mlp(dropout=0.0)
        model.compile(optimizer=sgd(), loss="mse")
    stopper = EarlyStopping("val_score", mode="min", patience=2)
    history = fit(model, X, Y, epochs=8, callbacks=[
        ScriptedMetric([1.0, 0.5, 0.8, 0.9, 0.4, 0.3, 0.2, 0.1], out), Regularize([stopper])])
    np.savez(out / "early_stopping_final.npz", **weights(model))
    return {"epochs_run": len(history.history["loss"]), "best_epoch": stopper.best_epoch,
            "restored_epoch": stopper.restored_epoch}


SCENARIOS = (keras_own_vs_plugins, one_device_vs_mirrored, stop_vote, dropout_rates,
             early_stopping)


def main(out: Path) -> None:
    warnings.simplefilter("error", regplug.RegplugWarning)  # as in the test suite
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report: dict[str, Any] = {"replicas": strategy.num_replicas_in_sync,
                              "backend": keras.backend.backend(), "seconds": {}}
    for scenario in SCENARIOS:
        start = time.perf_counter()
        report[scenario.__name__] = scenario(strategy, out)
        report["seconds"][scenario.__name__] = round(time.perf_counter() - start, 2)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

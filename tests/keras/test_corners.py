"""Keras corners a try-out found: metrics logged as arrays, the Keras guide's custom
train_steps (its metric loop, JAX's stateless steps), on every Keras backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, assert_same_weights, data

import regplug
from regplug import Linear
from regplug.adapters.keras import Regularize
from regplug.plugins import L2, DecoupledWeightDecay, EarlyStopping

X, Y = data(64)
LABELS = (X[:, :1] > 0).astype("float32")  # one binary class


class RecordLogs(regplug.Plugin):
    """Records the logs plugins get at the end of each epoch."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    @regplug.hookimpl
    def on_epoch_end(self, run, epoch, logs):
        self.seen.append(dict(logs))


def f1_model(classes: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(
        classes, activation="sigmoid" if classes == 1 else "softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy",
                  metrics=[keras.metrics.F1Score(average=None, threshold=0.5)])
    return model


# -- metrics logged as arrays ---------------------------------------------------------------
def test_a_one_element_array_metric_reaches_the_plugins_as_its_number():
    recorder = RecordLogs()
    history = f1_model().fit(X, LABELS, epochs=2, batch_size=16, shuffle=False, verbose=0,
                             callbacks=[Regularize([recorder])])
    assert np.shape(history.history["f1_score"][0]) == (1,)  # Keras logs F1Score as (1,)
    assert [logs["f1_score"] for logs in recorder.seen] == [
        float(np.asarray(v).item()) for v in history.history["f1_score"]]
    assert all(type(logs["f1_score"]) is float for logs in recorder.seen)


def test_early_stopping_on_a_one_element_array_metric_stops_where_keras_stops():
    args = {"monitor": "f1_score", "min_delta": 0.05, "patience": 1, "mode": "max"}
    theirs = f1_model().fit(X, LABELS, epochs=8, batch_size=16, shuffle=False, verbose=0,
                            callbacks=[keras.callbacks.EarlyStopping(**args)])
    stopper = EarlyStopping(**args, restore_best_weights=False)
    ours = f1_model().fit(X, LABELS, epochs=8, batch_size=16, shuffle=False, verbose=0,
                          callbacks=[Regularize([stopper])])
    assert len(theirs.history["loss"]) < 8  # Keras' own EarlyStopping acts on it
    assert len(ours.history["loss"]) == len(theirs.history["loss"])
    assert stopper.stop_reason is not None


def test_a_monitored_metric_of_several_numbers_is_reported_with_its_key_and_shape():
    one_hot = np.concatenate([LABELS, 1.0 - LABELS], axis=1)
    with pytest.warns(regplug.RegplugWarning, match=r"'f1_score'.*shape \(2,\)"):
        f1_model(classes=2).fit(X, one_hot, epochs=1, batch_size=16, verbose=0,
                                callbacks=[Regularize([EarlyStopping(monitor="f1_score")])])


def test_an_unmonitored_metric_of_several_numbers_passes_without_a_warning():
    # pyproject turns RegplugWarning into an error: a warning here would fail the test.
    one_hot = np.concatenate([LABELS, 1.0 - LABELS], axis=1)
    recorder = RecordLogs()
    f1_model(classes=2).fit(X, one_hot, epochs=1, batch_size=16, verbose=0,
                            callbacks=[Regularize([L2(1e-3), recorder])])
    assert "f1_score" not in recorder.seen[0] and "l2_penalty" in recorder.seen[0]


# -- the Keras guide's custom train_step ("Customizing what happens in fit()") ---------------
def _guide_metrics(model: keras.Model, loss, y, y_pred) -> dict:  # type: ignore[no-untyped-def]
    # The guide's loop: every metric but the loss tracker gets update_state(y, y_pred).
    for metric in model.metrics:
        if metric.name == "loss":
            metric.update_state(loss)
        else:
            metric.update_state(y, y_pred)
    return {m.name: m.result() for m in model.metrics}


class GuideModel(keras.Model):
    """The guide's first custom train_step, in the version for the running backend."""

    def train_step(self, *args):  # type: ignore[no-untyped-def]
        return getattr(self, f"_train_step_{BACKEND}")(*args)

    def _train_step_tensorflow(self, data):  # type: ignore[no-untyped-def]
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return _guide_metrics(self, loss, y, y_pred)

    def _train_step_torch(self, data):  # type: ignore[no-untyped-def]
        import torch

        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        loss.backward()
        trainable_weights = list(self.trainable_weights)
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        return _guide_metrics(self, loss, y, y_pred)

    # JAX: fully stateless, the state passed in and returned.
    def compute_loss_and_updates(self, trainable, non_trainable, metrics_vars, x, y,
                                 sample_weight, training=False):  # type: ignore[no-untyped-def]
        y_pred, non_trainable = self.stateless_call(trainable, non_trainable, x,
                                                    training=training)
        loss, (trainable, non_trainable, metrics_vars) = self.stateless_compute_loss(
            trainable, non_trainable, metrics_vars, x=x, y=y, y_pred=y_pred,
            sample_weight=sample_weight, training=training)
        return loss, (y_pred, non_trainable, metrics_vars)

    def _train_step_jax(self, state, data):  # type: ignore[no-untyped-def]
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        (loss, (y_pred, non_trainable, metrics_vars)), grads = grad_fn(
            trainable, non_trainable, metrics_vars, x, y, sample_weight, training=True)
        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads,
                                                                   trainable)
        new_metrics_vars: list = []
        logs = {}
        for metric in self.metrics:
            these = metrics_vars[len(new_metrics_vars):
                                 len(new_metrics_vars) + len(metric.variables)]
            if metric.name == "loss":
                these = metric.stateless_update_state(these, loss, sample_weight=sample_weight)
            else:
                these = metric.stateless_update_state(these, y, y_pred,
                                                      sample_weight=sample_weight)
            logs[metric.name] = metric.stateless_result(these)
            new_metrics_vars += these
        return logs, (trainable, non_trainable, optimizer_vars, new_metrics_vars)


def _functional(cls: type = keras.Model) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = cls(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    return model


def test_the_guides_custom_train_step_logs_the_penalty_and_trains_as_the_built_in_one():
    builtin, guide = _functional(), _functional(GuideModel)
    logged = []
    for model in (builtin, guide):
        history = model.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                            callbacks=[Regularize([L2(0.1)])])
        logged.append(history.history)
    np.testing.assert_allclose(logged[1]["l2_penalty"], logged[0]["l2_penalty"], rtol=1e-5)
    np.testing.assert_allclose(logged[1]["mae"], logged[0]["mae"], rtol=1e-5)
    assert_same_weights(builtin, guide, rtol=1e-5, atol=1e-6)


class LowLevelJaxModel(keras.Model):
    """The JAX guide's lower-level model: its own loss and loss tracker, no compute_loss;
    the update through ``self.optimizer.stateless_apply``."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.loss_fn = keras.losses.MeanSquaredError()

    def compute_loss_and_updates(self, trainable, non_trainable, x, y, sample_weight,
                                 training=False):  # type: ignore[no-untyped-def]
        y_pred, non_trainable = self.stateless_call(trainable, non_trainable, x,
                                                    training=training)
        return self.loss_fn(y, y_pred, sample_weight=sample_weight), (y_pred, non_trainable)

    def train_step(self, state, data):  # type: ignore[no-untyped-def]
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        (loss, (_, non_trainable)), grads = grad_fn(trainable, non_trainable, x, y,
                                                    sample_weight, training=True)
        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads,
                                                                   trainable)
        metrics_vars = self.loss_tracker.stateless_update_state(
            metrics_vars[:len(self.loss_tracker.variables)], loss, sample_weight=sample_weight)
        logs = {"loss": self.loss_tracker.stateless_result(metrics_vars)}
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    @property
    def metrics(self):  # type: ignore[no-untyped-def]
        return [self.loss_tracker]


@pytest.mark.skipif(BACKEND != "jax", reason="the guide's stateless train_step is JAX's")
def test_decoupled_weight_decay_in_the_jax_guides_low_level_train_step():
    # A weight decay scheduled per epoch: each epoch's value must reach the traced step.
    decay = Linear(start=0.5, end=0.1, span=2, per="epoch")
    builtin, low = _functional(), _functional(LowLevelJaxModel)
    low.compile(optimizer=keras.optimizers.SGD(0.05))  # no loss: the model has its own
    for model in (builtin, low):
        model.fit(X, Y, epochs=3, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[Regularize([DecoupledWeightDecay(decay)])])
    assert_same_weights(builtin, low, rtol=1e-5, atol=1e-6)

"""Freeze in Keras ``model.fit``: frozen variables stay bit for bit (AdamW's decay, SGD's
momentum), and after unfreezing training equals a model whose layers were set trainable by
hand (TensorFlow and torch backends: JAX's optimizer cannot update a subset, see the docs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, data, fit

from regplug.adapters.keras import Regularize
from regplug.plugins import EMA, DecoupledWeightDecay, Freeze

X, Y = data()


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="body"),
        keras.layers.Dense(8, activation="relu", name="mid"),
        keras.layers.Dense(1, name="head"),
    ], name="net")


OPTIMIZERS = {
    "adamw": lambda: keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.1),
    "sgd_momentum": lambda: keras.optimizers.SGD(learning_rate=0.02, momentum=0.9),
}


def _values(model: keras.Model, layer: str) -> list[np.ndarray]:
    return [np.array(v) for v in model.get_layer(layer).weights]


class Snap(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, list[np.ndarray]]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({n: _values(self.model, n) for n in ("body", "mid", "head")})


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_variables_stay_bit_for_bit(name):
    model = _model()
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    start = {n: _values(model, n) for n in ("body", "mid", "head")}
    snap = Snap()
    # AdamW decays every variable itself; with SGD a decay plugin listed first does
    decay = [DecoupledWeightDecay(0.3)] if name == "sgd_momentum" else []
    fit(model, X, Y, epochs=3, callbacks=[
        Regularize([*decay, Freeze(2, include="body.*")]), snap])
    for epoch in (0, 1):
        for a, b in zip(snap.epochs[epoch]["body"], start["body"]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(snap.epochs[0]["head"][0], start["head"][0])
    assert not np.array_equal(snap.epochs[2]["body"][0], start["body"][0])  # unfrozen
    assert [v.trainable for v in model.trainable_variables].count(False) == 0


@pytest.mark.skipif(BACKEND == "jax", reason="JAX's stateless_apply must update every "
                    "variable the optimizer was built with: no by-hand reference there")
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_unfreezing_equals_layers_set_trainable_by_hand(name):
    ours = _model()
    ours.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    fit(ours, X, Y, epochs=4, callbacks=[Regularize([Freeze(2, include=["body.*",
                                                                       "mid.*"])])])
    ref = _model()
    ref.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    ref.optimizer.build(ref.trainable_variables)  # slots for every variable, as fit builds
    for layer in ("body", "mid"):
        ref.get_layer(layer).trainable = False
    ref.make_train_function(force=True)
    fit(ref, X, Y, epochs=2)
    for layer in ("body", "mid"):
        ref.get_layer(layer).trainable = True
    ref.make_train_function(force=True)
    fit(ref, X, Y, epochs=4, initial_epoch=2)
    for a, b in zip(ours.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)  # bit for bit


def test_gradual_unfreezing_follows_the_blocks_from_the_top():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    start = {n: _values(model, n) for n in ("body", "mid")}
    snap = Snap()
    fit(model, X, Y, epochs=3, callbacks=[
        Regularize([Freeze(1, gradual=True, exclude="head.*")]), snap])

    def moved(epoch: int, layer: str) -> bool:
        return not np.array_equal(snap.epochs[epoch][layer][0], start[layer][0])

    # epoch 0: head only; epoch 1: + mid; epoch 2: + body
    assert [moved(0, "mid"), moved(0, "body")] == [False, False]
    assert [moved(1, "mid"), moved(1, "body")] == [True, False]
    assert moved(2, "body")


def test_a_pattern_naming_non_trainable_layers_says_to_leave_them_trainable():
    model = _model()
    model.get_layer("body").trainable = False
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="Freeze: argument 'include'.*optimizer up front"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([Freeze(2, include="body.*")])])


def test_a_later_fit_starts_with_the_frozen_set_of_its_initial_epoch():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    plugin = Freeze(1, gradual=True, exclude="head.*")
    fit(model, X, Y, epochs=1, callbacks=[Regularize([plugin])])
    body = _values(model, "body")
    mid = _values(model, "mid")
    fit(model, X, Y, epochs=2, initial_epoch=1, callbacks=[Regularize([plugin])])
    # epoch 1 of the gradual schedule: mid trains, body is still frozen
    np.testing.assert_array_equal(_values(model, "body")[0], body[0])
    assert not np.array_equal(_values(model, "mid")[0], mid[0])


@pytest.mark.parametrize("order", ["freeze_first", "ema_first"])
def test_the_ema_of_a_frozen_variable_is_its_value_under_adamws_decay(order):
    # AdamW decays the held variables inside the step; Freeze puts them back after every
    # other plugin acted. EMA must average what the step leaves (the value put back), not
    # the decayed value in between, wherever it is listed.
    model = _model()
    model.compile(optimizer=OPTIMIZERS["adamw"](), loss="mse")
    start = _values(model, "body")
    ema = EMA(0.5, keep_raw=True)
    plugins = [Freeze(None, include="body.*"), ema]
    fit(model, X, Y, epochs=2, callbacks=[
        Regularize(plugins if order == "freeze_first" else plugins[::-1])])
    averages = ema.averages()
    np.testing.assert_array_equal(averages["body.kernel"], start[0])
    np.testing.assert_array_equal(averages["body.bias"], start[1])
    assert not np.array_equal(averages["head.kernel"], _values(model, "head")[0])

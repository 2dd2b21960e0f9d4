"""Keras has no stochastic-depth layer of its own (keras_hub/keras_cv are not installed here),
and a layer's rate is baked into the traced step: a user's ``DropPath`` layer is not handed out,
and DropoutSchedule says so instead of doing nothing silently (docs/plugins/dropout.md)."""

from __future__ import annotations

import keras
import pytest
from _keras_models import data, fit

from regplug import RegplugWarning
from regplug.adapters.keras import Regularize
from regplug.plugins import DropoutSchedule


class DropPath(keras.layers.Layer):
    def __init__(self, drop_prob: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.drop_prob = drop_prob

    def call(self, x, training=None):
        return x


def test_a_keras_drop_path_layer_is_not_scheduled_and_the_plugin_says_so():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                              DropPath(0.1, name="drop_path"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = data()
    with pytest.warns(RegplugWarning, match="matches none of the model's dropout layers"):
        fit(model, x, y, epochs=1,
            callbacks=[Regularize([DropoutSchedule(0.3, layers=["DropPath"])])])
    assert model.get_layer("drop_path").drop_prob == 0.1

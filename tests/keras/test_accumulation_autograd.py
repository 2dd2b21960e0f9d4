"""Keras, gradient accumulation with penalties without a closed form (issue 16, item 19).

``SGD(gradient_accumulation_steps=2)`` with ``Regularize([L2, L1, a third-party penalty])``:
Keras differentiates every penalty inside its train step (there is no fused path) and
averages the micro-batches' gradients, so each update sees the penalties once — as the same
penalties written by hand into ``compute_loss`` of one batch of the window's size. Keras does
not go through ``StepWindow``; what these tests guard is that the traced loss carries each
penalty once per micro-batch, never zero or twice.
"""

from __future__ import annotations

import keras
import pytest
from _keras_models import assert_same_weights, data, fit, sgd
from _smooth_penalty import SmoothNorm, smooth_norm
from keras import ops

from regplug.adapters.keras import Regularize
from regplug.plugins import L1, L2

X, Y = data()
K = 2  # micro-batches of 8 per update
L2_STRENGTH, L1_STRENGTH, SMOOTH_STRENGTH = 0.05, 1e-3, 0.3


def layers() -> list[keras.layers.Layer]:
    return [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]


class Written(keras.Sequential):
    """The penalties written by hand into ``compute_loss`` (over the Dense kernels, regplug's
    default selection), ``times`` over."""

    def __init__(self, *args, times: float = 1.0, third_party_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.times = times
        self.third_party_only = third_party_only

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)
        kernels = [layer.kernel for layer in self.layers]
        squares = sum(ops.sum(ops.square(k)) for k in kernels)
        penalty = smooth_norm(SMOOTH_STRENGTH, squares)
        if not self.third_party_only:
            penalty = (penalty + L2_STRENGTH * squares
                       + L1_STRENGTH * sum(ops.sum(ops.abs(k)) for k in kernels))
        return loss + self.times * penalty


def written(**kwargs) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = Written(layers(), name="dense", **kwargs)
    model.compile(optimizer=sgd(0.05), loss="mse")
    fit(model, X, Y, batch_size=8 * K)
    return model


@pytest.mark.parametrize("third_party_only", [False, True],
                         ids=["builtins-and-third-party", "third-party"])
def test_penalties_enter_each_update_once_with_gradient_accumulation(third_party_only):
    """Tolerance rtol 1e-5, atol 1e-6 (float32; two micro-batches of 8 averaged against one
    batch of 16 sum the data loss in another order)."""
    keras.utils.set_random_seed(0)
    accumulated = keras.Sequential(layers(), name="dense")
    accumulated.compile(optimizer=keras.optimizers.SGD(0.05, gradient_accumulation_steps=K),
                        loss="mse")
    plugins = ([SmoothNorm(SMOOTH_STRENGTH)] if third_party_only
               else [L2(L2_STRENGTH), L1(L1_STRENGTH), SmoothNorm(SMOOTH_STRENGTH)])
    fit(accumulated, X, Y, batch_size=8, callbacks=[Regularize(plugins)])
    reference = written(third_party_only=third_party_only)
    assert_same_weights(accumulated, reference, rtol=1e-5, atol=1e-6)
    # The test can fail: the penalties K times per update end elsewhere.
    twice = written(third_party_only=third_party_only, times=K)
    with pytest.raises(AssertionError):
        assert_same_weights(twice, reference, rtol=1e-5, atol=1e-6)

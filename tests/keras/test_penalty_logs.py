"""What ``l2_penalty`` is in Keras ``fit`` (every backend): the mean over the epoch's training
steps of the penalty at each step's weights, the penalty part of Keras' ``loss``;
``val_l2_penalty`` is its value at the epoch's end weights, what the PyTorch, Lightning and
Hugging Face adapters log as ``l2_penalty`` (docs/plugins/penalties.md)."""

from __future__ import annotations

import numpy as np
import pytest
from _keras_models import data, fit, mlp, sgd, weights
from keras import ops

from regplug.adapters.keras import Regularize
from regplug.plugins import L2

STRENGTH = 0.05
X, Y = data(32)
X_VAL, Y_VAL = data(16, seed=1)


def penalty(model) -> float:
    """``l2·Σθ²`` over the kernels (L2's default selection), in float64."""
    kernels = [ops.convert_to_numpy(v) for v in model.trainable_variables if v.name == "kernel"]
    return STRENGTH * sum(float(np.square(k.astype(np.float64)).sum()) for k in kernels)


def test_l2_penalty_is_the_mean_over_the_epochs_steps_val_l2_penalty_the_end_value():
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.2), loss="mse")  # plain SGD: no optimizer state
    start = weights(model)
    before_first = penalty(model)
    # the epoch below has two steps (batches X[:16], X[16:]); its first step alone:
    fit(model, X[:16], Y[:16], epochs=1, callbacks=[Regularize([L2(STRENGTH)])])
    before_second = penalty(model)
    model.set_weights(start)
    history = fit(model, X, Y, epochs=1, validation_data=(X_VAL, Y_VAL),
                  callbacks=[Regularize([L2(STRENGTH)])])
    at_end = penalty(model)
    mean = (before_first + before_second) / 2
    assert history.history["l2_penalty"] == [pytest.approx(mean, rel=1e-5)]
    assert history.history["val_l2_penalty"] == [pytest.approx(at_end, rel=1e-5)]
    # the weights moved enough that the two meanings are told apart
    assert abs(at_end - mean) > 100 * 1e-5 * at_end

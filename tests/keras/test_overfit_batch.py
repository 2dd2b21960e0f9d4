"""OverfitBatch in model.fit: the same plugin as in PyTorch, the model's compiled loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import weights
from keras import ops

from regplug.adapters.keras import Regularize, detach
from regplug.plugins import L2, OverfitBatch, OverfitBatchError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 8)).astype("float32")
Y = RNG.integers(0, 3, 96)
XB, YB = X[:16], Y[:16]


def classifier(seed=0, *, detached=False, noise=True):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8,))
    h = keras.layers.GaussianNoise(0.1, seed=3)(inp) if noise else inp  # draws at every step
    h = keras.layers.Dense(64, activation="relu")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.3, seed=2)(h)
    out = keras.layers.Dense(3)(h)
    if detached:
        out = keras.layers.Lambda(lambda t: ops.stop_gradient(t))(out)
    return keras.Model(inp, out)


def compiled(model, lr=1e-2):
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_a_healthy_model_passes_and_fit_is_bit_identical_to_one_without_the_check():
    plain = compiled(classifier())
    plain.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0,
              callbacks=[Regularize([L2(1e-3)])])
    checked = compiled(classifier())
    check = OverfitBatch(XB, YB, steps=60, verbose=False)
    checked.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                callbacks=[Regularize([L2(1e-3), check])])
    assert check.passed, check.verdicts
    for a, b, v in zip(weights(plain), weights(checked), plain.weights):
        np.testing.assert_array_equal(a, b, err_msg=v.path)
    assert int(ops.convert_to_numpy(checked.optimizer.iterations)) == 12


def test_lr_zero_fails_before_the_first_step_with_the_numbers():
    model = compiled(classifier(), lr=0.0)
    before = weights(model)
    with pytest.raises(OverfitBatchError, match=r"FAILED: loss .* the learning rate is 0"):
        model.fit(X, Y, epochs=1, batch_size=16, verbose=0,
                  callbacks=[Regularize([OverfitBatch(XB, YB, steps=10, verbose=False)])])
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)
    assert not detach(model)  # nothing of regplug left to remove


def test_a_detached_output_fails_with_a_hint():
    model = compiled(classifier(detached=True))
    with pytest.raises(OverfitBatchError, match="FAILED.*(gradient|detached)"):
        model.fit(X, Y, epochs=1, batch_size=16, verbose=0,
                  callbacks=[Regularize([OverfitBatch(XB, YB, steps=10, verbose=False)])])


def test_labels_that_do_not_fit_the_loss_are_named_as_the_cause_without_misleading_hints():
    model = compiled(classifier())
    with pytest.raises(OverfitBatchError) as info:
        model.fit(X, Y, epochs=1, batch_size=16, verbose=0,
                  callbacks=[Regularize([OverfitBatch(XB, YB[:8], steps=5, verbose=False)])])
    message = str(info.value)
    assert "training raised: ValueError" in message
    assert "shapes and dtypes" in message
    assert "optimizer" not in message and "non-finite" not in message


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_a_frozen_model_fails_with_a_hint():
    model = classifier()
    model.trainable = False
    compiled(model)
    check = OverfitBatch(XB, YB, steps=5, verbose=False, on_fail="warn")
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[Regularize([check])])
    assert check.passed is False and "no trainable parameters" in str(check.verdicts[0])


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras' torch backend allows only steps_per_execution=1")
def test_works_with_steps_per_execution():
    model = classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=3,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    check = OverfitBatch(XB, YB, steps=40, verbose=False)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0, callbacks=[Regularize([check])])
    assert check.passed and check.verdicts[0].steps == 40
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 6  # the check left none

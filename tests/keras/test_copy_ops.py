"""KerasOps' copy ops: clone outside the step, copy_into_/copy_from_ inside the compiled step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, data, fit, mlp, sgd, weights
from keras import ops

import regplug
from regplug.adapters.keras import KerasOps, Regularize, discover_parameters


class HoldStill(regplug.Plugin):
    """Clones the weights at train begin; inside the step, saves them before each update
    and puts them back after it: training changes nothing, however the data pull."""

    def __init__(self):
        self.saved = None
        self.clone_in_step_error = None

    @regplug.hookimpl
    def on_train_begin(self, run):
        self.params = run.parameters(regplug.Selection(kinds=regplug.PARAM_KINDS))
        self.saved = run.ops.clone(self.params)

    @regplug.hookimpl
    def on_before_step(self, run):
        run.ops.copy_into_(self.saved, self.params)
        try:
            run.ops.clone(self.params[:1])
        except regplug.UsageError as err:
            self.clone_in_step_error = str(err)

    @regplug.hookimpl
    def on_step(self, run):
        run.ops.copy_from_(self.params, self.saved)


def test_clone_makes_non_trainable_variables_holding_a_copy():
    model = mlp()
    params = discover_parameters(model)
    copies = KerasOps().clone(params)
    for c, p in zip(copies, params):
        assert isinstance(c, keras.Variable) and not c.trainable
        np.testing.assert_array_equal(ops.convert_to_numpy(c), ops.convert_to_numpy(p.tensor))
    params[0].tensor.assign(ops.ones(params[0].shape))
    assert not np.all(ops.convert_to_numpy(copies[0]) == 1.0)  # a copy, not an alias
    assert len(model.trainable_variables) == len(params)  # not added to the model


def test_copies_round_trip_inside_the_compiled_train_step():
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.5), loss="mse")
    x, y = data()
    before = [w for w, v in zip(weights(model), model.weights) if v.trainable]
    plugin = HoldStill()
    fit(model, x, y, epochs=2, callbacks=[Regularize([plugin])])
    after = [w for w, v in zip(weights(model), model.weights) if v.trainable]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    for saved, b in zip(plugin.saved, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(saved), b)
    if BACKEND == "tensorflow":  # traced: the clone is refused while tracing
        assert "clone() creates variables" in plugin.clone_in_step_error


def test_copies_that_do_not_pair_with_the_parameters_are_refused():
    params = discover_parameters(mlp())
    with pytest.raises(ValueError, match=r"copy_into_ got 1 copies for [0-9]+ parameters"):
        KerasOps().copy_into_(KerasOps().clone(params[:1]), params)


class Follow(regplug.Plugin):
    """Copies the weights into its clones after every update, inside the step."""

    @regplug.hookimpl
    def on_train_begin(self, run):
        self.params = run.parameters(regplug.Selection(kinds=regplug.PARAM_KINDS))
        self.copies = run.ops.clone(self.params)

    @regplug.hookimpl
    def on_step(self, run):
        run.ops.copy_into_(self.copies, self.params)


def test_copy_into_inside_the_compiled_step_is_kept_after_fit():
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.1), loss="mse")
    x, y = data()
    before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    plugin = Follow()
    fit(model, x, y, epochs=2, callbacks=[Regularize([plugin])])
    after = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert not np.array_equal(after[0], before[0])
    for copy, a in zip(plugin.copies, after):
        np.testing.assert_array_equal(ops.convert_to_numpy(copy), a)

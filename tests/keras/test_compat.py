"""What regplug relies on in Keras' non-public API (regplug.adapters.keras._compat), one test
per entry, proved on the installed Keras and the session's backend; and that nothing else in
the adapter uses such API.

Like every module in tests/keras/, these must pass on the TensorFlow, torch and JAX backends
(``--keras-backend``). A Keras release that changes one of these fails here, by name.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import regplug.adapters.keras
from regplug.adapters.keras import _compat


def _np(x) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(ops.convert_to_numpy(x))


def _full(value: float, shape=(3,)):  # type: ignore[no-untyped-def]
    return ops.convert_to_tensor(np.full(shape, value, dtype="float32"))


class _Inner(keras.layers.Layer):
    """A plain custom layer holding a Dense: Keras' Model.layers does not reach the Dense."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2, name="nested_dense")

    def call(self, x):  # type: ignore[no-untyped-def]
        return self.dense(x)


def _model() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), _Inner(name="inner"),
                             keras.layers.Dense(1, name="out")], name="model")


# -- stateless_scope ------------------------------------------------------------------------
def test_stateless_scope_is_none_outside_any_scope():
    assert _compat.stateless_scope() is None


def test_stateless_scope_returns_the_scope_in_force_and_none_again_after_it():
    with keras.StatelessScope() as scope:
        assert _compat.stateless_scope() is scope
        with keras.StatelessScope() as inner:
            assert _compat.stateless_scope() is inner
        assert _compat.stateless_scope() is scope
    assert _compat.stateless_scope() is None


# -- map_traced_values ----------------------------------------------------------------------
def test_map_traced_values_makes_variable_value_read_the_mapped_value_inside_the_scope():
    # Variable.value inside a StatelessScope reads scope.get_current_value(variable), i.e.
    # the scope's mapping by id(variable): that is how regplug hands traced values over.
    v = keras.Variable(np.ones(3, "float32"), name="v")
    with keras.StatelessScope() as scope:
        assert _np(v.value).tolist() == [1.0, 1.0, 1.0]  # not mapped: the variable's own
        _compat.map_traced_values(scope, {id(v): _full(2.0)})
        assert _np(v.value).tolist() == [2.0, 2.0, 2.0]
        assert _np(scope.get_current_value(v)).tolist() == [2.0, 2.0, 2.0]
    assert _np(v.value).tolist() == [1.0, 1.0, 1.0]  # the variable itself is untouched


def test_map_traced_values_does_not_overwrite_a_value_the_scope_already_maps():
    mapped = keras.Variable(np.zeros(3, "float32"), name="mapped")
    fresh = keras.Variable(np.zeros(3, "float32"), name="fresh")
    with keras.StatelessScope([(mapped, np.full(3, 5.0, "float32"))]) as scope:
        _compat.map_traced_values(scope, {id(mapped): _full(9.0), id(fresh): _full(7.0)})
        assert _np(mapped.value).tolist() == [5.0, 5.0, 5.0]
        assert _np(fresh.value).tolist() == [7.0, 7.0, 7.0]
        # nor an update made inside the scope (assign records into the same mapping)
        fresh.assign(_full(3.0))
        _compat.map_traced_values(scope, {id(fresh): _full(8.0)})
        assert _np(fresh.value).tolist() == [3.0, 3.0, 3.0]


# -- flatten_layers -------------------------------------------------------------------------
def test_flatten_layers_returns_the_model_first_and_reaches_layers_nested_in_custom_layers():
    model = _model()
    layers = _compat.flatten_layers(model)
    assert layers[0] is model
    inner = model.get_layer("inner")
    assert inner.dense not in model.layers  # the public walk misses it ...
    assert any(layer is inner.dense for layer in layers)  # ... this one does not
    assert any(layer is model.get_layer("out") for layer in layers)
    position = {id(layer): i for i, layer in enumerate(layers)}
    assert position[id(inner)] < position[id(inner.dense)]  # parents before children
    assert len(position) == len(layers)  # each layer once


def test_flatten_layers_of_a_plain_layer_is_the_layer_then_its_sublayers():
    inner = _Inner()
    layers = _compat.flatten_layers(inner)
    assert layers[0] is inner and any(layer is inner.dense for layer in layers)


def test_child_layers_are_the_directly_held_layers_of_a_model_and_of_a_custom_layer():
    model = _model()
    inner = model.get_layer("inner")
    children = _compat.child_layers(model)
    assert any(layer is inner for layer in children)
    assert not any(layer is inner.dense for layer in children)  # a grandchild
    assert [layer for layer in _compat.child_layers(inner)] == [inner.dense]
    assert _compat.child_layers(inner.dense) == []


# -- optimizer_variables --------------------------------------------------------------------
def test_optimizer_variables_after_build_are_the_built_variables_in_order():
    model = _model()
    variables = list(model.trainable_variables)
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    optimizer.build(variables[::-1])  # an order of our own, not the model's
    got = _compat.optimizer_variables(optimizer)
    assert len(got) == len(variables)
    assert all(a is b for a, b in zip(got, variables[::-1]))


def test_optimizer_variables_are_what_apply_zips_the_gradients_with():
    v = keras.Variable(np.ones(2, "float32"), name="w")
    u = keras.Variable(np.ones(3, "float32"), name="u")
    optimizer = keras.optimizers.SGD(learning_rate=1.0)
    optimizer.build([v, u])
    assert [x.name for x in _compat.optimizer_variables(optimizer)] == ["w", "u"]
    optimizer.apply([_full(0.5, (2,)), _full(0.25, (3,))])  # no variables given
    assert _np(v).tolist() == [0.5, 0.5] and _np(u).tolist() == [0.75, 0.75, 0.75]


# -- add_metric / remove_metric -------------------------------------------------------------
def test_add_metric_puts_a_mean_in_model_metrics_and_remove_metric_takes_it_out():
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    before = list(model.metrics)
    tracker = keras.metrics.Mean(name="regplug_penalty")
    _compat.add_metric(model, tracker)
    assert any(m is tracker for m in model.metrics)
    assert "regplug_penalty" in [m.name for m in model.metrics]
    _compat.remove_metric(model, tracker)
    assert not any(m is tracker for m in model.metrics)
    assert [id(m) for m in model.metrics] == [id(m) for m in before]


def test_remove_metric_leaves_other_metrics_alone():
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    keep, drop = keras.metrics.Mean(name="keep"), keras.metrics.Mean(name="drop")
    _compat.add_metric(model, keep)
    _compat.add_metric(model, drop)
    _compat.remove_metric(model, drop)
    names = [m.name for m in model.metrics]
    assert "keep" in names and "drop" not in names
    _compat.remove_metric(model, keep)


def test_an_added_metric_is_reported_in_fit_logs():
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    tracker = keras.metrics.Mean(name="regplug_extra")
    _compat.add_metric(model, tracker)
    tracker.update_state(3.0)
    logs = model.evaluate(np.ones((4, 3), "float32"), np.ones((4, 1), "float32"),
                          verbose=0, return_dict=True)
    assert "regplug_extra" in logs


# -- add_state_slot / remove_state_slots ----------------------------------------------------
class _Slot:
    __slots__ = ("state",)

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        self.state = state


class _OtherSlot(_Slot):
    __slots__ = ()


def _holds(variables, v) -> bool:  # type: ignore[no-untyped-def]
    return any(x is v for x in variables)


def test_add_state_slot_puts_its_variable_in_model_variables_but_not_in_model_weights():
    model = _model()
    v = keras.Variable(np.zeros(2, "float32"), trainable=False, name="regplug_slot")
    weights_before = len(model.weights)
    _compat.add_state_slot(model, _Slot(v))
    assert _holds(model.variables, v)
    assert not _holds(model.weights, v)
    assert len(model.weights) == weights_before
    _compat.remove_state_slots(model, _Slot)
    assert not _holds(model.variables, v)


def test_remove_state_slots_removes_only_slots_of_the_given_type():
    model = _model()
    mine = keras.Variable(np.zeros(()), trainable=False, name="mine")
    other = keras.Variable(np.zeros(()), trainable=False, name="other")
    _compat.add_state_slot(model, _OtherSlot(other))
    _compat.add_state_slot(model, _Slot(mine))

    _compat.remove_state_slots(model, _OtherSlot)
    assert _holds(model.variables, mine) and not _holds(model.variables, other)
    _compat.remove_state_slots(model, _Slot)
    assert not _holds(model.variables, mine)


# -- layer_seed_generators ------------------------------------------------------------------
def test_layer_seed_generators_of_a_dropout_layer_hold_its_seed_generator():
    layer = keras.layers.Dropout(0.3, seed=1)
    generators = _compat.layer_seed_generators(layer)
    assert any(g is layer.seed_generator for g in generators)
    assert _holds(layer.variables, layer.seed_generator.state)  # the layer's random stream


def test_layer_seed_generators_of_a_layer_without_randomness_is_empty():
    assert _compat.layer_seed_generators(keras.layers.Dense(2)) == []


# -- spatial_noise_shape --------------------------------------------------------------------
def test_spatial_noise_shape_of_spatial_dropout_2d_drops_whole_channels_channels_last():
    layer = keras.layers.SpatialDropout2D(0.3, data_format="channels_last")
    noise_shape = _compat.spatial_noise_shape(layer)
    assert callable(noise_shape)
    assert tuple(int(d) for d in noise_shape(ops.ones((4, 5, 6, 7)))) == (4, 1, 1, 7)


def test_spatial_noise_shape_follows_the_data_format_and_the_rank():
    first = keras.layers.SpatialDropout2D(0.3, data_format="channels_first")
    assert tuple(int(d) for d in _compat.spatial_noise_shape(first)(ops.ones((4, 7, 5, 6)))) \
        == (4, 7, 1, 1)
    one_d = keras.layers.SpatialDropout1D(0.3)
    assert tuple(int(d) for d in _compat.spatial_noise_shape(one_d)(ops.ones((4, 5, 7)))) \
        == (4, 1, 7)


def test_spatial_noise_shape_of_plain_dropout_is_none():
    assert _compat.spatial_noise_shape(keras.layers.Dropout(0.3)) is None


# -- runs_functional_graph ------------------------------------------------------------------
def _chain_io():  # type: ignore[no-untyped-def]
    inputs = keras.Input((3,))
    return inputs, keras.layers.Dense(1, name="out")(keras.layers.Dense(2, name="h")(inputs))


def test_runs_functional_graph_of_a_functional_model_and_its_call_runs_the_layers_in_order():
    model = keras.Model(*_chain_io())
    assert _compat.runs_functional_graph(model)
    x = _full(0.5, (4, 3))
    want = model.get_layer("out")(model.get_layer("h")(x))  # why mc_predict may split it
    np.testing.assert_allclose(_np(model(x, training=False)), _np(want), rtol=1e-6)


def test_runs_functional_graph_of_a_model_subclass_built_functionally_unless_call_is_overridden():
    class Built(keras.Model):
        pass

    class Overridden(keras.Model):
        def call(self, inputs, training=None, mask=None):  # type: ignore[no-untyped-def]
            return super().call(inputs, training=training, mask=mask) * 2.0

    assert _compat.runs_functional_graph(Built(*_chain_io()))
    overridden = Overridden(*_chain_io())
    assert isinstance(overridden, keras.Model) and overridden.inputs  # a graph, yet ...
    assert not _compat.runs_functional_graph(overridden)  # ... its call is not the graph's


def test_runs_functional_graph_is_false_for_sequential_subclassed_models_and_layers():
    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, inputs):  # type: ignore[no-untyped-def]
            return self.dense(inputs)

    assert not _compat.runs_functional_graph(keras.Sequential([keras.layers.Dense(1)]))
    assert not _compat.runs_functional_graph(Subclassed())
    assert not _compat.runs_functional_graph(keras.layers.Dense(1))


# -- no private API elsewhere ---------------------------------------------------------------
#: ``state_mapping`` is private as the scope's attribute, but the keyword argument of the
#: public ``keras.StatelessScope(state_mapping=...)`` (what ``stateless_call`` uses) is not.
PRIVATE_KERAS = [r"keras\.src\b", r"\._metrics\b", r"\._seed_generators\b",
                 r"\._trainable_variables\b", r"\._jax_state\b",
                 r"\bstate_mapping\b(?!\s*=(?!=))", r"\b_get_noise_shape\b",
                 r"\b_flatten_layers\b"]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines with comments and docstrings blanked out (prose may name Keras'
    internals, as docs/keras-internals.md does; code may not). Other strings stay:
    ``import_module("keras.src...")`` or ``getattr(x, "_metrics")`` is a use."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for i in range(node.lineno - 1, node.end_lineno or node.lineno):
                lines[i] = ""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    return list(enumerate(lines, 1))


def _private_uses(path: Path) -> list[tuple[Path, int, str]]:
    pattern = re.compile("|".join(PRIVATE_KERAS))
    private_attr = re.compile(r"""getattr\(\s*\w+\s*,\s*["'](_metrics|_seed_generators|"""
                              r"""_trainable_variables|_jax_state|_get_noise_shape|"""
                              r"""_flatten_layers)["']""")
    return [(path, number, line.strip()) for number, line in _code_lines(path)
            if pattern.search(line) or private_attr.search(line)]


def test_the_scan_for_private_keras_api_sees_code_but_not_prose(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Reads ``model._metrics`` (see keras.src.trainers)."""\n'
                      "import keras  # keras.src is private\n"
                      "metrics = model._metrics\n"
                      "walk = getattr(model, '_flatten_layers')\n"
                      "from keras.src import backend\n"
                      "scope = keras.StatelessScope(state_mapping=pairs)\n"
                      "mapping = scope.state_mapping\n"
                      "same = scope.state_mapping == {}\n"
                      "mapping = getattr(scope, 'state_mapping')\n"
                      "built_in = type(layer).__module__.startswith('keras.src.layers.')\n",
                      encoding="utf-8")
    assert [number for _, number, _ in _private_uses(sample)] == [3, 4, 5, 7, 8, 9, 10]


def test_adapter_modules_other_than_compat_use_no_private_keras_api():
    files = sorted({f for folder in regplug.adapters.keras.__path__
                    for f in Path(folder).rglob("*.py")})  # subpackages too (patches/)
    assert any(f.name == "_compat.py" for f in files), files
    sources = [f for f in files if f.name != "_compat.py"]
    assert len(sources) >= 5, sources
    assert any(f.parent.name == "patches" and f.name == "attachment.py" for f in sources), sources
    offences = [f"{path}:{number}: {line}"
                for source in sources for path, number, line in _private_uses(source)]
    assert not offences, "private Keras API outside _compat.py:\n" + "\n".join(offences)


# -- running_fit_frame ----------------------------------------------------------------------
class _FrameAtTrainBegin(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.frame = None
        self.train_end_called = False

    def on_train_begin(self, logs=None):  # type: ignore[no-untyped-def]
        self.frame = _compat.running_fit_frame(self.model)

    def on_train_end(self, logs=None):  # type: ignore[no-untyped-def]
        self.train_end_called = True


class _Raises(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("raised in on_epoch_end")


def _compiled(model: keras.Model, loss="mse") -> keras.Model:  # type: ignore[no-untyped-def]
    model.compile(optimizer="sgd", loss=loss)
    return model


def test_running_fit_frame_in_on_train_begin_is_the_frame_of_keras_fit_of_that_model():
    model = _compiled(_model())
    probe = _FrameAtTrainBegin()
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[probe])
    frame = probe.frame
    assert frame is not None and frame.f_code.co_name == "fit"
    assert frame.f_locals["self"] is model
    assert "keras" in frame.f_code.co_filename and "trainer" in frame.f_code.co_filename
    assert _compat.running_fit_frame(model) is None  # outside fit


def test_running_fit_frame_of_a_subclass_overriding_fit_is_keras_own_fit_frame():
    class Custom(keras.Sequential):
        def fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return super().fit(*args, **kwargs)

    model = _compiled(Custom([keras.Input((3,)), keras.layers.Dense(1)]))
    probe = _FrameAtTrainBegin()
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[probe])
    assert probe.frame is not None and "keras" in probe.frame.f_code.co_filename


def test_keras_fit_ended_by_an_exception_skips_on_train_end_and_leaves_its_frame():
    # Why regplug watches fit's frame: nothing else tells a callback that fit is over.
    model = _compiled(_model())
    probe = _FrameAtTrainBegin()
    with pytest.raises(RuntimeError, match="on_epoch_end"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[probe, _Raises()])
    assert probe.frame is not None and not probe.train_end_called
    assert _compat.running_fit_frame(model) is None


# -- restore_purged_jax_state ----------------------------------------------------------------
def test_restore_purged_jax_state_gives_back_the_weights_of_a_fit_whose_first_step_raised():
    probe = _FrameAtTrainBegin()

    def raising_loss(y_true, y_pred):  # type: ignore[no-untyped-def]
        if probe.frame is not None:  # in the train step (not fit's symbolic build before it)
            raise ValueError("raised while the step is traced")
        return ops.mean(ops.square(y_true - y_pred))

    model = _compiled(_model(), loss=raising_loss)
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match="traced"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[probe])
    emptied = _compat.restore_purged_jax_state(model, probe.frame)
    if keras.backend.backend() == "jax":  # fit had taken the state out of the variables
        assert emptied == len({id(v) for v in [*model.variables, *model.optimizer.variables,
                                               *model.metrics_variables]})
    else:
        assert emptied == 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert _compat.restore_purged_jax_state(model, probe.frame) == 0  # nothing empty now


# -- uses_weight_decay ------------------------------------------------------------------------
def test_uses_weight_decay_follows_exclude_from_weight_decay():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    kernel, bias = model.layers[0].kernel, model.layers[0].bias
    plain = keras.optimizers.AdamW(weight_decay=0.1)
    assert _compat.uses_weight_decay(plain, kernel) and _compat.uses_weight_decay(plain, bias)
    by_name = keras.optimizers.AdamW(weight_decay=0.1)
    by_name.exclude_from_weight_decay(var_names=["bias"])
    assert _compat.uses_weight_decay(by_name, kernel)
    assert not _compat.uses_weight_decay(by_name, bias)
    by_variable = keras.optimizers.AdamW(weight_decay=0.1)
    by_variable.exclude_from_weight_decay(var_list=[kernel])
    assert not _compat.uses_weight_decay(by_variable, kernel)
    assert _compat.uses_weight_decay(by_variable, bias)

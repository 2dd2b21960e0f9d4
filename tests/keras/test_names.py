"""Parameter names plugins see in Keras: framework-neutral and dotted from the model down
(``head.kernel``), so a pattern selects the same layers as in PyTorch; Keras' own variable
path still matches. Every Keras backend."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from _keras_models import fit, zero_loss
from keras import ops

from regplug import Selection
from regplug.adapters.keras import Regularize, discover_parameters
from regplug.plugins import L2

ROOT = Path(__file__).resolve().parents[2]
# The ShrinkHead example of the README or of the docs pages, wherever it is now.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def readme_shrink_head() -> type:
    """The docs' ``ShrinkHead`` example (README.md or docs/), run as written."""
    page, block = next((page, b) for page in PAGES
                       for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
                       if "class ShrinkHead" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, f"{page}:ShrinkHead", "exec"), namespace)
    return namespace["ShrinkHead"]


def names(model: keras.Model) -> list[str]:
    return [h.name for h in discover_parameters(model)]


def values(model: keras.Model) -> dict[str, np.ndarray]:
    return {h.name: np.array(ops.convert_to_numpy(h.tensor)) for h in discover_parameters(model)}


def test_the_readme_shrink_head_example_changes_exactly_the_heads_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="body"),
                              keras.layers.Dense(2, name="head")])  # named "sequential..."
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=zero_loss)  # only plugins move
    before = values(model)
    fit(model, np.ones((32, 8), "float32"), np.zeros((32, 2), "float32"), epochs=1,
        callbacks=[Regularize([readme_shrink_head()(0.5)])])  # 2 updates
    after = values(model)
    np.testing.assert_allclose(after["head.kernel"], before["head.kernel"] * 0.25, rtol=1e-6)
    for name in ("body.kernel", "body.bias", "head.bias"):
        np.testing.assert_array_equal(after[name], before[name])


def test_names_leave_out_the_models_own_name_and_keep_nested_models_and_layers():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="body")],
                             name="inner")
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="head")],
                             name="anything")
    assert names(outer) == ["inner.body.kernel", "inner.body.bias", "head.kernel", "head.bias"]
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2, name="proj")(inputs), name="fn")
    wrapped = keras.Sequential([keras.Input((3,)), functional])
    assert names(wrapped) == ["fn.proj.kernel", "fn.proj.bias"]


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(3, name="proj")

    def call(self, x: Any) -> Any:
        return self.proj(x)


class _Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__(name="my_model")
        self.block = _Block(name="block")
        self.head = keras.layers.Dense(2, name="head")
        self.scale = self.add_weight(shape=(2,), initializer="ones", name="scale")

    def call(self, x: Any) -> Any:
        return self.head(self.block(x)) * self.scale


def test_a_subclassed_model_names_layers_by_their_names_and_its_own_variables_bare():
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    by_name = {h.name: h for h in discover_parameters(model)}
    assert set(by_name) == {"scale", "block.proj.kernel", "block.proj.bias", "head.kernel",
                            "head.bias"}
    assert by_name["head.kernel"].native_name == model.head.kernel.path
    assert by_name["head.kernel"].tensor is model.head.kernel


def test_a_layer_built_before_it_joined_the_model_is_named_like_the_others():
    head = keras.layers.Dense(2, name="head")
    head.build((None, 3))  # its variable path is "head/kernel", without the model
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="body"), head])
    assert names(model) == ["body.kernel", "body.bias", "head.kernel", "head.bias"]


def test_two_layers_given_the_same_name_by_hand_keep_distinct_names():
    class Twins(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.a = keras.layers.Dense(2, name="twin")
            self.b = keras.layers.Dense(2, name="twin")

        def call(self, x: Any) -> Any:
            return self.b(self.a(x))

    model = Twins()
    model(np.zeros((1, 2), "float32"))
    found = names(model)
    assert found[:2] == ["twin.kernel", "twin.bias"]
    assert len(set(found)) == 4  # the second twin is named by its variable paths


@pytest.mark.parametrize("pattern", ["head.*", "*/head/kernel", "anything/head/*"])
def test_a_pattern_matches_the_neutral_name_or_keras_own_path(pattern):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="body"),
                              keras.layers.Dense(2, name="head")], name="anything")
    selection = Selection.build("test", include=pattern)
    chosen = [h.name for h in discover_parameters(model) if selection.matches(h)]
    assert chosen == ["head.kernel"]
    excluding = Selection.build("test", exclude=pattern)
    assert [h.name for h in discover_parameters(model) if excluding.matches(h)] == [
        "body.kernel"]


def test_a_penalty_selected_by_the_neutral_name_is_that_layers_alone():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="body"),
                              keras.layers.Dense(2, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    kernel = np.array(ops.convert_to_numpy(model.get_layer("head").kernel), np.float64)
    history = fit(model, np.ones((16, 3), "float32"), np.zeros((16, 2), "float32"), epochs=1,
                  callbacks=[Regularize([L2(0.1, include="head.*")])])
    assert history.history["l2_penalty"][0] == pytest.approx(0.1 * np.square(kernel).sum(),
                                                             rel=1e-5)

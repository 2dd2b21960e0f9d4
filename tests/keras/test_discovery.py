"""regplug.adapters.keras.discovery: kinds from layer types, shared layers and variables
(whatever order Keras tracks their holders in), frozen variables. Every Keras backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from regplug.adapters.keras import discover_parameters
from regplug.adapters.keras.discovery import all_layers

VOCAB, DIM = 7, 4


def _by_path(handles):  # type: ignore[no-untyped-def]
    return {h.native_name: h for h in handles}


def test_kinds_and_unit_axes_come_from_layer_types():
    model = keras.Sequential([
        keras.Input((3,), dtype="int32"),
        keras.layers.Embedding(VOCAB, DIM, name="emb"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="dense"),
    ], name="m")
    handles = discover_parameters(model)
    kinds = {h.native_name: h.kind for h in handles}
    assert kinds == {"m/emb/embeddings": "embedding", "m/bn/gamma": "normalization",
                     "m/bn/beta": "normalization", "m/dense/kernel": "weight",
                     "m/dense/bias": "bias"}
    by_path = _by_path(handles)
    kernel = by_path["m/dense/kernel"]
    assert kernel.unit_axis == 1 and kernel.layer_type == "Dense"
    assert by_path["m/emb/embeddings"].unit_axis == 0
    assert by_path["m/bn/gamma"].unit_axis is None
    assert by_path["m/bn/gamma"].layer_type == "BatchNormalization"
    # the moving statistics are not trainable: not handed out
    assert not any("moving" in h.name for h in handles)
    # the order is that of model.trainable_variables
    assert [h.native_name for h in handles] == [v.path for v in model.trainable_variables]


class _TiedHead(keras.layers.Layer):
    """An output layer that holds the embedding table as its own attribute: Keras tracks a
    variable assigned to a layer attribute as that layer's (``trainable_variables``)."""

    def __init__(self, table, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.table = table

    def call(self, x):  # type: ignore[no-untyped-def]
        return keras.ops.matmul(x, keras.ops.transpose(self.table))


class _TiedLM(keras.Model):
    def __init__(self, head_first: bool, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        emb = keras.layers.Embedding(VOCAB, DIM, name="emb")
        emb.build((None,))
        head = _TiedHead(emb.embeddings, name="head")
        if head_first:
            self.head, self.emb = head, emb
        else:
            self.emb, self.head = emb, head
        self.hidden = keras.layers.Dense(DIM, name="hidden")

    def call(self, ids):  # type: ignore[no-untyped-def]
        return self.head(self.hidden(self.emb(ids)))


ORDERS = pytest.mark.parametrize("head_first", [False, True], ids=["embedding_first",
                                                                    "head_first"])


@ORDERS
def test_a_variable_shared_by_an_embedding_and_a_custom_layer_is_one_embedding_handle(head_first):
    model = _TiedLM(head_first)
    model(np.zeros((2, 3), "int32"))
    table = model.emb.embeddings
    # the sharing is tracked by Keras: the head holds the table as its own variable
    assert any(v is table for v in model.head.trainable_variables)
    holders = [layer.name for layer in all_layers(model)[1:]
               if any(v is table for v in layer.trainable_variables)]
    assert holders == (["head", "emb"] if head_first else ["emb", "head"])
    handles = discover_parameters(model)
    tied = [h for h in handles if h.tensor is table]
    assert len(tied) == 1
    assert tied[0].kind == "embedding" and tied[0].layer_type == "Embedding"
    assert tied[0].unit_axis == 0
    assert {h.native_name.rsplit("/", 1)[-1]: h.kind for h in handles
            if h.tensor is not table} == {
        "kernel": "weight", "bias": "bias"}
    assert len(handles) == len({id(h.tensor) for h in handles}) == 3


class _Block(keras.layers.Layer):
    def __init__(self, shared, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.shared = shared

    def call(self, x):  # type: ignore[no-untyped-def]
        return self.shared(x)


def test_a_layer_shared_by_two_parents_gives_each_variable_once_with_its_layers_kind():
    shared = keras.layers.Dense(3, name="shared")
    inputs = keras.Input((3,))
    a, b = _Block(shared, name="a"), _Block(shared, name="b")
    model = keras.Model(inputs, b(a(inputs)), name="m")
    handles = discover_parameters(model)
    assert len(handles) == 2
    assert sorted(h.kind for h in handles) == ["bias", "weight"]
    assert {id(h.tensor) for h in handles} == {id(shared.kernel), id(shared.bias)}
    assert all(h.layer_type == "Dense" for h in handles)


def test_frozen_layers_are_not_handed_out():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="frozen"),
                              keras.layers.Dense(2, name="free")], name="m")
    model.get_layer("frozen").trainable = False
    assert [h.native_name for h in discover_parameters(model)] == ["m/free/kernel",
                                                                   "m/free/bias"]


def test_a_variable_held_directly_by_the_model_is_typed_by_its_name():
    class WithScale(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="w")
            self.dense = keras.layers.Dense(2, name="dense")
            self.scale_bias = self.add_weight(shape=(2,), initializer="zeros", name="scale_bias")

        def call(self, x):  # type: ignore[no-untyped-def]
            return self.dense(x) + self.scale_bias

    model = WithScale()
    model(np.zeros((1, 3), "float32"))
    kinds = {h.native_name.rsplit("/", 1)[-1]: (h.kind, h.layer_type)
             for h in discover_parameters(model)}
    assert kinds == {"kernel": ("weight", "Dense"), "bias": ("bias", "Dense"),
                     "scale_bias": ("bias", "WithScale")}

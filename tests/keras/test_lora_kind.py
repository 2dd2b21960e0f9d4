"""Keras' own LoRA (``layer.enable_lora``) variables are of kind ``lora``."""

from __future__ import annotations

import keras

from regplug.adapters.keras import discover_parameters


def test_enable_lora_variables_are_kind_lora_and_the_frozen_kernel_is_not_handed_out():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Embedding(10, 4, name="emb"),
                              keras.layers.Dense(3, name="proj"),
                              keras.layers.Dense(2, name="head")])
    model.get_layer("emb").enable_lora(2)
    model.get_layer("proj").enable_lora(2)
    kinds = {h.name: h.kind for h in discover_parameters(model)}
    assert kinds == {"emb.lora_embeddings_a": "lora", "emb.lora_embeddings_b": "lora",
                     "proj.bias": "bias", "proj.lora_kernel_a": "lora",
                     "proj.lora_kernel_b": "lora", "head.kernel": "weight", "head.bias": "bias"}

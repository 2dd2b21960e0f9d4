"""What a Keras model holds, as plugins see it: parameter handles with their kinds, and the
dropout layers whose rate plugins may change.

The rules (which names are biases, which dropout layers may be rescheduled, the kind of a
shared variable) are the core's (:mod:`regplug.conventions`); this module maps them onto
Keras' layer types.

Docs: docs/loops/keras.md
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from regplug.conventions import (
    DROPOUT_LAYERS,
    SCHEDULABLE_DROPOUT,
    is_bias_name,
    is_lora_name,
    param_name,
    shared_kind,
)
from regplug.run import ParamHandle

from . import _compat

__all__ = ["param_kind", "unit_axis", "all_layers", "layer_paths", "discover_parameters",
           "NORM_TYPES",
           "BATCH_NORM_TYPES", "EMBEDDING_TYPES", "SCHEDULABLE_DROPOUT_TYPES", "DROPOUT_TYPES",
           "KERAS_DROPOUT_CALLS"]


def _layer_types(names: Iterable[str]) -> tuple[type[Any], ...]:
    # Some layer classes are recent (RMSNormalization); take those this Keras has.
    return tuple(t for t in (getattr(keras.layers, n, None) for n in sorted(names))
                 if isinstance(t, type))


BATCH_NORM_TYPES = _layer_types({"BatchNormalization"})
NORM_TYPES = BATCH_NORM_TYPES + _layer_types({
    "LayerNormalization", "GroupNormalization", "UnitNormalization", "RMSNormalization"})
EMBEDDING_TYPES = _layer_types({"Embedding"})
_TRANSPOSED_CONV = _layer_types({"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"})
#: Layers handed to plugins as dropout layers (:data:`regplug.conventions.SCHEDULABLE_DROPOUT`):
#: ``Dropout`` and ``SpatialDropout1D/2D/3D``.
SCHEDULABLE_DROPOUT_TYPES = _layer_types(SCHEDULABLE_DROPOUT)
#: Every dropout layer, ``GaussianDropout`` and ``AlphaDropout`` included.
DROPOUT_TYPES = _layer_types(DROPOUT_LAYERS)

KERAS_DROPOUT_CALLS = frozenset(t.call for t in SCHEDULABLE_DROPOUT_TYPES)
"""Keras' own ``call`` implementations of those layers: a subclass that overrides ``call``
does something regplug cannot know, so it is not handed out."""


def param_kind(layer: Any, variable: Any) -> str:
    """Kind of ``variable`` owned by ``layer``: from the layer's type first, then the name."""
    if isinstance(layer, NORM_TYPES):
        return "normalization"
    if isinstance(layer, EMBEDDING_TYPES):
        return "embedding"
    if is_bias_name(variable.name):
        return "bias"
    return "weight"


def unit_axis(layer: Any, variable: Any) -> int | None:
    """The axis indexing output units: last for Dense/Conv kernels (Keras' ``(…, in, out)``
    layout), the one before for transposed convolutions (``(…, out, in)``), 0 (one row per
    token) for embeddings; ``None`` for vectors and scalars."""
    ndim = len(variable.shape)
    if ndim < 2:
        return None
    if isinstance(layer, EMBEDDING_TYPES):
        return 0
    if isinstance(layer, _TRANSPOSED_CONV):
        return ndim - 2
    return ndim - 1


def all_layers(model: Any) -> list[Any]:
    """``model`` and every layer nested in it, parents before children."""
    return _compat.flatten_layers(model)


def layer_paths(model: Any) -> dict[int, tuple[str, ...]]:
    """The names leading from ``model`` to each layer nested in it, keyed by ``id(layer)``.

    ``()`` for the model itself; a layer reached along several paths (shared) keeps the
    first, walking the layers as Keras tracks them (attribute order), parents first — the
    order of PyTorch's ``named_modules``.
    """
    paths: dict[int, tuple[str, ...]] = {}
    stack: list[tuple[Any, tuple[str, ...]]] = [(model, ())]
    while stack:
        layer, path = stack.pop()
        if id(layer) in paths:
            continue
        paths[id(layer)] = path
        children = _compat.child_layers(layer)
        stack.extend((child, (*path, child.name)) for child in reversed(children))
    return paths


def discover_parameters(model: Any) -> list[ParamHandle]:
    """Handles for the model's trainable variables, named by path and typed by owning layer.

    A variable belongs to the innermost layer holding it. Its name is framework-neutral
    (:func:`regplug.conventions.param_name`): the layer names from the model down to that
    layer, then the variable's own name, joined by dots (``"head.kernel"``, ``"block.proj
    .bias"``), whatever the model is called; Keras' ``variable.path`` is kept as
    ``native_name``. A variable shared by several layers appears once, under its first
    path; its kind follows :func:`regplug.conventions.shared_kind` over every innermost
    layer holding it; a LoRA adapter variable (Keras' ``enable_lora``: ``lora_kernel_a``;
    :func:`regplug.conventions.is_lora_name`) is of kind ``lora``. Two variables that
    would get the same name (sibling layers given the same name by hand) keep it for the
    first; the next ones are named by their ``variable.path``. Frozen variables
    (``trainable = False``) are not handed to plugins, as the optimizer does not update them
    either. The order is that of ``model.trainable_variables``.
    """
    trainable = list(model.trainable_variables)
    wanted = {id(v) for v in trainable}
    owners: dict[int, list[Any]] = {}
    for layer in all_layers(model):
        held = {id(v) for v in layer.trainable_variables} & wanted
        if not held:
            continue
        for sub in all_layers(layer)[1:]:  # variables of a sublayer are the sublayer's
            held -= {id(v) for v in sub.trainable_variables}
        for key in held:
            owners.setdefault(key, []).append(layer)
    paths = layer_paths(model)
    order = {key: i for i, key in enumerate(paths)}
    handles, seen, names = [], set(), set()
    for v in trainable:
        if id(v) in seen:
            continue
        seen.add(id(v))
        layers = owners.get(id(v)) or [model]
        kinds = [param_kind(layer, v) for layer in layers]
        kind = shared_kind(kinds)
        layer = layers[kinds.index(kind)]
        first = min(layers, key=lambda holder: order.get(id(holder), len(order)))
        name = param_name(paths.get(id(first), ()), v.name)
        if name in names:
            name = v.path
        names.add(name)
        if is_lora_name(name) or is_lora_name(v.path):
            kind = "lora"  # by name, whatever the layer (regplug.conventions.is_lora_name)
        handles.append(ParamHandle(name, kind, v, type(layer).__name__,
                                   unit_axis(layer, v), tuple(int(d) for d in v.shape),
                                   native_name=v.path))
    return handles

"""Every use of Keras API that is not public, in one place.

Keras 3 offers no public way to do these few things a callback needs to act *inside* the
compiled train step (see ``docs/keras-internals.md``). Each entry says what it relies on;
``tests/keras/test_compat.py`` pins each one, so a Keras release that changes it fails there,
by name. Everything else in :mod:`regplug.adapters.keras` uses public API only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["stateless_scope", "map_traced_values", "flatten_layers", "child_layers",
           "optimizer_variables",
           "add_metric", "remove_metric", "add_state_slot", "remove_state_slots",
           "layer_seed_generators", "spatial_noise_shape"]


def stateless_scope() -> Any:
    """The ``StatelessScope`` in force, or ``None``: on JAX, ``stateless_apply`` maps the
    optimizer's and the weights' traced values there (``state_mapping``, read as
    ``scope.state_mapping``, keyed by ``id(variable)``)."""
    # keras.src.backend.common.stateless_scope.get_stateless_scope: no public export.
    from keras.src.backend import get_stateless_scope

    return get_stateless_scope()


def map_traced_values(scope: Any, values: dict[int, Any]) -> None:
    """Give ``scope`` the traced values of variables it does not map yet (by ``id``)."""
    # StatelessScope.state_mapping: the dict of id(variable) -> value the scope reads from.
    mapping = scope.state_mapping
    for key, value in values.items():
        mapping.setdefault(key, value)


def flatten_layers(model: Any) -> list[Any]:
    """``model`` and every layer nested in it, parents before children."""
    # Layer._flatten_layers(include_self, recursive): the walk Keras itself uses for
    # `model.variables`; it reaches layers held by plain custom layers, which the public
    # `Model.layers` (direct children of models only) does not.
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    out, todo, seen = [], [model], set()
    while todo:
        layer = todo.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        todo.extend(getattr(layer, "layers", []))
    return out


def child_layers(layer: Any) -> list[Any]:
    """The layers ``layer`` holds directly (as attributes or in lists), in tracking order."""
    # Layer._flatten_layers(include_self=False, recursive=False): the first level of the walk
    # flatten_layers uses; the public `Model.layers` exists on models only.
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def optimizer_variables(optimizer: Any) -> list[Any]:
    """The variables ``optimizer.apply(grads)`` updates when called without them."""
    # BaseOptimizer._trainable_variables: set by `build(variables)`; `apply(grads)` with no
    # variables zips the gradients with this list.
    return list(optimizer._trainable_variables)


def add_metric(model: Any, metric: Any) -> None:
    """Track ``metric`` with the model's own metrics (logs, progress bar, reset per epoch)."""
    # Trainer._metrics: the list behind `model.metrics` (besides the compiled ones);
    # Keras resets, reports and aggregates every metric in it.
    model._metrics.append(metric)


def remove_metric(model: Any, metric: Any) -> None:
    metrics = model._metrics
    for i in range(len(metrics) - 1, -1, -1):
        if metrics[i] is metric:
            del metrics[i]


def add_state_slot(model: Any, slot: Any) -> None:
    """Register ``slot`` (an object with a ``state`` variable) like a seed generator."""
    # Layer._seed_generators: Keras adds each generator's `state` variable to
    # `model.variables` (so JAX's jitted step carries it as state) but not to `model.weights`
    # (so checkpoints stay plain Keras files).
    model._seed_generators.append(slot)


def remove_state_slots(model: Any, kind: type) -> None:
    slots = model._seed_generators
    for i in range(len(slots) - 1, -1, -1):
        if isinstance(slots[i], kind):
            del slots[i]


def layer_seed_generators(layer: Any) -> list[Any]:
    """The seed generators a layer owns (their states are the layer's random streams)."""
    # Layer._seed_generators: see add_state_slot.
    return list(getattr(layer, "_seed_generators", ()))


def spatial_noise_shape(layer: Any) -> Callable[[Any], Any] | None:
    """The noise-shape function of a ``SpatialDropout*`` layer (whole channels dropped)."""
    # SpatialDropout{1,2,3}D._get_noise_shape(inputs): computed per call from the inputs'
    # shape and data format.
    return getattr(layer, "_get_noise_shape", None)

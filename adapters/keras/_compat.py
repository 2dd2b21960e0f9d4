"""Every use of Keras API that is not public, in one place.

Keras 3 offers no public way to do these few things a callback needs to act *inside* the
compiled train step (see ``docs/keras-internals.md``). Each entry says what it relies on;
``tests/keras/test_compat.py`` pins each one, so a Keras release that changes it fails there,
by name. Everything else in :mod:`regplug.adapters.keras` uses public API only.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["stateless_scope", "map_traced_values", "flatten_layers", "child_layers",
           "optimizer_variables",
           "add_metric", "remove_metric", "add_state_slot", "remove_state_slots",
           "layer_seed_generators", "spatial_noise_shape", "running_fit_frame",
           "restore_purged_jax_state", "runs_functional_graph", "uses_weight_decay",
           "custom_gradient_names", "release_custom_gradients"]


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


def running_fit_frame(model: Any) -> FrameType | None:
    """The frame of ``model.fit`` running on this thread (the innermost one), or ``None``.

    Called from a callback's ``on_train_begin``. The frame stays on the stack exactly as
    long as that ``fit`` runs, however it ends: an exception that skips ``on_train_end``
    (Keras' fit has no try/finally around its callbacks) takes it off the stack too.
    """
    # Trainer.fit (keras/src/backend/<backend>/trainer.py, wrapped by
    # traceback_utils.filter_traceback) is a Python method that calls
    # `callbacks.on_train_begin()` from its own body, with `self` the model; a subclass
    # overriding `fit` calls it through super(), so the innermost `fit` frame of the model
    # is Keras' own.
    codes = set()
    for klass in type(model).__mro__:
        fit = vars(klass).get("fit")
        code = getattr(inspect.unwrap(fit), "__code__", None) if callable(fit) else None
        if code is not None:
            codes.add(code)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes and frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


def restore_purged_jax_state(model: Any, fit_frame: FrameType | None) -> int:
    """When a JAX ``fit`` is ending by an exception (or has ended), give back to the model's
    variables the values that fit took out of them; returns how many variables were empty.

    JAX's fit takes the state out of the variables at each epoch's first step and writes
    it back at the epoch's end or in its ``finally``. An exception raised while the step is
    traced (a plugin's ``on_loss``, a loss function) comes before anything was written back,
    so the variables stay empty: Keras would then compute with freshly initialised weights,
    or fail. The values are still in the ``state`` the dead fit frame held (the failed step
    never ran, so nothing was donated).
    """
    # JAXTrainer._get_jax_state(..., purge_model_variables=True) sets `variable._value =
    # None` for every variable of the groups it returns; JAXTrainer.fit keeps the returned
    # tuple (trainable, non_trainable, optimizer, metrics variables, in those orders) in
    # its local `state`, rebinding it to each step's outputs.
    groups = [list(model.trainable_variables), list(model.non_trainable_variables),
              list(model.optimizer.variables) if model.optimizer is not None else [],
              list(model.metrics_variables)]
    empty = sum(v._value is None for group in groups for v in group)
    if not empty or fit_frame is None:
        return empty
    state = fit_frame.f_locals.get("state")
    if not isinstance(state, tuple) or len(state) != len(groups):
        return empty
    for group, values in zip(groups, state):
        if not isinstance(values, (list, tuple)) or len(values) != len(group):
            continue
        for variable, value in zip(group, values):
            if variable._value is None:
                # Variable._direct_assign: what jax_state_sync's assign ends in; called
                # directly because this may run inside the step's StatelessScope, where
                # assign() would only record an update.
                variable._direct_assign(value)
    return empty


def runs_functional_graph(model: Any) -> bool:
    """Whether calling ``model`` runs the graph of layers it was built from: its class's
    ``call`` is the one of the models ``keras.Model(inputs, outputs)`` makes (not overridden
    by a subclass)."""
    # keras.src.models.functional.Functional (Keras 3.0 to 3.15 at least): the class that
    # keras.Model(inputs, outputs) instantiates, and a base of every Model subclass
    # initialised with inputs and outputs; its `call` runs the layers in graph order. Not
    # exported: keras.Model.call itself only raises NotImplementedError.
    from keras.src.models.functional import Functional

    return type(model).call is Functional.call


def uses_weight_decay(optimizer: Any, variable: Any) -> bool:
    """Whether ``optimizer`` applies its own ``weight_decay`` to ``variable`` (that is, the
    variable was not excluded with ``exclude_from_weight_decay``)."""
    # BaseOptimizer._use_weight_decay(variable): the test Keras' update applies before it
    # decays a variable (the excluded variables and name patterns). Without it, every
    # variable counts as decayed.
    use = getattr(optimizer, "_use_weight_decay", None)
    return bool(use(variable)) if callable(use) else True


def _gradient_registry() -> dict[str, Any] | None:
    # tensorflow.python.framework.ops._gradient_registry: the Registry (name -> {"type": fn,
    # "location": ...}) where tf.custom_gradient, traced in graph mode, registers each traced
    # gradient function as "CustomGradient-<uid>" and never removes it (TF 2.x). Every
    # retrace of Keras' train step adds one, which keeps that step's whole FuncGraph alive.
    module = sys.modules.get("tensorflow.python.framework.ops")
    registry = getattr(getattr(module, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def custom_gradient_names() -> frozenset[str]:
    """The names of the custom gradients TensorFlow has registered so far (empty elsewhere)."""
    registry = _gradient_registry()
    return frozenset(k for k in registry if k.startswith("CustomGradient-")) if registry else \
        frozenset()


def _graph_names(fn: Any, depth: int = 4) -> set[str]:
    """The names of the graphs whose tensors ``fn``'s closures hold (a few levels deep)."""
    names: set[str] = set()
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            graph = getattr(item, "graph", None)
            if graph is not None and hasattr(item, "op"):
                names.add(str(getattr(graph, "name", "")))
            elif callable(item) and depth > 0:
                names |= _graph_names(item, depth - 1)
    return names


def release_custom_gradients(before: frozenset[str], graph_names: frozenset[str]) -> int:
    """Remove the custom gradients registered since ``before`` by the traced functions named
    ``graph_names`` (Keras' train and test steps an attachment traced and has dropped);
    returns how many. Their graphs can then be freed."""
    registry = _gradient_registry()
    if not registry:
        return 0
    released = 0
    for name in [k for k in registry if k.startswith("CustomGradient-") and k not in before]:
        entry = registry.get(name)
        fn = entry.get("type") if isinstance(entry, dict) else None
        found = _graph_names(fn) if fn is not None else set()
        if found and found <= graph_names:
            del registry[name]
            released += 1
    return released

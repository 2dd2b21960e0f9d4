"""What regplug puts on a Keras model for the duration of one ``fit``, and its removal.

The wrapped ``compute_loss`` (penalties, traced into the step), the wrapped
``optimizer.apply`` (``on_before_step``/``on_step``, traced into the step), the rate-reading
dropout calls, the penalty trackers, and the variables a JAX step must carry as state. Why
each is needed and which Keras code paths it relies on: ``docs/keras-internals.md``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from regplug.errors import UsageError
from regplug.manager import PluginManager
from regplug.penalty import Penalty, check_penalties, unique_names
from regplug.run import DropoutHandle, ParamHandle, Run
from regplug.schedules import Schedule

from . import _compat
from .discovery import (
    KERAS_DROPOUT_CALLS,
    SCHEDULABLE_DROPOUT_TYPES,
    all_layers,
    discover_parameters,
)
from .dropout import rate_reading_call
from .ops import KerasOps, scale_for_replicas
from .scalars import KerasScheduledValue
from .state import KerasModelState
from .trial import KerasTrial

__all__ = ["Attachment", "step_is_eager", "innermost_optimizer", "ATTACHED", "STEP_HOOKS"]

log = logging.getLogger(__name__)

#: The model attribute holding the live attachment (removed with it).
ATTACHED = "_regplug_attachment"
STEP_HOOKS = ("on_loss", "on_before_step", "on_step")


def innermost_optimizer(optimizer: Any) -> Any:
    """The optimizer doing the update (the one inside a ``LossScaleOptimizer``)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


def step_is_eager(model: Any) -> bool:
    """Whether ``model.fit`` runs the train step as plain Python at every batch."""
    if getattr(model, "run_eagerly", False):
        return True
    return keras.backend.backend() == "torch" and not getattr(model, "jit_compile", False)


def _hook_error(err: BaseException, hook: str, eager: bool) -> None:
    if eager or not hasattr(err, "add_note"):
        return
    err.add_note(f"regplug: raised by a plugin's {hook} while Keras traced the train step. "
                 "Code there runs once, on symbolic tensors: use run.ops and values from "
                 "run.scalar, no Python branching on tensors and no host reads (or train "
                 "with run_eagerly=True to debug).")


class PenaltyTracker(keras.metrics.Mean):
    """The mean of one penalty over the epoch's batches, as logged (``l2_penalty``).

    Fed by the wrapped ``compute_loss`` alone (:meth:`record`), inside the step. A custom
    ``train_step`` written as the Keras guides show updates *every* metric in
    ``self.metrics`` with ``update_state(y, y_pred)`` (JAX: ``stateless_update_state(vars,
    y, y_pred)``), which would average the targets weighted by the predictions into the
    penalty's log. The tracker holds the penalty, not a function of ``(y, y_pred)``, so it
    ignores those calls; refusing them would break the guide's loop for a metric the user
    never added.
    """

    def record(self, value: Any) -> None:
        """Add one step's penalty value (called by regplug only)."""
        super().update_state(value)

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        """Ignored: see the class docstring."""


class _StateSlot:
    """Holds a variable where Keras looks for seed-generator state (``Layer.variables``)."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state


class Attachment:
    """The patches regplug puts on one model for one ``fit``, and their removal."""

    def __init__(self, owner: Any, model: Any) -> None:
        self.owner = owner
        self.model = model
        self.manager: PluginManager = owner.manager
        self.backend = keras.backend.backend()
        self.jax = self.backend == "jax"
        if model.optimizer is None:
            raise UsageError("Regularize: the model has no optimizer; call model.compile(...) "
                             "before model.fit(...)")
        self.optimizer = innermost_optimizer(model.optimizer)
        self.ops = KerasOps()
        self.fit_token = owner.params  # one dict per CallbackList, i.e. per fit() call
        self.active = False
        self.wants = {h: self.manager.implements(h) for h in STEP_HOOKS}
        # Set (never incremented) inside the step: torch.compile guards on what it reads.
        self.loss_seen = False
        self.apply_seen = False
        self.eager = step_is_eager(model)
        self.trace_step = 0  # the `step` the traced hooks get (see on_before_step's spec)
        self.lr_now: Any = None
        self.trackers: dict[str, Any] = {}
        self.state_vars: list[Any] = []      # variables the traced step reads (JAX: in state)
        self.jax_values: dict[int, Any] = {}
        self.dropout: list[tuple[Any, DropoutHandle]] = []
        self.dirty = False                   # the traced step predates a patch
        self.patched_loss = False
        self.patched_apply = False
        self.patched_step = False            # JAX: train_step (see patch_jax_step)
        self.run: Run | None = None

    # -- the Run ---------------------------------------------------------------------
    def build_run(self) -> Run:
        params = discover_parameters(self.model)
        device = "cpu"
        if params:
            device = str(getattr(params[0].tensor.value, "device", "cpu"))
        run = Run(params=params, ops=self.ops, learning_rate_groups=self.lr_groups,
                  device=device, framework="keras", scalar_factory=self.make_scalar,
                  dropout_layers_provider=self.dropout_handles,
                  model_state_provider=KerasModelState(self.model, self.sync_jax),
                  trial_training_provider=KerasTrial(self.model, self.sync_jax))
        run.step = self.read_iterations()
        self.run = run
        return run

    def read_iterations(self) -> int:
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def lr_groups(self, params: Sequence[ParamHandle]) -> list[tuple[Any, list[ParamHandle]]]:
        if not params:
            return []
        lr = self.lr_now if self.lr_now is not None else self.optimizer.learning_rate
        return [(lr, list(params))]

    def sync_jax(self) -> None:
        """JAX keeps the state outside the variables during fit: write it back first."""
        if self.jax:
            self.model.jax_state_sync()  # a no-op when nothing is out of date

    def make_scalar(self, schedule: Schedule) -> KerasScheduledValue:
        handle = KerasScheduledValue(schedule, name=f"regplug_scalar_{len(self.state_vars)}",
                                     before_assign=self.sync_jax if self.jax else None)
        self.add_state(handle.value)
        return handle

    def add_state(self, variable: Any) -> None:
        self.state_vars.append(variable)
        if self.jax:
            # The jitted step sees only the model's variables (passed as explicit state);
            # anything else would be a constant captured at trace time. Registered like a
            # seed generator's state, the variable is in `model.variables` (hence in the
            # state) but not in `model.weights`, so checkpoints stay plain Keras files.
            # Write the running state back first: it is zipped with this list.
            self.sync_jax()
            _compat.add_state_slot(self.model, _StateSlot(variable))
            self.dirty = True

    # -- dropout ---------------------------------------------------------------------
    def dropout_handles(self) -> list[DropoutHandle]:
        handles = []
        for layer in all_layers(self.model):
            if not isinstance(layer, SCHEDULABLE_DROPOUT_TYPES):
                continue
            if type(layer).call not in KERAS_DROPOUT_CALLS:
                log.warning("regplug: %s %r overrides Dropout.call; its rate cannot be "
                            "scheduled, so it is not handed to plugins", type(layer).__name__,
                            layer.name)
                continue
            handles.append(self.patch_dropout(layer))
        return handles

    def patch_dropout(self, layer: Any) -> DropoutHandle:
        rate = keras.Variable(float(layer.rate), dtype="float32", trainable=False,
                              name=f"regplug_rate_{layer.name}")
        self.add_state(rate)
        seed = getattr(layer, "seed_generator", None)
        if seed is None:  # built with rate=0: Keras made no generator
            seed = keras.random.SeedGenerator(layer.seed)
            self.add_state(seed.state)
        layer.call = rate_reading_call(layer, rate, seed)
        self.dirty = True

        def set_rate(value: float) -> None:
            self.sync_jax()
            rate.assign(value)

        handle = DropoutHandle(layer.name, type(layer).__name__, float(layer.rate), set_rate)
        self.dropout.append((layer, handle))
        return handle

    # -- penalties: the wrapped compute_loss -----------------------------------------------
    def setup_trackers(self) -> None:
        if not self.wants["on_loss"] or not self.owner.log_penalties:
            return
        try:
            found = self.manager.caller("on_loss")(run=self.run, loss=None)
            names = unique_names(p.name for p in found if isinstance(p, Penalty))
        except Exception:  # a plugin that needs the real loss to say what it returns
            log.debug("regplug: could not list the penalties before training; they are "
                      "added to the loss but not logged separately", exc_info=True)
            return
        taken = {m.name for m in self.model.metrics}
        for name in names:
            if name in taken:
                log.warning("regplug: a metric named %r already exists; the penalty of that "
                            "name is not logged separately", name)
                continue
            tracker = PenaltyTracker(name=name)
            self.trackers[name] = tracker
            _compat.add_metric(self.model, tracker)

    def patch_loss(self) -> None:
        model = self.model
        original = model.compute_loss
        takes_training = "training" in inspect.signature(original).parameters

        def compute_loss(x: Any = None, y: Any = None, y_pred: Any = None,
                         sample_weight: Any = None, training: bool = True) -> Any:
            if takes_training:
                loss = original(x, y, y_pred, sample_weight, training=training)
            else:
                loss = original(x, y, y_pred, sample_weight)
            return self.add_penalties(loss)

        model.compute_loss = compute_loss
        self.patched_loss = True

    def _traced_hook(self, name: str, **kwargs: Any) -> list[Any]:
        """Call hook ``name`` from inside the step, explaining errors raised while tracing."""
        try:
            return self.manager.caller(name)(run=self.run, **kwargs)
        except Exception as err:
            _hook_error(err, name, self.eager)
            raise

    def add_penalties(self, loss: Any) -> Any:
        self.loss_seen = True
        if self.jax:  # remember the traced values for the optimizer's scope (see patch_apply)
            self.jax_values = {id(v): v.value for v in self.state_vars}
        if loss is None or not self.wants["on_loss"]:
            return loss
        penalties = check_penalties(self._traced_hook("on_loss", loss=loss))
        total = None
        for name, penalty in zip(unique_names(p.name for p in penalties), penalties):
            value = ops.cast(penalty.value(), "float32")
            tracker = self.trackers.get(name)
            if tracker is not None:
                tracker.record(value)
            total = value if total is None else total + value
        if total is None:
            return loss
        # Under a tf.distribute strategy each replica's loss is divided by the number of
        # replicas, because the replicas' gradients are summed. Keras divides its own
        # regularizers' terms the same way (TensorFlowTrainer._aggregate_additional_loss);
        # unscaled, a penalty would count once per replica. A no-op on one device and on
        # the other backends.
        total = scale_for_replicas(total)
        return loss + ops.cast(total, loss.dtype)

    # -- updates: the wrapped optimizer.apply ----------------------------------------------
    def patch_apply(self) -> None:
        optimizer = self.optimizer
        original = optimizer.apply

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            self.apply_seen = True
            step = self.trace_step
            if self.eager and self.run is not None:
                step = self.run.step
            variables = (list(trainable_variables) if trainable_variables is not None
                         else _compat.optimizer_variables(optimizer))
            if self.jax and self.jax_values:
                # stateless_apply maps only the weights and the optimizer's variables;
                # give it the traced values of the strengths read in compute_loss.
                scope = _compat.stateless_scope()
                if scope is not None:
                    _compat.map_traced_values(scope, self.jax_values)
            self.lr_now = optimizer.learning_rate  # the rate this update uses
            try:
                if self.wants["on_before_step"]:
                    self.ops.open_gradients(grads, variables)
                    try:
                        self._traced_hook("on_before_step", step=step)
                    finally:
                        changed = self.ops.close_gradients()
                    grads = changed
                result = original(grads, trainable_variables)
                if self.wants["on_step"]:
                    self._traced_hook("on_step", step=step)
            finally:
                self.lr_now = None
            return result

        optimizer.apply = apply
        self.patched_apply = True
        if self.jax:
            self.patch_jax_step()

    def patch_jax_step(self) -> None:
        """JAX: give ``apply`` the traced values of regplug's variables in any train step.

        During a JAX ``fit`` Keras frees the variables' own values (the jitted step gets
        them as ``state``), so a strength read outside a ``StatelessScope`` that maps it has
        no value at all. ``stateless_apply`` maps only the weights and the optimizer's
        variables. The built-in step calls ``compute_loss`` first, in a scope that maps
        the model's non-trainable state, strengths included (``add_penalties`` keeps
        them); a custom step such as the JAX guide's lower-level one computes its own loss
        and never calls it. Every JAX train step gets ``state`` — ``(trainable,
        non_trainable, optimizer, metrics)`` in the order of the model's lists — so the
        wrapped ``train_step`` takes the values from there.
        """
        model = self.model
        original = model.train_step

        def train_step(state: Any, data: Any) -> Any:
            if self.state_vars:  # harmless when the patches act as the originals
                self.jax_values = self.traced_state(state)
            return original(state, data)

        model.train_step = train_step
        self.patched_step = True

    def traced_state(self, state: Any) -> dict[int, Any]:
        """The traced values of regplug's variables in a JAX train step's ``state``."""
        try:
            non_trainable = list(state[1])
        except (TypeError, IndexError):
            return dict(self.jax_values)
        variables = self.model.non_trainable_variables
        if len(variables) != len(non_trainable):
            return dict(self.jax_values)
        ours = {id(v) for v in self.state_vars}
        return {id(v): value for v, value in zip(variables, non_trainable) if id(v) in ours}

    # -- attach / detach ---------------------------------------------------------------
    def attach(self) -> None:
        """Install the patches and retrace; called after the plugins' on_train_begin."""
        self.setup_trackers()
        if self.wants["on_loss"] or self.jax:
            self.patch_loss()
        if self.wants["on_before_step"] or self.wants["on_step"]:
            self.patch_apply()
        self.retrace()

    def retrace(self) -> None:
        self.sync_jax()
        self.trace_step = self.run.step if self.run is not None else 0
        self.model.make_train_function(force=True)
        self.model.test_function = None  # validation sees the penalties too, as with Keras'
        self.dirty = False

    def detach(self) -> None:
        """Remove every patch; the model is as it was before fit (minus the training)."""
        model = self.model
        self.sync_jax()
        if self.patched_loss and "compute_loss" in vars(model):
            del model.compute_loss
        if self.patched_apply and "apply" in vars(self.optimizer):
            del self.optimizer.apply
        if self.patched_step and "train_step" in vars(model):
            del model.train_step
        for layer, _ in self.dropout:
            if "call" in vars(layer):
                del layer.call
        for tracker in self.trackers.values():
            _compat.remove_metric(model, tracker)
        if self.jax:
            _compat.remove_state_slots(model, _StateSlot)
        # The traced functions contain the patches: make later fit/evaluate retrace.
        model.train_function = None
        model.test_function = None
        if getattr(model, ATTACHED, None) is self:
            delattr(model, ATTACHED)
        self.active = False
        self.dropout, self.trackers, self.state_vars, self.jax_values = [], {}, [], {}

"""What regplug puts on a Keras model for the duration of one ``fit``, and its removal.

The wrapped ``compute_loss`` (penalties, traced into the step), the wrapped
``optimizer.apply`` (``on_before_step``/``on_step``, traced into the step), the rate-reading
dropout calls, the penalty trackers, and the variables a JAX step must carry as state. Why
each is needed and which Keras code paths it relies on: ``docs/keras-internals.md``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from types import FrameType
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

__all__ = ["Attachment", "step_is_eager", "innermost_optimizer", "ATTACHED", "STEP_HOOKS",
           "GUARDED_ENTRY_POINTS"]

log = logging.getLogger(__name__)

#: The model attribute holding the live attachment (removed with it).
ATTACHED = "_regplug_attachment"
STEP_HOOKS = ("on_loss", "on_before_step", "on_step")
#: The model's methods that first remove the patches of a fit that ended without
#: ``on_train_end`` (an exception, Ctrl-C): see :meth:`Attachment.guard_entry_points`.
GUARDED_ENTRY_POINTS = ("fit", "evaluate", "predict", "train_on_batch", "test_on_batch",
                        "predict_on_batch", "save", "save_weights", "export")
_MISSING = object()


def _frame_running(frame: FrameType) -> bool:
    """Whether ``frame`` is still executing: on this thread's call stack or another's."""
    current: FrameType | None = sys._getframe(1)
    while current is not None:  # the common case (a call from inside that fit): cheap
        if current is frame:
            return True
        current = current.f_back
    for top in sys._current_frames().values():
        current = top
        while current is not None:
            if current is frame:
                return True
            current = current.f_back
    return False


def _on_this_thread(frame: FrameType) -> bool:
    current: FrameType | None = sys._getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


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
        # The frame of the fit this attachment serves (see bind_fit), the guards on the
        # model's entry points, and who to tell when a stale attachment is removed.
        self.fit_frame: FrameType | None = None
        self.guards: list[tuple[str, Any, Any]] = []
        self.on_release: Callable[[Attachment], None] | None = None
        self._compiling: Callable[[], bool] | None = None
        if self.backend == "torch":  # torch.compile traces the patches: no stack walks there
            import torch

            self._compiling = torch.compiler.is_compiling

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
        reading = rate_reading_call(layer, rate, seed)
        keras_call = layer.call

        def call(inputs: Any, training: bool | None = False) -> Any:
            if self.live():
                return reading(inputs, training=training)
            return keras_call(inputs, training=training)  # its fit is gone: Keras' own

        layer.call = call
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
            if not self.live():  # its fit is gone: act as the original
                return loss
            return self.add_penalties(loss)

        model.compute_loss = compute_loss
        self.patched_loss = True

    def _traced_hook(self, name: str, **kwargs: Any) -> list[Any]:
        """Call hook ``name`` from inside the step, explaining errors raised while tracing."""
        try:
            return self.manager.caller(name)(run=self.run, **kwargs)
        except BaseException as err:
            if isinstance(err, Exception):
                _hook_error(err, name, self.eager)
            if self.jax and self.fit_frame is not None:
                # JAX's fit took the state out of the variables for this step and puts it
                # back only after a step ran: the error would leave them empty.
                _compat.restore_purged_jax_state(self.model, self.fit_frame)
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
            if not self.live():  # its fit is gone: act as the original
                return original(grads, trainable_variables)
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

    # -- the fit it belongs to -------------------------------------------------------
    # Keras' fit has no try/finally around its callbacks: when a callback or a traced step
    # raises (Ctrl-C included), on_train_end never runs and nothing tells regplug. So the
    # attachment remembers the frame of the fit it serves. While that frame runs, the
    # patches act; once it is gone they act as the originals (`live`), and the first call
    # of one of the model's entry points (GUARDED_ENTRY_POINTS) removes them all (`release`)
    # before doing its work. Keras' own calls from inside the running fit (validation's
    # self.evaluate, ModelCheckpoint's save) find the frame running and pass through.
    def bind_fit(self) -> None:
        """Remember the running ``fit`` and guard the model's entry points."""
        self.fit_frame = _compat.running_fit_frame(self.model)
        if self.fit_frame is None:  # callbacks driven by hand, not by model.fit
            log.debug("regplug: no running fit of %r found; its patches stay until "
                      "on_train_end or detach()", self.model.name)
            return
        self.guard_entry_points()

    def fit_running(self) -> bool:
        """Whether the fit this attachment serves is known and still running (any thread)."""
        frame = self.fit_frame
        return self.active and frame is not None and _frame_running(frame)

    def in_own_fit(self) -> bool:
        """Whether the caller runs inside the fit this attachment serves (same thread)."""
        frame = self.fit_frame
        return self.active and frame is not None and _on_this_thread(frame)

    def live(self) -> bool:
        """Whether the patches act (called by each patch, also while the step is traced)."""
        if not self.active:
            return False
        if self._compiling is not None and self._compiling():
            return True  # only a running fit compiles the patched step
        return self.fit_frame is None or _frame_running(self.fit_frame)

    def stale(self) -> bool:
        """Active, but its fit ended without on_train_end."""
        return self.active and self.fit_frame is not None and not self.fit_running()

    def release(self, reason: str | None = None) -> None:
        """Remove the patches of a fit that did not finish; tell the callback."""
        if reason is not None:
            log.warning("regplug: model %r still carries regplug patches from a fit that did "
                        "not finish (an exception or Ctrl-C skips on_train_end); removing "
                        "them before %s", self.model.name, reason)
        notify = self.on_release
        if self.jax and self.fit_frame is not None and not self.fit_running():
            # before the trackers and state slots leave the model's variable lists
            _compat.restore_purged_jax_state(self.model, self.fit_frame)
        try:
            self.detach()
        finally:
            if notify is not None:
                notify(self)

    def guard_entry_points(self) -> None:
        model = self.model
        for name in GUARDED_ENTRY_POINTS:
            inner = getattr(model, name, None)
            if not callable(inner):
                continue
            previous = vars(model).get(name, _MISSING)
            guard = self._guard(name, inner)
            setattr(model, name, guard)
            self.guards.append((name, guard, previous))

    def _guard(self, name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(inner)
        def guard(*args: Any, **kwargs: Any) -> Any:
            if self.stale():
                self.release(f"model.{name}()")
            return inner(*args, **kwargs)

        return guard

    def _remove_guards(self) -> None:
        model = self.model
        for name, guard, previous in reversed(self.guards):
            if vars(model).get(name) is not guard:
                continue  # replaced by someone else since: theirs stays
            if previous is _MISSING:
                delattr(model, name)
            else:
                setattr(model, name, previous)
        self.guards = []

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
        self._remove_guards()
        if getattr(model, ATTACHED, None) is self:
            delattr(model, ATTACHED)
        self.active = False
        self.fit_frame = None  # holds fit's locals (the data) alive otherwise
        self.dropout, self.trackers, self.state_vars, self.jax_values = [], {}, [], {}

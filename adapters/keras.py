"""Wire regplug plugins into Keras 3 ``model.fit`` with one callback.

The whole change to a Keras training script::

    from regplug.adapters.keras import Regularize
    from regplug.plugins import L2, MaxNorm

    model.fit(x, y, epochs=10, callbacks=[Regularize([L2(1e-4), MaxNorm(3.0)])])

The same plugin objects work in a PyTorch loop (:mod:`regplug.adapters.torch`).

How it works, and why this way
==============================

Keras traces ``fit``'s train step once (``tf.function`` on TensorFlow, ``jax.jit`` on JAX,
``torch.compile`` with ``jit_compile=True`` on torch) and calls the traced function at every
batch. A callback runs in Python *between* calls, so it can neither touch the loss nor change
a Python number the step reads: the number was baked in at trace time. Everything a plugin
does to a step therefore has to be *traced into* the step, and everything that changes
between steps has to live in a variable the traced step reads. At ``on_train_begin`` the
callback sets instance attributes that shadow methods (``model.compute_loss``,
``optimizer.apply``, and ``call`` of the dropout layers a plugin asked for), adds one
``Mean`` metric per penalty, forces a retrace (``make_train_function(force=True)``: ``fit``
reads ``self.train_function`` anew at every batch), and removes all of it at
``on_train_end``, so the model saves and loads as if regplug had never been there.

* **Penalties** (``on_loss``): the model instance's ``compute_loss`` is wrapped. Every
  train step calls it — ``trainers/trainer.py`` ``Trainer._compute_loss`` → ``compute_loss``,
  called from ``TensorFlowTrainer.train_step`` inside the ``GradientTape``, from
  ``TorchTrainer.train_step`` before ``loss.backward()``, and from JAX's
  ``compute_loss_and_updates`` inside ``jax.value_and_grad`` — so ``on_loss`` runs inside
  the step, receives the real loss as the spec promises, and the plugins' penalties enter
  the objective the gradient is taken of, exactly like the ``variable.regularizer`` terms
  Keras itself collects through ``model.losses`` in that same method. Wrapping
  ``compute_loss`` rather than attaching per-variable regularizers keeps a plugin's penalty
  one term (a third-party penalty need not be a sum over variables), gives ``on_loss`` the
  loss, leaves the user's own ``kernel_regularizer``\\s alone, and also serves custom
  ``train_step``\\s that follow Keras' documented pattern of calling ``self.compute_loss``.
  Each term is ``strength · Σ sum(square(θ))`` over the same per-variable sums as
  ``keras.regularizers.L2``, so the gradients are those of Keras' built-in regularizers
  (the tests find identical weights on TensorFlow, torch and JAX).
  Each penalty is also tracked by a ``keras.metrics.Mean`` named after it, so it appears in
  the logs and the progress bar (and, as ``val_<name>``, in validation, whose ``val_loss``
  includes the penalties as it does with Keras' own regularizers).
* **Strengths and schedules**: ``run.scalar`` hands plugins a :class:`KerasScheduledValue`
  whose ``value`` is a non-trainable ``keras.Variable``. The callback brings every schedule
  to the clock in ``on_train_batch_begin`` and assigns the variable only when the value
  changes (a 4-byte host-to-device write; nothing is ever read back per step).
* **Updates** (``on_before_step``, ``on_step``): the optimizer instance's ``apply`` is
  wrapped. Every backend's train step updates the weights through it —
  ``optimizer.apply_gradients`` → ``apply`` (TensorFlow), ``optimizer.apply`` (torch),
  ``stateless_apply`` → ``apply`` inside a ``StatelessScope`` (JAX) — and Keras applies
  variable constraints at the end of ``BaseOptimizer.apply`` the same way, after
  ``_backend_apply_gradients``. So ``on_before_step`` sees the final gradients (plugins may
  change them through ``run.ops.add_to_grad_``) and ``on_step`` follows the update, inside
  the step, once per update. The learning rate plugins get is the one the update uses (read
  before ``apply`` increments ``iterations``). With a ``LossScaleOptimizer`` the inner
  optimizer is wrapped, so steps skipped for non-finite gradients skip the hooks too.
* **Dropout** (``run.dropout_layers()``): handing out a ``Dropout`` layer replaces that
  layer instance's ``call`` (Keras' ``Operation.__call__`` dispatches to ``self.call``) by
  one that reads the rate from a non-trainable variable. Keras' own ``Dropout.call`` tests
  ``self.rate > 0`` in Python and passes the float to the backend, so its rate is baked in
  and a layer built with ``rate=0`` never drops at all; the replacement draws its mask from
  the layer's seed generator (a new one for rate-0 layers) and honours any rate, including
  0 and 1. Layers no plugin asked for keep Keras' implementation (and its random stream).

What runs where
===============

``on_train_begin``, ``on_epoch_begin``, ``on_epoch_end`` and ``on_train_end`` run in Python
from the callback methods of the same names (``on_epoch_end`` after validation, with Keras'
logs as floats; keys plugins add are copied back, a stop vote sets ``model.stop_training``).
``on_loss``, ``on_before_step`` and ``on_step`` run while the step is traced — once per
trace, not once per step, unless the step runs eagerly (``run_eagerly=True``, or the torch
backend without ``jit_compile``). Inside a compiled step the ``step`` argument is the value
at trace time (reading ``run.step`` there would bake it in too, and makes ``torch.compile``
recompile); strengths are read through ``run.scalar`` values and changes made through
``run.ops``. A plugin that needs its step hooks to run as Python at every update declares
``requires = ("eager_step",)`` and is refused at fit start when the step is compiled.
``on_loss`` is also traced into the validation step, so ``val_loss`` includes the
penalties, as it does with Keras' own regularizers; and it is called once at fit start with
``loss=None``, outside any step, to learn the penalties' names for the logs (as the
PyTorch adapter's ``penalties()`` does).

``steps_per_execution=k`` (TensorFlow, JAX): the traced step runs k times per call, so
``on_loss``/``on_before_step``/``on_step`` still act at every single update; Python-side
callbacks run once per k updates, so scheduled values (and ``run.step``) advance in
increments of k — a per-step schedule is held for k updates at a time. The torch backend
allows only ``steps_per_execution=1``.

Optimizer gradient accumulation (``gradient_accumulation_steps``) is refused for plugins
with ``on_before_step``/``on_step``: Keras calls ``apply`` for every micro-batch and applies
the update only every n-th call. Penalties work with it unchanged.

``tf.distribute.MirroredStrategy`` (TensorFlow backend; one process, several devices): build
and compile the model in ``strategy.scope()`` as Keras asks, and pass the callback to
``fit`` unchanged. The step runs once per replica, on that replica's share of the batch;
Keras divides each replica's loss by the number of replicas and sums the replicas'
gradients. The penalties added in ``compute_loss`` are divided the same way (as Keras does
with its own regularizers), and so are the terms ``run.ops.add_to_grad_`` adds to a
replica's gradient in ``on_before_step``, so each counts once; ``on_before_step`` sees the
replica's gradient share, before the sum. Update plugins change every replica's copy of the
weights alike, and dropout rates set by plugins apply on every replica. The Python-side
hooks (``on_epoch_end`` …) run once, in the one process, so a stop vote needs no
collective. Tested with two logical CPU devices: the weights equal those of Keras'
``kernel_regularizer``/``kernel_constraint``/``AdamW`` under the strategy, and those of a
one-device run for a model without batch normalization. Multi-worker strategies are not
covered.

Saving: after ``fit`` nothing of regplug remains on the model, so ``model.save`` writes, and
``keras.models.load_model`` reads, a plain Keras file — in a Python with or without regplug.
A checkpoint written *during* fit (``ModelCheckpoint``) is equally plain: the patched methods
are instance attributes Keras does not serialize, the penalty trackers are not saved, and
strengths and rates live in variables outside ``model.weights``.

If ``fit`` is interrupted by an exception, Keras does not call ``on_train_end``: the next
``fit`` with a :class:`Regularize` callback cleans up the leftovers itself, and
:func:`detach` does it by hand.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
from keras import ops
from keras.src.backend import get_stateless_scope  # JAX: the scope of stateless_apply
from keras.src.losses.loss import scale_loss_for_distribution  # tf.distribute

from regplug.driver import Driver
from regplug.errors import UnsupportedPluginError, UsageError
from regplug.manager import PluginManager, plugin_label
from regplug.penalty import Penalty, check_penalties, unique_names
from regplug.plugin import check_requirements
from regplug.run import DropoutHandle, ParamHandle, Run, ScheduledValue, StopRequest
from regplug.schedules import Schedule

from .keras_ops import (DROPOUT_TYPES, KERAS_DROPOUT_CALLS, KerasModelState, KerasOps,
                        all_layers, discover_parameters)
from .keras_trial import KerasTrial
from .keras_uncertainty import mc_predict

__all__ = ["Regularize", "KerasScheduledValue", "detach", "SUPPORTED_BACKENDS", "mc_predict"]

log = logging.getLogger(__name__)

SUPPORTED_BACKENDS: tuple[str, ...] = ("tensorflow", "torch", "jax")
"""Keras backends the adapter serves (the test matrix runs each one that is installed)."""

_ATTACHED = "_regplug_attachment"
_STEP_HOOKS = ("on_loss", "on_before_step", "on_step")


class KerasScheduledValue(ScheduledValue):
    """A scheduled strength held in a non-trainable ``keras.Variable``.

    ``value`` is the variable: plugin math such as ``l2.value * ops.sum_squares(params)``
    traces a *read* of it into the step, so a new value assigned between batches is in
    force from the next batch without retracing. :meth:`update` assigns only when the
    schedule's value changes.
    """

    __slots__ = ("_last", "_before_assign")

    def __init__(self, schedule: Schedule, *, name: str = "regplug_scalar",
                 before_assign: Callable[[], None] | None = None) -> None:
        first = float(schedule(0, 0))
        self.schedule = schedule
        self.value = keras.Variable(first, dtype="float32", trainable=False, name=name)
        self._last = first
        self._before_assign = before_assign

    def update(self, step: int, epoch: int) -> None:
        new = float(self.schedule(step, epoch))
        if new != self._last:
            if self._before_assign is not None:
                self._before_assign()
            self.value.assign(new)
            self._last = new

    def current(self) -> float:
        """The value last assigned (no device read)."""
        return self._last


def _innermost(optimizer: Any) -> Any:
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


class _StateSlot:
    """Holds a variable where Keras looks for seed-generator state (``Layer.variables``)."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state


class _Attachment:
    """The patches regplug puts on one model for one ``fit``, and their removal."""

    def __init__(self, owner: Regularize, model: Any) -> None:
        self.owner = owner
        self.model = model
        self.manager = owner.manager
        self.backend = keras.backend.backend()
        self.jax = self.backend == "jax"
        if model.optimizer is None:
            raise UsageError("Regularize: the model has no optimizer; call model.compile(...) "
                             "before model.fit(...)")
        self.optimizer = _innermost(model.optimizer)
        self.ops = KerasOps()
        self.fit_token = owner.params  # one dict per CallbackList, i.e. per fit() call
        self.active = False
        self.wants = {h: self.manager.implements(h) for h in _STEP_HOOKS}
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
        self.run: Run | None = None

    # -- the Run ---------------------------------------------------------------------
    def build_run(self) -> Run:
        params = discover_parameters(self.model)
        device = "cpu"
        if params:
            device = str(getattr(params[0].tensor.value, "device", "cpu"))
        run = Run(params=params, ops=self.ops, learning_rate_groups=self.lr_groups,
                  device=device, framework="keras", scalar_factory=self.make_scalar,
                  dropout_provider=self.dropout_handles,
                  state_provider=KerasModelState(self.model, self.sync_jax),
                  trial_provider=KerasTrial(self.model, self.sync_jax))
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
        if self.jax and getattr(self.model, "_jax_state", None):
            self.model.jax_state_sync()

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
            self.model._seed_generators.append(_StateSlot(variable))
            self.dirty = True

    # -- dropout ---------------------------------------------------------------------
    def dropout_handles(self) -> list[DropoutHandle]:
        handles = []
        for layer in all_layers(self.model):
            if not isinstance(layer, DROPOUT_TYPES):
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
        noise_shape = getattr(layer, "_get_noise_shape", None)

        def call(inputs: Any, training: bool | None = False) -> Any:
            if not training:
                return inputs
            x = ops.convert_to_tensor(inputs)
            if noise_shape is not None:
                shape = noise_shape(x)
            elif layer.noise_shape is not None:
                dims = ops.shape(x)
                shape = tuple(dims[i] if d is None else d
                              for i, d in enumerate(layer.noise_shape))
            else:
                shape = ops.shape(x)
            r = rate.value
            keep = keras.random.uniform(shape, dtype="float32", seed=seed) >= r
            keep_prob = 1.0 - r
            scale = ops.where(keep_prob > 0.0, 1.0 / ops.maximum(keep_prob, 1e-12), 0.0)
            return x * ops.cast(keep, x.dtype) * ops.cast(scale, x.dtype)

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
            found = self.manager.hook.on_loss(run=self.run, loss=None)
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
            tracker = keras.metrics.Mean(name=name)
            self.trackers[name] = tracker
            self.model._metrics.append(tracker)

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
            return getattr(self.manager.hook, name)(run=self.run, **kwargs)
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
                tracker.update_state(value)
            total = value if total is None else total + value
        if total is None:
            return loss
        # Under a tf.distribute strategy each replica's loss is divided by the number of
        # replicas, because the replicas' gradients are summed. Keras divides its own
        # regularizers' terms the same way (TensorFlowTrainer._aggregate_additional_loss);
        # unscaled, a penalty would count once per replica. A no-op on one device and on
        # the other backends.
        total = scale_loss_for_distribution(total)
        return loss + ops.cast(total, loss.dtype)

    # -- updates: the wrapped optimizer.apply ----------------------------------------------
    def patch_apply(self) -> None:
        optimizer = self.optimizer
        original = optimizer.apply

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            self.apply_seen = True
            step = self.run.step if self.eager else self.trace_step
            variables = (list(trainable_variables) if trainable_variables is not None
                         else list(optimizer._trainable_variables))
            if self.jax and self.jax_values:
                # stateless_apply maps only the weights and the optimizer's variables;
                # give it the traced values of the strengths read in compute_loss.
                scope = get_stateless_scope()
                if scope is not None:
                    for key, value in self.jax_values.items():
                        scope.state_mapping.setdefault(key, value)
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
        for layer, _ in self.dropout:
            if "call" in vars(layer):
                del layer.call
        metrics = model._metrics
        for tracker in self.trackers.values():
            for i in range(len(metrics) - 1, -1, -1):
                if metrics[i] is tracker:
                    del metrics[i]
        if self.jax:
            slots = model._seed_generators
            for i in range(len(slots) - 1, -1, -1):
                if isinstance(slots[i], _StateSlot):
                    del slots[i]
        # The traced functions contain the patches: make later fit/evaluate retrace.
        model.train_function = None
        model.test_function = None
        if getattr(model, _ATTACHED, None) is self:
            delattr(model, _ATTACHED)
        self.active = False
        self.dropout, self.trackers, self.state_vars, self.jax_values = [], {}, [], {}


class Regularize(keras.callbacks.Callback):
    """A Keras callback that applies regplug plugins during ``model.fit``.

    :param plugins: plugin objects, e.g. ``[L2(1e-4), MaxNorm(3.0)]`` or
        ``regplug.build_plugins(config)``: the same objects a PyTorch loop takes.
    :param log_penalties: log each penalty under its own name (``l2_penalty``, and
        ``val_l2_penalty`` in validation) — in the progress bar and ``History``.

    One callback may serve several ``fit`` calls and several models one after the other:
    each ``fit`` gets a fresh :class:`regplug.Run` (its ``step`` continues from the
    optimizer's ``iterations``, like Keras' learning-rate schedules; ``epoch`` is Keras'
    epoch index), and the model is left clean at the end of each ``fit``.

    Backends: TensorFlow, torch and JAX. On JAX the strengths and dropout rates join the
    model's non-trainable state during ``fit`` (the jitted step sees nothing else), the way
    Keras carries seed-generator state: in ``model.variables``, not in ``model.weights``.

    >>> import keras, numpy as np
    >>> from regplug.plugins import L2
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> history = model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=2, verbose=0,
    ...                     callbacks=[Regularize([L2(1e-3)])])
    >>> sorted(history.history)
    ['l2_penalty', 'loss']
    """

    def __init__(self, plugins: Iterable[object], *, log_penalties: bool = True) -> None:
        super().__init__()
        if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
            raise TypeError("Regularize: 'plugins' must be a list of plugin objects, e.g. "
                            f"Regularize([L2(1e-4)]); got {type(plugins).__name__}")
        self.manager = PluginManager(plugins)
        self.log_penalties = bool(log_penalties)
        self.run: Run | None = None
        self._driver: Driver | None = None
        self._att: _Attachment | None = None
        self._epoch_start_step = 0
        self._checked_traced = False

    @property
    def plugins(self) -> list[object]:
        """The plugins, in registration order."""
        return self.manager.plugins

    # -- fit start ---------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        backend = keras.backend.backend()
        if backend not in SUPPORTED_BACKENDS:
            raise UnsupportedPluginError(
                f"Regularize: the Keras backend {backend!r} is not supported; regplug serves "
                f"{', '.join(SUPPORTED_BACKENDS)}")
        self._clear_leftovers(model)
        self._check_capabilities(model)
        att = _Attachment(self, model)
        self._check_optimizer(att)
        run = att.build_run()
        driver = Driver(run, self.manager, fused=False)
        setattr(model, _ATTACHED, att)
        att.active = True
        self._att, self.run, self._driver = att, run, driver
        self._checked_traced = False
        try:
            driver.train_begin()
            att.attach()
        except BaseException:
            driver.active = False
            att.detach()
            self._att = None
            raise
        log.debug("regplug: %d plugin(s) on %d parameters of %s (%s backend)",
                  len(self.plugins), len(run.params), model.name, backend)

    def _clear_leftovers(self, model: Any) -> None:
        previous = getattr(model, _ATTACHED, None)
        if previous is None:
            return
        if previous.active and previous.fit_token is self.params:
            raise UsageError(
                "Regularize: this fit has two Regularize callbacks on the same model; pass "
                "all plugins to one: Regularize([plugin_a, plugin_b, ...]) (two would "
                "apply the penalties twice)")
        log.warning("regplug: model %r still carries regplug patches from a fit that did not "
                    "finish (an exception skips on_train_end); removing them", model.name)
        previous.detach()

    def _check_capabilities(self, model: Any) -> None:
        compiled = None if step_is_eager(model) else (
            f"model.fit runs a compiled train step on the {keras.backend.backend()} backend, "
            f"where {', '.join(_STEP_HOOKS)} run once, while the step is traced. Compile with "
            "model.compile(..., run_eagerly=True) to use this plugin with Keras.")
        check_requirements(self.plugins, {"eager_step": compiled, "dropout_layers": None,
                                          "model_state": None, "batch_training": None},
                           adapter="the Keras adapter")

    def _check_optimizer(self, att: _Attachment) -> None:
        if not getattr(att.optimizer, "gradient_accumulation_steps", None):
            return
        step_plugins = [plugin_label(p) for p in self.plugins
                        if any(callable(getattr(p, h, None))
                               for h in ("on_before_step", "on_step"))]
        if step_plugins:
            raise UnsupportedPluginError(
                f"{', '.join(step_plugins)}: act at every optimizer update, but this optimizer "
                f"has gradient_accumulation_steps={att.optimizer.gradient_accumulation_steps} "
                "and Keras calls its apply() for every micro-batch, updating only every n-th "
                "time. Remove gradient_accumulation_steps or use a larger batch.")

    # -- per epoch and per batch ----------------------------------------------------------
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        run, driver = self._live()
        run.epoch = epoch
        self._epoch_start_step = run.step
        driver.epoch_begin()  # fires on_epoch_begin, brings the schedules to the clock
        if self._att is not None and self._att.dirty:
            self._att.retrace()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Only the *begin* hook: implementing on_train_batch_end would make Keras turn the
        # logs into Python floats (a device sync) after every batch.
        run, driver = self._live()
        run.step = self._epoch_start_step + batch
        driver.batch_begin()
        att = self._att
        if att is not None:
            if att.dirty:
                att.retrace()
            if batch > 0 and not self._checked_traced:
                self._check_traced(att)

    def _check_traced(self, att: _Attachment) -> None:
        self._checked_traced = True
        missing = []
        if att.patched_loss and att.wants["on_loss"] and not att.loss_seen:
            missing.append("compute_loss (so the penalties are not in the loss)")
        if att.patched_apply and not att.apply_seen:
            missing.append("optimizer.apply / apply_gradients (so on_before_step and on_step "
                           "never ran)")
        if missing:
            raise UsageError(
                f"Regularize: the model's train_step did not call {' nor '.join(missing)}. "
                "A custom train_step must compute its loss with self.compute_loss(...) and "
                "update with self.optimizer.apply(...) or apply_gradients(...) for regplug "
                "to act inside it.")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        run, driver = self._live()
        att = self._att
        if att is not None and not self._checked_traced:
            self._check_traced(att)
        run.step = att.read_iterations() if att is not None else run.step
        logs = logs if logs is not None else {}
        clean: dict[str, float] = {}
        for key, value in logs.items():
            try:
                clean[key] = float(value)
            except (TypeError, ValueError):
                continue
        before = set(clean)
        stop = driver.epoch_end(clean)
        for key in clean.keys() - before:
            logs[key] = clean[key]
        if stop:
            self.model.stop_training = True
            log.info("regplug: stopping at epoch %d: %s", epoch,
                     "; ".join(str(r) for r in run.stop_requests))

    # -- fit end -------------------------------------------------------------------------
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        driver, att = self._driver, self._att
        self._att = None
        try:
            if driver is not None:
                driver.train_end()
        finally:
            if att is not None:
                att.detach()

    def _live(self) -> tuple[Run, Driver]:
        if self.run is None or self._driver is None or not self._driver.active:
            raise UsageError("Regularize: this callback is used outside model.fit (its "
                             "on_train_begin has not run)")
        return self.run, self._driver

    # -- results ---------------------------------------------------------------------------
    @property
    def history(self) -> dict[str, list[float]]:
        """The epochs' logs of the last (or current) fit, as regplug recorded them."""
        return self.run.history if self.run is not None else {}

    @property
    def stop_requests(self) -> list[StopRequest]:
        """Why the last fit was asked to stop, with plugin, epoch and step of each vote."""
        return list(self.run.stop_requests) if self.run is not None else []


def detach(model: Any) -> bool:
    """Remove regplug's patches from ``model`` after a ``fit`` that ended in an exception.

    Keras skips ``on_train_end`` when ``fit`` raises, so the model may still carry the
    wrapped ``compute_loss``/``optimizer.apply`` (the next ``fit`` with a
    :class:`Regularize` callback removes them itself). Returns whether there was anything.
    """
    att = getattr(model, _ATTACHED, None)
    if att is None:
        return False
    att.detach()
    return True

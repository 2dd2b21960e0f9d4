"""The variables regplug adds that the traced train step reads, and how a JAX step gets them.

Strengths (``run.scalar``), dropout rates and seed states live in non-trainable
``keras.Variable`` objects, so a value set between batches reaches the compiled step. On JAX the
jitted step sees only the model's variables, passed as explicit ``state``: each of regplug's
variables is registered like a seed generator's state (in ``model.variables``, not in
``model.weights``), the running state is written back before one is assigned (``sync``), and
``optimizer.apply``, whose ``stateless_apply`` maps only the weights and the optimizer's
variables, is lent their traced values, taken in ``compute_loss`` or from the ``state`` of
any train step (:meth:`StepVariables.patch_train_step`).

Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType
from typing import Any

from regplug.schedules import Schedule

from .. import _compat
from ..scalars import KerasScheduledValue

__all__ = ["StepVariables"]


class _StateSlot:
    """Holds a variable where Keras looks for seed-generator state (``Layer.variables``)."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state


class StepVariables:
    """regplug's variables the traced step reads; on JAX, part of the step's ``state``.

    ``changed()`` is called when the traced step predates a variable (JAX: a retrace is due).
    """

    def __init__(self, model: Any, *, jax: bool, changed: Callable[[], None]) -> None:
        self.model = model
        self.jax = jax
        self.changed = changed
        self.variables: list[Any] = []
        self.traced: dict[int, Any] = {}  # JAX: id(variable) -> its value in the traced step
        self.updated: dict[int, Any] = {}  # JAX: what on_step assigned them inside apply
        self.patched_step = False         # JAX: train_step (see patch_train_step)

    def sync(self) -> None:
        """JAX keeps the state outside the variables during fit: write it back first."""
        if self.jax:
            self.model.jax_state_sync()  # a no-op when nothing is out of date

    def add(self, variable: Any) -> None:
        """Make ``variable`` one the traced step reads (JAX: part of its state)."""
        self.variables.append(variable)
        if self.jax:
            # The jitted step sees only the model's variables (passed as explicit state);
            # anything else would be a constant captured at trace time. Registered like a
            # seed generator's state, the variable is in `model.variables` (hence in the
            # state) but not in `model.weights`, so checkpoints stay plain Keras files.
            # Write the running state back first: it is zipped with this list.
            self.sync()
            _compat.add_state_slot(self.model, _StateSlot(variable))
            self.changed()

    def make_scalar(self, schedule: Schedule) -> KerasScheduledValue:
        """The run's scalar factory: a strength held in one of these variables."""
        handle = KerasScheduledValue(schedule, name=f"regplug_scalar_{len(self.variables)}",
                                     before_assign=self.sync if self.jax else None)
        self.add(handle.value)
        return handle

    # -- inside the step (JAX) ------------------------------------------------------------
    def remember_traced(self) -> None:
        """In ``compute_loss``: keep the traced values for the optimizer's scope."""
        self.traced = {id(v): v.value for v in self.variables}

    def lend_traced(self) -> None:
        """In ``optimizer.apply``: map the traced values into the ``StatelessScope`` in force.

        ``stateless_apply`` maps only the weights and the optimizer's variables.
        """
        if self.traced:
            scope = _compat.stateless_scope()
            if scope is not None:
                _compat.map_traced_values(scope, self.traced)

    def patch_train_step(self) -> None:
        """JAX: give ``apply`` the traced values of regplug's variables in any train step.

        During a JAX ``fit`` Keras frees the variables' own values (the jitted step gets
        them as ``state``), so a strength read outside a ``StatelessScope`` that maps it has
        no value at all. ``stateless_apply`` maps only the weights and the optimizer's
        variables. The built-in step calls ``compute_loss`` first, in a scope that maps
        the model's non-trainable state, strengths included (``remember_traced`` keeps
        them); a custom step such as the JAX guide's lower-level one computes its own loss
        and never calls it. Every JAX train step gets ``state`` — ``(trainable,
        non_trainable, optimizer, metrics)`` in the order of the model's lists — so the
        wrapped ``train_step`` takes the values from there.
        """
        model = self.model
        original = model.train_step

        def train_step(state: Any, data: Any) -> Any:
            if self.variables:  # harmless when the patches act as the originals
                self.traced = self.traced_state(state)
            self.updated = {}
            logs, new_state = original(state, data)
            if self.updated:
                new_state = self.with_updates(new_state)
            return logs, new_state

        model.train_step = train_step
        self.patched_step = True

    def keep_updates(self) -> None:
        """In ``optimizer.apply``, after ``on_step``: keep what the hooks assigned to regplug's
        variables (a weight average). ``stateless_apply`` returns only the weights and the
        optimizer's variables, so the wrapped ``train_step`` puts these into the new state."""
        scope = _compat.stateless_scope()
        if scope is None:
            return
        self.updated = {id(v): value for v in self.variables
                        if (value := scope.get_current_value(v)) is not None}

    def with_updates(self, state: Any) -> Any:
        """``state`` with :meth:`keep_updates`' values in its non-trainable part."""
        try:
            trainable, non_trainable, *rest = state
        except (TypeError, ValueError):
            return state
        variables = self.model.non_trainable_variables
        if len(variables) != len(non_trainable):
            return state
        updated = [self.updated.get(id(v), value) for v, value in zip(variables, non_trainable)]
        return type(state)((trainable, type(non_trainable)(updated), *rest))

    def traced_state(self, state: Any) -> dict[int, Any]:
        """The traced values of regplug's variables in a JAX train step's ``state``."""
        try:
            non_trainable = list(state[1])
        except (TypeError, IndexError):
            return dict(self.traced)
        variables = self.model.non_trainable_variables
        if len(variables) != len(non_trainable):
            return dict(self.traced)
        ours = {id(v) for v in self.variables}
        return {id(v): value for v, value in zip(variables, non_trainable) if id(v) in ours}

    def restore_purged(self, fit_frame: FrameType | None) -> None:
        """JAX: give the variables back the state the fit took out of them for a step.

        Fit puts it back only after a step ran: an error raised inside the step (or a fit
        that ended without ``on_train_end``) would leave them empty.
        """
        if self.jax and fit_frame is not None:
            _compat.restore_purged_jax_state(self.model, fit_frame)

    def detach(self) -> None:
        """Remove the wrapped ``train_step`` and (JAX) the state slots; forget the variables."""
        model = self.model
        if self.patched_step and "train_step" in vars(model):
            del model.train_step
        if self.jax:
            _compat.remove_state_slots(model, _StateSlot)
        self.variables, self.traced = [], {}

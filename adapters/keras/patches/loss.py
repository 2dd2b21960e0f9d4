"""The wrapped ``compute_loss``: the plugins' penalties traced into the step, and their logs.

Every backend's train step calls the model's ``compute_loss``, so ``on_loss`` runs inside
the step, gets the real loss, and its penalties enter the objective the gradient is taken
of, like the terms of Keras' own regularizers. Each penalty is logged by a
:class:`PenaltyTracker` (``l2_penalty``, and ``val_l2_penalty`` in validation).

Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from regplug.manager import PluginManager
from regplug.penalty import Penalty, check_penalties, unique_names
from regplug.run import Run

from .. import _compat
from ..ops import scale_for_replicas
from .jax_step import StepVariables

__all__ = ["LossPatch", "PenaltyTracker"]

log = logging.getLogger(__name__)


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


class LossPatch:
    """The model's ``compute_loss`` plus the penalties ``on_loss`` returns, and their trackers.

    ``wanted``: a plugin implements ``on_loss``. ``live()``: whether the patch acts (its fit
    is running). ``call_hook(name, **kwargs)``: calls a hook from inside the step.
    """

    def __init__(self, model: Any, manager: PluginManager, *, wanted: bool,
                 log_penalties: bool, live: Callable[[], bool],
                 call_hook: Callable[..., list[Any]], variables: StepVariables) -> None:
        self.model = model
        self.manager = manager
        self.wanted = wanted
        self.log_penalties = log_penalties
        self.live = live
        self.call_hook = call_hook
        self.variables = variables
        self.jax = variables.jax
        self.trackers: dict[str, Any] = {}
        self.patched = False
        self.seen = False  # set (never incremented) inside the step: torch.compile guards on it

    def setup_trackers(self, run: Run | None) -> None:
        """One :class:`PenaltyTracker` per penalty ``on_loss`` names before training."""
        if not self.wanted or not self.log_penalties:
            return
        try:
            found = self.manager.caller("on_loss")(run=run, loss=None)
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

    def patch(self) -> None:
        """Shadow the model's ``compute_loss`` with one that adds the penalties."""
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
        self.patched = True

    def add_penalties(self, loss: Any) -> Any:
        self.seen = True
        if self.jax:  # remember the traced values for the optimizer's scope
            self.variables.remember_traced()
        if loss is None or not self.wanted:
            return loss
        penalties = check_penalties(self.call_hook("on_loss", loss=loss))
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

    def detach(self) -> None:
        """Remove the wrapped ``compute_loss`` and the trackers."""
        model = self.model
        if self.patched and "compute_loss" in vars(model):
            del model.compute_loss
        for tracker in self.trackers.values():
            _compat.remove_metric(model, tracker)
        self.trackers = {}

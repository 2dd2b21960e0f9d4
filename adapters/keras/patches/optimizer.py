"""The wrapped ``optimizer.apply``: ``on_before_step`` and ``on_step`` traced into the step.

Every backend's train step updates the weights through the optimizer's ``apply``, so the
hooks run inside the step, once per update: ``on_before_step`` sees the final gradients
(plugins change them through ``run.ops.add_to_grad_``), ``on_step`` follows the update, and
the learning rate plugins get is the one the update uses. With a ``LossScaleOptimizer`` the
inner optimizer is wrapped (:func:`innermost_optimizer`).

Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from regplug.run import ParamHandle, Run

from .. import _compat
from ..ops import KerasOps
from .jax_step import StepVariables

__all__ = ["OptimizerPatch", "innermost_optimizer"]


def innermost_optimizer(optimizer: Any) -> Any:
    """The optimizer doing the update (the one inside a ``LossScaleOptimizer``)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


class OptimizerPatch:
    """The optimizer's ``apply`` with ``on_before_step`` before and ``on_step`` after it.

    ``before_step``/``after_step``: a plugin implements ``on_before_step``/``on_step``.
    ``eager``: the step runs as Python at every batch, so the hooks get ``run.step``; in a
    traced step they get ``trace_step``, the step at trace time (see ``on_before_step``'s
    spec); the attachment sets both ``run`` and ``trace_step``. ``live()`` and
    ``call_hook``: as for the loss (:class:`~.loss.LossPatch`).
    """

    def __init__(self, optimizer: Any, ops: KerasOps, *, before_step: bool, after_step: bool,
                 eager: bool, live: Callable[[], bool], call_hook: Callable[..., list[Any]],
                 variables: StepVariables) -> None:
        self.optimizer = optimizer
        self.ops = ops
        self.before_step = before_step
        self.after_step = after_step
        self.eager = eager
        self.run: Run | None = None
        self.trace_step = 0
        self.live = live
        self.call_hook = call_hook
        self.variables = variables
        self.jax = variables.jax
        self.lr_now: Any = None
        self.patched = False
        self.seen = False  # set (never incremented) inside the step: torch.compile guards on it

    def lr_groups(self, params: Sequence[ParamHandle]) -> list[tuple[Any, list[ParamHandle]]]:
        """The run's learning-rate groups: one, with the rate the running update uses."""
        if not params:
            return []
        lr = self.lr_now if self.lr_now is not None else self.optimizer.learning_rate
        return [(lr, list(params))]

    def patch(self) -> None:
        """Shadow the optimizer's ``apply`` with one that calls the step hooks around it."""
        optimizer = self.optimizer
        original = optimizer.apply

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            if not self.live():  # its fit is gone: act as the original
                return original(grads, trainable_variables)
            self.seen = True
            step = self.trace_step
            if self.eager and self.run is not None:
                step = self.run.step
            variables = (list(trainable_variables) if trainable_variables is not None
                         else _compat.optimizer_variables(optimizer))
            if self.jax:
                # stateless_apply maps only the weights and the optimizer's variables;
                # give it the traced values of the strengths read in compute_loss.
                self.variables.lend_traced()
            self.lr_now = optimizer.learning_rate  # the rate this update uses
            try:
                if self.before_step:
                    self.ops.open_gradients(grads, variables)
                    try:
                        self.call_hook("on_before_step", step=step)
                    finally:
                        changed = self.ops.close_gradients()
                    grads = changed
                result = original(grads, trainable_variables)
                if self.after_step:
                    self.call_hook("on_step", step=step)
                    if self.jax:
                        self.variables.keep_updates()  # JAX: carried out of the step
            finally:
                self.lr_now = None
            return result

        optimizer.apply = apply
        self.patched = True

    def detach(self) -> None:
        """Remove the wrapped ``apply``."""
        if self.patched and "apply" in vars(self.optimizer):
            del self.optimizer.apply

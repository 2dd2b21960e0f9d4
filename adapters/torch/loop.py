"""The hand-written PyTorch loop's events: :func:`attach` and :class:`TorchRegularizer`::

    with attach(model, optimizer, [L2(1e-4)]) as reg:              # on_train_begin
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = reg.loss(criterion(model(x), y))            # on_loss
                loss.backward()
                optimizer.step()                                   # on_before_step / on_step
            if reg.epoch_end({"val_loss": evaluate(model)}):       # on_epoch_end
                break                                              # on_train_end on exit

Docs: docs/loops/torch.md (when each hook fires; clipping, closures, accumulation, AMP, DDP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import nn

from regplug.clock import EpochClock, Wording, check_logs
from regplug.errors import UsageError
from regplug.manager import PluginManager
from regplug.penalty import Penalty, unique_names
from regplug.plugin import check_requirements
from regplug.run import StopRequest
from regplug.window import StepWindow

from . import _compat
from .build import GroupWatch, build_run, refuse_nothing_to_train, warn_double_decay
from .ops import TorchOps, without_grad
from .state import load_run_state, run_state_dict
from .trial import TorchTrial

__all__ = ["attach", "TorchRegularizer", "hookable_optimizer"]

_ATTACHED = "_regplug_attached"

# Where a closure evaluation stands (TorchRegularizer._evaluation).
_OUTSIDE, _EVALUATING, _LOSS_GIVEN = 0, 1, 2


def hookable_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` whose step hooks regplug can use.

    Trainers' wrappers that hold the real optimizer as ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) are unwrapped: their
    ``step()``/``zero_grad()`` call the real optimizer's, where regplug's hooks sit.
    Anything else without torch's step-hook machinery is refused, naming its type.
    """
    seen = optimizer
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    # A wrapper may subclass Optimizer without running its __init__ (accelerate's does):
    # then torch's hook registries are missing, so look for them rather than at the type.
    if not (isinstance(optimizer, torch.optim.Optimizer)
            and "_optimizer_step_pre_hooks" in vars(optimizer)):
        raise TypeError(f"attach: 'optimizer' must be a torch.optim.Optimizer (or a wrapper "
                        f"holding one as .optimizer, as accelerate's and Lightning's do), got "
                        f"{type(seen).__name__}, which has no optimizer step hooks to attach to")
    return optimizer

#: How the PyTorch adapter's messages name the user's calls.
TORCH_WORDING = Wording.for_torch()


class TorchRegularizer:
    """regplug plugins attached to one model and optimizer. Create it with :func:`attach`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 plugins: Iterable[object], *, fused: bool = True, world: Any = None,
                 loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError("attach: 'model' must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        optimizer = hookable_optimizer(optimizer)
        if getattr(optimizer, _ATTACHED, None) is not None:
            raise UsageError("attach: this optimizer already has regplug attached; close the "
                             "previous attachment first (penalties would apply twice)")
        self.model = model
        self.optimizer = optimizer
        self.manager = PluginManager(plugins)
        # Every hook runs as Python at every step here, and dropout modules are at hand.
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"attach: 'loss_fn' must be callable as loss_fn(outputs, targets), "
                            f"got {type(loss_fn).__name__}")
        no_loss = None if loss_fn is not None else (
            "attach() was given no loss function: pass attach(model, optimizer, plugins, "
            "loss_fn=criterion), with criterion(outputs, targets) -> loss")
        check_requirements(self.manager.plugins, {"eager_step": None, "dropout_layers": None,
                                                  "model_state": None, "trial_training": no_loss},
                           adapter="the PyTorch adapter")
        self.run = build_run(model, optimizer, world=world,
                             trial=None if loss_fn is None else TorchTrial(
                                 model, optimizer, loss_fn, self._paused))
        refuse_nothing_to_train(self.run, self.manager.plugins, adapter="attach")
        warn_double_decay(self.run, optimizer, self.manager.plugins)
        # Groups added with optimizer.add_param_group() later join at their first step.
        self._groups = GroupWatch(model, optimizer, self.run)
        self.clock = EpochClock(self.run, self.manager, TORCH_WORDING)
        self.window = StepWindow(self.clock, fused=fused)
        # What the closure path runs, with autograd off (cheaper than a no_grad() block).
        self._before_step = without_grad(self.window.before_step)
        self._add_penalty_grads = without_grad(self.window.add_penalty_grads)
        self._penalty_values = without_grad(self.window.penalty_values)
        self._loss_terms: list[Penalty] = []
        self._backpropagated = True
        self._batch_open = False
        self._ops = self.run.ops if isinstance(self.run.ops, TorchOps) else TorchOps()
        # optimizer.step(closure): the closure's evaluations in this step (None: no closure),
        # and where the evaluation running now stands (_OUTSIDE, _EVALUATING, _LOSS_GIVEN).
        self._closure_calls: int | None = None
        self._evaluation = _OUTSIDE
        self._handles: list[Any] = []
        self._closed = False
        self._open()

    # -- wiring ----------------------------------------------------------------------
    def _open(self) -> None:
        self._install()
        try:
            self.clock.train_begin()
        except BaseException:
            self._detach()
            raise

    def _install(self) -> None:
        setattr(self.optimizer, _ATTACHED, self)
        self._handles = [
            self.optimizer.register_step_pre_hook(self._on_before_step),
            self.optimizer.register_step_post_hook(self._on_after_step),
        ]
        if any(self.manager.implements(h) for h in ("on_epoch_begin", "on_batch_begin")):
            # Only a plugin acting at epoch/batch begin (e.g. on dropout rates) needs to run before
            # the first forward pass; otherwise reg.loss() opens the batch, and the module
            # keeps its fast hook-free call path.
            self._handles.append(self.model.register_forward_pre_hook(self._on_forward))
        # zero_grad() opens a new accumulation window. It is the one event that tells a
        # skipped step (GradScaler found inf/NaN) apart from gradient accumulation.
        original = self.optimizer.zero_grad

        def zero_grad(*args: Any, **kwargs: Any) -> None:
            # Inside a closure after its loss was handed over (Lightning zeroes the gradients
            # between the forward and the backward pass), the window stays open.
            if self._evaluation != _LOSS_GIVEN:
                self._new_window()
            original(*args, **kwargs)

        self.optimizer.zero_grad = zero_grad  # type: ignore[method-assign]

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.optimizer.__dict__.pop("zero_grad", None)
        if getattr(self.optimizer, _ATTACHED, None) is self:
            delattr(self.optimizer, _ATTACHED)

    @contextmanager
    def _paused(self) -> Iterator[None]:
        """regplug's hooks removed for a while (a sanity check training on its own)."""
        self._detach()
        try:
            yield
        finally:
            self._install()

    def _new_window(self) -> None:
        self._ops.in_update = False  # in case the previous step ended in an exception
        self.window.reset()
        self._loss_terms = []
        self._backpropagated = True
        self._batch_open = False

    def _on_forward(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self._open_batch()

    def _open_batch(self) -> None:
        if not self._batch_open:
            self._batch_open = True
            self.clock.batch_begin()

    def _check_backpropagated(self) -> None:
        if not self._backpropagated:
            names = ", ".join(p.name for p in self._loss_terms)
            raise UsageError(
                f"regplug: optimizer.step() was called, but the loss returned by reg.loss() "
                f"was not backpropagated, so the penalties {names} would be missing. Call "
                "backward() on the tensor reg.loss() returns, not on the original loss.")

    def _set_in_update(self, value: bool) -> None:
        self._ops.in_update = value

    def _on_before_step(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        # args = (optimizer, closure?) as step() was called; a closure may come by keyword.
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        self._closure_calls = None  # a previous step(closure) may have ended in an exception
        if closure is not None:
            # The optimizer evaluates the closure inside step(), before updating (LBFGS
            # several times): the plugins run after its backward pass, in _evaluate.
            self._closure_calls = 0
            wrapped = self._wrap_closure(closure)
            if len(args) > 1:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}
        if not self._backpropagated:
            self._check_backpropagated()  # raises
        if len(self.optimizer.param_groups) != self._groups.count:
            self._groups.check()  # a group was added: its parameters join
        # A loop that never calls reg.loss (no plugin needs the loss): the batch opens here,
        # so scheduled values are brought to this step before it (EMA's momentum).
        self._open_batch()
        self._ops.in_update = True
        # Autograd off once for every plugin's in-place op (without_grad's switch, inline:
        # this and _on_after_step run at every step).
        grad_was_on = torch.is_grad_enabled()
        if grad_was_on:
            _compat.set_grad_enabled(False)
        try:
            self.window.before_step()
        finally:
            if grad_was_on:
                _compat.set_grad_enabled(True)
        return None

    def _wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_with_plugins() -> Any:
            return self._evaluate(closure)

        return closure_with_plugins

    def _evaluate(self, closure: Callable[[], Any]) -> Any:
        """One evaluation of ``optimizer.step(closure)``'s closure, with regplug's part.

        Each evaluation that calls ``reg.loss`` opens a fresh window, so it gets the
        penalties at its own parameters (LBFGS evaluates several points per step) and
        returns the penalized objective: the closure's value plus the values of the
        penalties applied through their gradient. After the first evaluation's backward
        pass comes ``on_before_step``, once per step, as without a closure; a loss handed
        over before ``step`` (a closure that only runs hooks) counts for that step.
        """
        self._evaluation = _EVALUATING
        try:
            result = closure()
        finally:
            given = self._evaluation == _LOSS_GIVEN
            self._evaluation = _OUTSIDE
        self._check_backpropagated()
        if given and isinstance(result, (torch.Tensor, float)):
            result = self._with_fused_values(result)
        first = self._closure_calls == 0
        self._closure_calls = (self._closure_calls or 0) + 1
        self._set_in_update(True)
        if first:
            self._groups.check()
            self._open_batch()  # a closure that never calls reg.loss (see _on_before_step)
            self._before_step()
        else:
            self._add_penalty_grads()
        return result

    def _with_fused_values(self, result: torch.Tensor | float) -> torch.Tensor | float:
        values = self._penalty_values()
        if not values:
            return result
        total = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).sum()
        if isinstance(result, torch.Tensor):
            return result.detach() + total.to(device=result.device, dtype=result.dtype)
        return result + float(total)  # the closure already returned a host number

    def _on_after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        calls, self._closure_calls = self._closure_calls, None
        if calls == 0:
            self._set_in_update(False)
            raise UsageError(
                f"regplug: {type(optimizer).__name__}.step(closure) returned without calling "
                "the closure, so on_before_step and the penalties' gradients never ran; call "
                "step() without a closure after backward()")
        grad_was_on = torch.is_grad_enabled()
        if grad_was_on:
            _compat.set_grad_enabled(False)
        try:
            self.window.after_step()
        finally:
            self._ops.in_update = False
            if grad_was_on:
                _compat.set_grad_enabled(True)
        self._loss_terms = []
        self._batch_open = False

    # -- the three calls of the supported pattern ------------------------------------
    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Fire ``on_loss``; return ``loss`` plus the penalties that go through autograd.

        Penalties with a closed-form gradient (L1, L2, elastic net) are applied as a fused
        gradient update inside ``optimizer.step()`` instead, so they do not appear in the
        returned value; :meth:`penalty` gives their current value.

        A loss that does not require grad (a validation loss under ``torch.no_grad()``) is
        returned unchanged and does not count as the step's loss.
        """
        if self._closed:
            self._check_open()  # raises
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            return loss
        self._open_batch()
        if len(self.optimizer.param_groups) != self._groups.count:
            self._groups.check()  # a group was added: its parameters join
        if self._evaluation == _EVALUATING:
            # A closure evaluation: a fresh window for the objective at these parameters.
            self._evaluation = _LOSS_GIVEN
            self.window.reset()
            self._loss_terms = []
            self._backpropagated = True
        terms = self.window.collect_penalties(loss)
        if not terms:
            return loss
        total = torch.stack([torch.as_tensor(t.value(), dtype=torch.float32,
                                             device=loss.device) for t in terms]).sum()
        if total.requires_grad:
            self._loss_terms = list(terms)
            self._backpropagated = False
            total.register_hook(self._mark_backpropagated)
        return loss + total

    def _mark_backpropagated(self, grad: torch.Tensor) -> None:
        self._backpropagated = True

    def add_penalty_grads(self) -> None:
        """Add the fused penalties' gradients now rather than inside ``optimizer.step()``.

        Call it between ``backward()`` and ``torch.nn.utils.clip_grad_norm_`` (with
        ``GradScaler``: after ``scaler.unscale_(optimizer)``) so that clipping sees the
        penalty's gradient, as with the penalty written in the loss; the step then adds
        nothing more. Without it, fused penalties join inside ``optimizer.step()``, after
        clipping, like ``torch.optim``'s own ``weight_decay``.
        """
        self._check_open()
        self._check_backpropagated()
        self._add_penalty_grads()

    def epoch_end(self, logs: dict[str, float] | None = None) -> bool:
        """Fire ``on_epoch_end`` with ``logs`` (plus each penalty's value); True = stop.

        Pass validation metrics (e.g. ``{"val_loss": 0.31, "val_accuracy": 0.9}``) so that
        early stopping and gap monitors can see them. Values may be floats or tensors/arrays
        holding one element, of any shape.
        """
        self._check_open()
        clean = check_logs({} if logs is None else logs, where="reg.epoch_end")
        for name, value in self.penalties().items():
            clean.setdefault(name, float(value))
        return self.clock.epoch_end(clean)

    @contextmanager
    def validation(self) -> Iterator[None]:
        """Wrap each validation pass in it: fires ``on_validation_begin`` on entry and
        ``on_validation_end`` on exit (also by an exception), so a plugin can put other
        weights in for it (``EMA(evaluate_on_average=True)`` validates on the average)::

            with reg.validation():
                val_loss = evaluate(model)
            reg.epoch_end({"val_loss": val_loss})
        """
        self._check_open()
        without_grad(self.manager.caller("on_validation_begin"))(run=self.run)
        try:
            yield
        finally:
            without_grad(self.manager.caller("on_validation_end"))(run=self.run)

    def close(self) -> None:
        """Fire ``on_train_end`` and remove every hook regplug installed."""
        if self._closed:
            return
        self._closed = True
        try:
            self.clock.train_end()
        finally:
            self._detach()

    def __enter__(self) -> TorchRegularizer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.run.exception = exc  # plugins see why training ended (nothing is restored then)
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("regplug: this attachment is closed; call attach(...) again")

    # -- reading results -------------------------------------------------------------
    def penalties(self) -> dict[str, torch.Tensor]:
        """Each penalty's value at the current weights (0-d float32 tensors on the model's
        device), for the penalties of the latest step; empty before the first step."""
        penalties = self.window.penalties
        with torch.no_grad():
            return {name: torch.as_tensor(p.value(), dtype=torch.float32)
                    for name, p in zip(unique_names(p.name for p in penalties), penalties)}

    def penalty(self) -> torch.Tensor:
        """The sum of the current penalties (no host synchronisation)."""
        values = list(self.penalties().values())
        if not values:
            return torch.zeros((), dtype=torch.float32, device=self.run.device)
        return torch.stack(values).sum()

    @property
    def should_stop(self) -> bool:
        return self.run.should_stop

    @property
    def stop_requests(self) -> list[StopRequest]:
        """Why training was asked to stop, with the plugin, epoch and step of each vote."""
        return list(self.run.stop_requests)

    @property
    def history(self) -> dict[str, list[float]]:
        return self.run.history

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The run's clock and history and every plugin's state, for a checkpoint.

        NumPy arrays in plugins' states (e.g. early stopping's best weights) are stored as
        CPU tensors, so ``torch.load(path)`` reads the checkpoint with its default
        ``weights_only=True``; :meth:`load_state_dict` turns them back into arrays.
        """
        return run_state_dict(self.run, self.manager.plugins)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the same plugins, in the same order.

        All or nothing: the checkpoint's layout is checked first, and if any plugin refuses
        its state, every plugin and the run's clock and history stay as they were.
        """
        load_run_state(self.run, self.manager.plugins, state, where="reg.load_state_dict",
                       writer="reg.state_dict()")


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, plugins: Iterable[object], *,
           fused: bool = True, world: Any = None,
           loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> TorchRegularizer:
    """Attach ``plugins`` to a model and its optimizer; fires ``on_train_begin``.

    :param model: the module being trained (DDP- or ``torch.compile``-wrapped is fine).
        Parameter names are those of the unwrapped module.
    :param optimizer: the optimizer that updates it; only parameters it updates are seen.
    :param plugins: plugin objects, e.g. ``[L2(1e-4), MaxNorm(3.0)]`` or
        ``regplug.build_plugins(config)``.
    :param fused: apply closed-form penalties as a fused gradient update (default); with
        ``False`` they are added to the returned loss and differentiated by autograd.
    :param world: the processes' vote collector; by default ``torch.distributed`` when it is
        initialised, else a single process.
    :param loss_fn: ``loss_fn(model(x), y) -> loss``, the loss of the loop; needed only by
        plugins that train on their own (:class:`~regplug.plugins.OverfitBatch`).

    Use it as a context manager, or call :meth:`TorchRegularizer.close` at the end.

    >>> import torch, regplug
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with attach(model, opt, [regplug.plugins.L2(0.5)]) as reg:
    ...     opt.zero_grad()
    ...     loss = reg.loss(model(torch.ones(1, 3)).sum())
    ...     loss.backward(); opt.step()
    >>> reg.run.step
    1
    """
    return TorchRegularizer(model, optimizer, plugins, fused=fused, world=world, loss_fn=loss_fn)

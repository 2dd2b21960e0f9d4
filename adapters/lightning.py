"""regplug in PyTorch Lightning: one callback, :class:`Regularize`, for the ``Trainer``.

::

    trainer = Trainer(max_epochs=50,
                      callbacks=[Regularize([L2(1e-4), EarlyStopping(patience=3)])])
    trainer.fit(model, train_loader, val_loader)

A thin event source over the PyTorch building blocks (:func:`regplug.adapters.torch.build_run`,
:class:`regplug.clock.EpochClock`, :class:`regplug.window.StepWindow`): it holds no
regularization logic, it tells the clock and the window what Lightning did. Works with
``lightning.pytorch`` and, where only that is installed, ``pytorch_lightning``.

Docs: docs/loops/lightning.md (which Lightning event drives which hook, and the pitfalls).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from regplug.clock import EpochClock, Wording
from regplug.errors import RegplugWarning, UsageError
from regplug.manager import PluginManager
from regplug.penalty import Penalty
from regplug.plugin import check_requirements
from regplug.run import Run
from regplug.validation import check_bool
from regplug.window import StepWindow

from .torch.build import GroupWatch, build_run, refuse_nothing_to_train, warn_double_decay
from .torch.grads import add_autograd_grads
from .torch.ops import TorchOps, without_grad
from .torch.results import RunResults
from .torch.state import load_run_state, run_state_dict

__all__ = ["Regularize", "LIGHTNING_WORDING"]


def _lightning() -> Any:
    """``lightning.pytorch``, else ``pytorch_lightning``: whichever is installed."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("regplug.adapters.lightning needs Lightning: pip install "
                      "'regplug[lightning]' (or pytorch_lightning)")


if TYPE_CHECKING:
    from lightning.pytorch import Callback, LightningModule, Trainer
else:
    _pl = _lightning()
    Callback, LightningModule, Trainer = _pl.Callback, _pl.LightningModule, _pl.Trainer

def _nothing() -> None:
    return None


#: How this adapter's messages name the user's calls.
LIGHTNING_WORDING = Wording(
    adapter="Regularize",
    step="optimizer.step()",
    loss_call="self.manual_backward(loss)",
    loss_fix="In manual optimization call self.manual_backward(loss), not loss.backward(), "
             "before opt.step(): Lightning's on_before_backward is where regplug sees the loss.",
    validation_hint="log them in validation_step with self.log('val_loss', loss)",
    close_hint="one Regularize serves one fit at a time",
    logs_call="Regularize (trainer.callback_metrics)",
)


class Regularize(RunResults, Callback):
    """regplug plugins in a Lightning ``Trainer``: ``callbacks=[Regularize([...])]``.

    :param plugins: plugin objects, e.g. ``[L2(1e-4), EarlyStopping(patience=3)]``.
    :param fused: apply closed-form penalties as a fused gradient update (default); with
        ``False`` every penalty is differentiated by autograd (same result, slower).
    :param optimizer: which of the LightningModule's optimizers this callback serves (an
        index into those ``configure_optimizers`` returns); needed when there are several.

    >>> from regplug.plugins import L2
    >>> Regularize([L2(1e-4)])
    Regularize([L2(l2=0.0001)])
    """

    def __init__(self, plugins: Iterable[object], *, fused: bool = True,
                 optimizer: int | None = None) -> None:
        super().__init__()
        self.manager = PluginManager(plugins)
        self.fused = check_bool("Regularize", "fused", fused)
        if optimizer is not None and (isinstance(optimizer, bool)
                                      or not isinstance(optimizer, int) or optimizer < 0):
            raise TypeError(f"Regularize: 'optimizer' must be None or the index (an int >= 0) "
                            f"of one of the LightningModule's optimizers, got {optimizer!r}")
        self.optimizer_index = optimizer
        check_requirements(self.manager.plugins, {
            "eager_step": None, "dropout_layers": None, "model_state": None,
            "trial_training": "the Lightning callback has no loss function of its own; run "
                              "the check in a plain loop with regplug.adapters.torch.attach"},
            adapter="the Lightning adapter")
        self.run: Run | None = None
        self.clock: EpochClock | None = None
        self.window: StepWindow | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._ops: TorchOps | None = None
        self._hook: Any = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, before the run
        self._loss_terms: list[Penalty] = []  # this window's penalties that go via autograd
        self._batch_open = False
        self._stepping = False  # between on_before_optimizer_step and the update
        self._before_step: Callable[[], None] = _nothing
        self._after_step: Callable[[], None] = _nothing
        self._trainer: Any = None  # the Trainer whose fit this callback serves now
        self._groups: GroupWatch | None = None
        self._micro_batches = 0  # losses backpropagated in this window

    def __repr__(self) -> str:
        plugins = ", ".join(repr(p) for p in self.manager.plugins)
        extra = "" if self.optimizer_index is None else f", optimizer={self.optimizer_index}"
        return f"Regularize([{plugins}]{extra})"

    @property
    def state_key(self) -> str:
        if self.optimizer_index is None:
            return type(self).__qualname__
        # Lightning's own format for a callback's key with arguments, written out (its helper
        # for it is private).
        return f"{type(self).__qualname__}{{'optimizer': {self.optimizer_index}}}"

    # -- the fit -------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._trainer is not None and self.clock is not None and self.clock.active:
            # Refused before anything changes: the running fit keeps its run and hook.
            raise UsageError(
                f"{self._label}: this callback is already in use by a running fit; one "
                "Regularize per Trainer: give each fit that runs at the same time its own "
                "Regularize([...]) with its own plugin objects")
        optimizer = self._pick_optimizer(trainer)
        run = build_run(pl_module, optimizer)
        refuse_nothing_to_train(run, self.manager.plugins, adapter=self._label)
        warn_double_decay(run, optimizer, self.manager.plugins, adapter="Regularize")
        self._trainer = trainer
        self.run, self._optimizer = run, optimizer
        self._groups = GroupWatch(pl_module, optimizer, run)
        self._micro_batches = 0
        self._ops = run.ops if isinstance(run.ops, TorchOps) else None
        self.clock = EpochClock(run, self.manager, LIGHTNING_WORDING)
        self.window = StepWindow(self.clock, fused=self.fused)
        # What the update hooks run, with autograd off (cheaper than a no_grad() block).
        self._before_step = without_grad(self.window.before_step)
        self._after_step = without_grad(self.window.after_step)
        self._loss_terms, self._batch_open, self._stepping = [], False, False
        self._hook = optimizer.register_step_post_hook(self._after_update)
        if self._pending is None and trainer.ckpt_path is not None \
                and (trainer.current_epoch or trainer.global_step):
            self._resumed_without_state(trainer, run)
        try:
            self.clock.train_begin()
        except BaseException:
            self._detach()
            raise
        if self._pending is not None:
            state, self._pending = self._pending, None
            path = trainer.ckpt_path
            where = f"{self._label}.load_state_dict" + (
                "" if path is None else f", resuming trainer.fit(ckpt_path={str(path)!r})")
            load_run_state(run, self.manager.plugins, state, where=where,
                           writer=f"{self._label}.state_dict()")

    def _resumed_without_state(self, trainer: Trainer, run: Run) -> None:
        """The fit resumes from a checkpoint that holds no state of this callback (written
        before Regularize was added): regplug's clock starts at Lightning's epoch and step,
        not at 0, and the plugins start fresh there (said once, as a warning)."""
        run.epoch, run.step = int(trainer.current_epoch), int(trainer.global_step)
        path = trainer.ckpt_path
        warnings.warn(
            f"{self._label}: the fit resumes at epoch {run.epoch} (step {run.step}) from "
            f"{str(path)!r}, but the checkpoint holds no state of {self._label} (it was written "
            "without it): the plugins start fresh there (schedules at that epoch, early "
            "stopping's patience and best value from scratch)", RegplugWarning, stacklevel=2)

    def _pick_optimizer(self, trainer: Trainer) -> torch.optim.Optimizer:
        optimizers = list(trainer.optimizers)
        index = self.optimizer_index
        if not optimizers:
            raise UsageError("Regularize: the LightningModule has no optimizer "
                             "(configure_optimizers returned none), so there is nothing to "
                             "regularize")
        if index is None:
            if len(optimizers) > 1:
                raise UsageError(
                    f"Regularize: the LightningModule has {len(optimizers)} optimizers; a "
                    f"Regularize serves one. Pass Regularize(plugins, optimizer=i) with i in "
                    f"0..{len(optimizers) - 1}, one callback per optimizer to regularize")
            index = 0
        if index >= len(optimizers):
            raise UsageError(f"Regularize: optimizer={index}, but the LightningModule has "
                             f"{len(optimizers)} optimizer(s) (indices 0..{len(optimizers) - 1})")
        optimizer = optimizers[index]
        while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer,
                                                                           "optimizer"):
            optimizer = optimizer.optimizer  # a LightningOptimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(f"Regularize: optimizer {index} is a {type(optimizer).__name__}, "
                             f"not a torch.optim.Optimizer")
        return optimizer

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self._batch_open and self.clock is not None:
            self._batch_open = True
            self.clock.batch_begin()

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule,
                           loss: torch.Tensor) -> None:
        window = self.window
        if window is None or not getattr(loss, "requires_grad", False):
            return
        self._micro_batches += 1
        if window.loss_seen:
            return
        if self._groups is not None:
            self._groups.check()
        self._loss_terms = window.collect_penalties(loss)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: Any) -> None:
        if self.window is None or optimizer is not self._optimizer:
            return
        if self._stepping:
            raise UsageError(
                f"Regularize: {type(optimizer).__name__} evaluated Lightning's closure more "
                "than once in one step (as LBFGS does); regplug cannot add its penalties to "
                "the objective the closure returns. Write the penalty into training_step, "
                "or use regplug.adapters.torch.attach in a plain loop.")
        self.window.check_loss()
        self._stepping = True
        if self._groups is not None:
            self._groups.check()
        # Lightning divides every micro-batch's loss by accumulate_grad_batches, also in a
        # short last window: the penalty written in training_step enters that one at n/k.
        k = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        n = self._micro_batches
        scale = n / k if pl_module.automatic_optimization and 0 < n < k else 1.0
        self._set_in_update(True)
        if scale == 1.0:
            if self._loss_terms:
                assert self.run is not None
                add_autograd_grads(self.run.params, self._loss_terms)
        else:
            self._scaled_penalty_grads(scale)
        self._loss_terms = []
        self._before_step()

    @torch.no_grad()
    def _scaled_penalty_grads(self, scale: float) -> None:
        """Add this window's penalties' gradients at ``scale`` times their strength."""
        assert self.run is not None
        assert self.window is not None
        tensors = [p.tensor for p in self.run.params]
        before = [None if t.grad is None else t.grad.clone() for t in tensors]
        if self._loss_terms:
            add_autograd_grads(self.run.params, self._loss_terms)
        self.window.add_penalty_grads()
        for tensor, grad in zip(tensors, before, strict=True):
            if tensor.grad is None:
                continue
            if grad is None:
                tensor.grad.mul_(scale)
            else:  # grad + scale·(penalty's gradient)
                tensor.grad.sub_(grad).mul_(scale).add_(grad)

    def _after_update(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        window = self.window
        if window is None:
            return
        if not self._stepping:
            raise UsageError(
                "Regularize: the optimizer stepped without Lightning's on_before_optimizer_step "
                "(the raw optimizer's step() was called), so its penalties and on_before_step "
                "plugins were skipped for this update; call opt.step() on the optimizers from "
                "self.optimizers()")
        try:
            self._after_step()
        finally:
            self._end_update()

    def _end_update(self) -> None:
        self._micro_batches = 0
        self._stepping = False
        self._set_in_update(False)
        self._batch_open = False
        self._loss_terms = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._stepping and self.window is not None:
            # on_before_optimizer_step without an update: GradScaler skipped a step with
            # non-finite gradients. The next micro-batch opens a new window.
            self.window.reset()
            self._end_update()

    def _set_in_update(self, value: bool) -> None:
        if self._ops is not None:
            self._ops.in_update = value

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation(trainer, "on_validation_begin")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation(trainer, "on_validation_end")

    def _validation(self, trainer: Trainer, hook: str) -> None:
        """A validation pass of the fit (not the sanity check before the run starts)."""
        if self.clock is not None and self.clock.active and not trainer.sanity_checking:
            without_grad(self.manager.caller(hook))(run=self.run)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.clock is None or not self.clock.active:
            return
        penalties = self.penalties()
        for name, value in penalties.items():
            pl_module.log(name, value, on_step=False, on_epoch=True,
                          sync_dist=trainer.world_size > 1)
        logs: dict[str, Any] = {**trainer.callback_metrics, **penalties}
        if self.clock.epoch_end(logs):
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer is self._trainer:
            self._end(None)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        if trainer is self._trainer:  # not a second fit this callback refused
            self._end(exception)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer is self._trainer or self._trainer is None:
            self._detach()

    def _end(self, exception: BaseException | None) -> None:
        try:
            if self.clock is not None and self.clock.active:
                assert self.run is not None
                self.run.exception = exception
                self.clock.train_end()
        finally:
            self._detach()

    def _detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._set_in_update(False)
        self._stepping = False
        self._trainer = None

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The run's clock and history and every plugin's state (Lightning stores it in its
        checkpoints)."""
        if self.run is None:
            return dict(self._pending or {})
        return run_state_dict(self.run, self.manager.plugins)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from a checkpoint; applied when the fit starts (Lightning loads callback
        states before it)."""
        if not isinstance(state_dict, Mapping):
            # Lightning hands over whatever the checkpoint holds under this callback's key.
            raise ValueError(f"{self._label}.load_state_dict: not a checkpoint written by "
                             f"{self._label}.state_dict() (a {type(state_dict).__name__}, not a "
                             f"dict); nothing was loaded")
        if not state_dict:
            return
        if self.run is not None and self.clock is not None and self.clock.active:
            load_run_state(self.run, self.manager.plugins, dict(state_dict),
                           where=f"{self._label}.load_state_dict",
                           writer=f"{self._label}.state_dict()")
        else:
            self._pending = dict(state_dict)

    @property
    def _label(self) -> str:
        """This callback in messages; the optimizer index tells several callbacks apart."""
        if self.optimizer_index is None:
            return "Regularize"
        return f"Regularize(optimizer={self.optimizer_index})"

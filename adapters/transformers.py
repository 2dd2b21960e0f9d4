"""regplug in the Hugging Face ``Trainer``: one callback, :class:`Regularize`.

::

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[Regularize([DecoupledWeightDecay(0.01),
                                             EarlyStopping(monitor="eval_loss", patience=3)])])
    trainer.train()

A thin event source over the PyTorch building blocks (:func:`regplug.adapters.torch.build_run`,
:class:`regplug.clock.EpochClock`, :class:`regplug.window.StepWindow`); a regplug epoch is one
evaluation. :class:`PenaltiesBeforeClipping`: the penalty-in-the-loss meaning under clipping.

Docs: docs/loops/transformers.md (which Trainer event drives which hook, and the pitfalls).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from regplug.clock import EpochClock, Wording, frame_running
from regplug.errors import RegplugWarning, UsageError
from regplug.manager import PluginManager
from regplug.plugin import check_requirements
from regplug.run import Run
from regplug.validation import check_bool
from regplug.window import StepWindow

from .torch.build import GroupWatch, build_run, refuse_nothing_to_train, warn_double_decay
from .torch.grads import add_autograd_grads
from .torch.loop import hookable_optimizer
from .torch.ops import TorchOps, without_grad
from .torch.results import RunResults
from .torch.state import load_run_state, run_state_dict

try:
    import transformers
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("regplug.adapters.transformers needs the Hugging Face Trainer: pip install "
                      "'regplug[transformers]' (transformers and accelerate)") from err

if TYPE_CHECKING:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
else:
    TrainerCallback, TrainerControl = transformers.TrainerCallback, transformers.TrainerControl
    TrainerState, TrainingArguments = transformers.TrainerState, transformers.TrainingArguments

__all__ = ["Regularize", "PenaltiesBeforeClipping", "TRANSFORMERS_WORDING"]

#: Training logs of the Trainer passed on to the plugins (by their Trainer names).
TRAIN_LOG_KEYS = ("loss", "grad_norm", "learning_rate")

#: How this adapter's messages name the user's calls.
TRANSFORMERS_WORDING = Wording(
    adapter="Regularize",
    step="the Trainer's optimizer step",
    loss_call="the Trainer's training step",
    loss_fix="Let the Trainer run the optimizer step (regplug's callback hands the penalties "
             "to it in on_pre_optimizer_step).",
    validation_hint="pass an eval_dataset to the Trainer and set eval_strategy='epoch' (the "
                    "logs are the evaluation's metrics: 'eval_loss', also as 'val_loss')",
    close_hint="one Regularize serves one train() at a time",
    logs_call="Regularize (the Trainer's evaluation metrics)",
)


#: The file regplug writes into each checkpoint folder the Trainer saves (``checkpoint-N``): the
#: run's clock and history and every plugin's state, read back by
#: ``trainer.train(resume_from_checkpoint=...)``.
STATE_FILE = "regplug_state.pt"


class Regularize(RunResults, TrainerCallback):
    """regplug plugins in a Hugging Face ``Trainer``: ``callbacks=[Regularize([...])]``.

    :param plugins: plugin objects, e.g. ``[DecoupledWeightDecay(0.01), EarlyStopping()]``.
    :param fused: apply closed-form penalties as a fused gradient update (default); with
        ``False`` every penalty is differentiated by autograd (same result, slower).

    >>> from regplug.plugins import L2
    >>> Regularize([L2(1e-4)])
    Regularize([L2(l2=0.0001)])
    """

    def __init__(self, plugins: Iterable[object], *, fused: bool = True) -> None:
        self.manager = PluginManager(plugins)
        self.fused = check_bool("Regularize", "fused", fused)
        check_requirements(self.manager.plugins, {
            "eager_step": None, "dropout_layers": None, "model_state": None,
            "trial_training": "the Trainer callback has no loss function of its own; run the "
                              "check in a plain loop with regplug.adapters.torch.attach"},
            adapter="the Hugging Face Trainer adapter")
        self.run: Run | None = None
        self.clock: EpochClock | None = None
        self.window: StepWindow | None = None
        self._ops: TorchOps | None = None
        self._accelerated: Any = None  # the Trainer's AcceleratedOptimizer
        self._batch_open = False
        self._grads_in = False  # this window's penalties' gradients have joined
        self._steps_at_epoch_end = 0
        self._train_logs: dict[str, float] = {}
        self._frame: FrameType | None = None  # the training loop of the train() it serves
        self._groups: GroupWatch | None = None
        self._validating = False  # on_validation_begin fired, its evaluation not done yet

    def __repr__(self) -> str:
        return f"Regularize([{', '.join(repr(p) for p in self.manager.plugins)}])"

    # -- the run -------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        frame = _training_loop_frame()
        if self.clock is not None and self.clock.active:
            if self._training():
                raise UsageError(
                    "Regularize: this callback is already in use by a Trainer.train() that "
                    "is running; one Regularize per Trainer: give each Trainer that trains at "
                    "the same time its own Regularize([...]) with its own plugin objects")
            self.clock.abandon()  # the previous train() raised: no on_train_end came
        model, accelerated = kwargs.get("model"), kwargs.get("optimizer")
        if not isinstance(model, torch.nn.Module) or accelerated is None:
            raise UsageError("Regularize: the Trainer gave its callbacks no model or optimizer "
                             "at train begin; regplug needs both (a Trainer subclass must keep "
                             "Trainer.train's callback calls)")
        optimizer = hookable_optimizer(accelerated)  # the torch optimizer inside accelerate's
        run = build_run(model, optimizer)
        refuse_nothing_to_train(run, self.manager.plugins, adapter="Regularize")
        warn_double_decay(run, optimizer, self.manager.plugins, adapter="Regularize")
        self._groups = GroupWatch(model, optimizer, run)
        self.run, self._accelerated = run, accelerated
        self._ops = run.ops if isinstance(run.ops, TorchOps) else None
        self.clock = EpochClock(run, self.manager, TRANSFORMERS_WORDING)
        self.window = StepWindow(self.clock, fused=self.fused)
        self._before_step = without_grad(self.window.before_step)
        self._after_step = without_grad(self.window.after_step)
        self._add_fused_grads = without_grad(self.window.add_penalty_grads)
        self._batch_open = self._grads_in = self._validating = False
        self._steps_at_epoch_end, self._train_logs = 0, {}
        self._frame = frame
        if frame is not None:  # a train() an exception ended frees its plugins at once
            self.clock.alive = self._training
        resumed = _resumed_from(frame)
        saved = None if resumed is None else Path(resumed) / STATE_FILE
        if saved is not None and not saved.is_file() and state.global_step:
            _warn_resumed_without_state(run, saved.parent, state)
        self.clock.train_begin()
        if saved is not None and saved.is_file():
            load_run_state(run, self.manager.plugins, torch.load(saved, weights_only=True),
                           where=f"Regularize, resuming train(resume_from_checkpoint="
                                 f"{str(saved.parent)!r})", writer="Regularize")
            self._steps_at_epoch_end = run.step

    def _training(self) -> bool:
        """Whether the train() this run serves is still running (False once an exception
        ended it: the Trainer calls no callback then)."""
        return self._frame is not None and frame_running(self._frame)

    def _end_if_gone(self) -> None:
        """End the run of a train() an exception ended (no on_train_end came): a later
        ``trainer.evaluate()`` is no epoch of it."""
        if self.clock is not None and self.clock.active and self._frame is not None \
                and not frame_running(self._frame):
            self.clock.abandon()
            self._set_in_update(False)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: Any) -> None:
        if self.clock is not None and self.clock.active and not self._batch_open:
            self._batch_open = True
            self.clock.batch_begin()

    def add_penalty_grads(self) -> None:
        """Add this step's penalties' gradients now (once per optimizer step): fire
        ``on_loss`` and add the fused penalties' gradients and the autograd ones'.

        :class:`PenaltiesBeforeClipping` calls it after the last micro-batch's backward pass;
        otherwise ``on_pre_optimizer_step`` does.
        """
        window = self.window
        if window is None or self.clock is None or not self.clock.active or self._grads_in:
            return
        self._grads_in = True
        if self._groups is not None:  # a parameter group added since the last step joins
            self._groups.check()
        terms = window.collect_penalties(None)  # those without a closed form (or fused=False)
        if terms:
            assert self.run is not None
            add_autograd_grads(self.run.params, terms)
        self._add_fused_grads()

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> None:
        if self.window is None or self.clock is None or not self.clock.active:
            return
        self.add_penalty_grads()
        self._set_in_update(True)
        self._before_step()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, **kwargs: Any) -> None:
        window = self.window
        if window is None or self.clock is None or not self.clock.active:
            return
        try:
            if getattr(self._accelerated, "step_was_skipped", False):
                window.reset()  # GradScaler found inf/NaN gradients: no update happened
            else:
                self._after_step()
        finally:
            self._set_in_update(False)
            self._batch_open = self._grads_in = False

    def _set_in_update(self, value: bool) -> None:
        if self._ops is not None:
            self._ops.in_update = value

    # -- epochs --------------------------------------------------------------------------
    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.clock is None or not self.clock.active or not logs or "loss" not in logs:
            return
        self._train_logs.update({k: logs[k] for k in TRAIN_LOG_KEYS if k in logs})

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._end_if_gone()
        self._validation_ends()
        self._epoch_end(control, metrics or {})

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        self._validation_begins(control)

    def _validation_begins(self, control: TrainerControl) -> None:
        """The Trainer evaluates next (its flow callback, called first, decided so)."""
        if (control.should_evaluate and not self._validating and self.clock is not None
                and self.clock.active):
            self._validating = True
            without_grad(self.manager.caller("on_validation_begin"))(run=self.run)

    def _validation_ends(self) -> None:
        if self._validating:
            self._validating = False
            without_grad(self.manager.caller("on_validation_end"))(run=self.run)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._validation_begins(control)
        strategy = getattr(args, "eval_strategy", getattr(args, "evaluation_strategy", "no"))
        if strategy == "no":  # no evaluation will come: the Trainer's epoch is regplug's
            self._epoch_end(control, {})

    def _epoch_end(self, control: TrainerControl, metrics: dict[str, Any]) -> None:
        run, clock = self.run, self.clock
        if run is None or clock is None or not clock.active:
            return  # trainer.evaluate() outside train()
        if run.step == self._steps_at_epoch_end:
            return  # no training since the previous epoch's end (eval_on_start)
        self._steps_at_epoch_end = run.step
        # Numbers only: compute_metrics may return anything (a confusion matrix), and what
        # is not a number no plugin can monitor (a monitor naming it is warned about).
        logs: dict[str, Any] = {k: v for k, v in metrics.items()
                                if k != "epoch" and _is_number(v)}
        for key in list(logs):
            if key.startswith("eval_"):
                logs.setdefault("val_" + key[len("eval_"):], logs[key])
        for key, value in {**self._train_logs, **self.penalties()}.items():
            logs.setdefault(key, value)
        self._train_logs = {}
        if clock.epoch_end(logs):
            control.should_training_stop = True

    # -- checkpoints -----------------------------------------------------------------------
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        """The Trainer saved ``checkpoint-<step>``: regplug's state goes beside it
        (:data:`STATE_FILE`), written by the main process only, as the Trainer's own files."""
        if self.run is None or self.clock is None or not self.clock.active \
                or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir or ".") / f"checkpoint-{state.global_step}"
        if not folder.is_dir():  # a hyperparameter search saves under output_dir/run-<id>
            warnings.warn(f"Regularize: no checkpoint folder {str(folder)!r} to save regplug's "
                          f"state into (the Trainer saved elsewhere); a resumed train() starts "
                          f"the plugins afresh", RegplugWarning, stacklevel=2)
            return
        torch.save(self.state_dict(), folder / STATE_FILE)

    def state_dict(self) -> dict[str, Any]:
        """The run's clock and history and every plugin's state (what :meth:`on_save` writes
        into each checkpoint; ``torch.load`` reads it with ``weights_only=True``)."""
        if self.run is None:
            raise UsageError("Regularize.state_dict: no training has begun")
        return run_state_dict(self.run, self.manager.plugins)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        try:
            self._validation_ends()
            if self.clock is not None and self.clock.active:
                self.clock.train_end()
        finally:
            self._set_in_update(False)


def _training_loop_frame() -> FrameType | None:
    """The frame of the Trainer's training loop this callback is called from (its
    ``_inner_training_loop``, else ``train``), or ``None`` where neither is on the stack."""
    for name in ("_inner_training_loop", "train"):
        code = getattr(getattr(transformers.Trainer, name, None), "__code__", None)
        frame: FrameType | None = sys._getframe(1)
        while code is not None and frame is not None:
            if frame.f_code is code:
                return frame
            frame = frame.f_back
    return None


def _resumed_from(frame: FrameType | None) -> str | Path | None:
    """The checkpoint folder the Trainer's training loop resumes from, if any (``train()``
    turned ``resume_from_checkpoint=True`` into the last one's path before the loop)."""
    if frame is None:
        return None
    path = frame.f_locals.get("resume_from_checkpoint")
    return path if isinstance(path, (str, Path)) else None


def _warn_resumed_without_state(run: Run, path: str | Path, state: TrainerState) -> None:
    """A checkpoint without regplug's state (written without Regularize): the clock starts
    at the Trainer's step, the plugins afresh (said once, as a warning)."""
    run.step = int(state.global_step)
    warnings.warn(
        f"Regularize: train() resumes at step {run.step} from {str(path)!r}, but the checkpoint "
        f"holds no {STATE_FILE} (it was written without Regularize): the plugins start fresh "
        "there (schedules at that step, early stopping's patience and best value from scratch)",
        RegplugWarning, stacklevel=3)


def _is_number(value: object) -> bool:
    """A real number as an evaluation metric: a Python or NumPy number, or a tensor/array
    holding one element (of any shape)."""
    shape = getattr(value, "shape", ())
    if isinstance(value, bool) or (shape not in ((), None) and math.prod(shape) != 1):
        return False
    return isinstance(value, (int, float)) or (hasattr(value, "dtype")
                                                and hasattr(value, "__float__"))


class PenaltiesBeforeClipping:
    """Mix into a ``Trainer`` class so that the penalties of its :class:`Regularize`
    callbacks join the gradients *before* the Trainer clips them: the weights of the
    penalty added to the loss in ``compute_loss``, with ``max_grad_norm`` as it is.

    ::

        class RegularizedTrainer(PenaltiesBeforeClipping, Trainer):
            pass

        trainer = RegularizedTrainer(model=model, args=args, train_dataset=train,
                                     callbacks=[Regularize([L2(1e-4)])])

    After the backward pass of the last micro-batch of each optimizer step (accelerate's
    ``sync_gradients``), :meth:`training_step` adds the penalties' gradients (once per step,
    at full strength); ``on_pre_optimizer_step`` then adds nothing more. Not with fp16 mixed
    precision: the gradients are still multiplied by the ``GradScaler``'s scale there (use
    bf16, or the callback alone).
    """

    accelerator: Any
    callback_handler: Any

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss: torch.Tensor = super().training_step(*args, **kwargs)  # type: ignore[misc]
        if self.accelerator.sync_gradients:
            callbacks = [cb for cb in self.callback_handler.callbacks
                         if isinstance(cb, Regularize)]
            if callbacks and getattr(self.accelerator, "scaler", None) is not None:
                raise UsageError(
                    "PenaltiesBeforeClipping: with fp16 mixed precision the gradients are "
                    "still scaled by the GradScaler after backward, so a penalty's gradient "
                    "cannot join them exactly before clipping; train in bf16, or use the "
                    "plain Trainer (the penalties then join after clipping)")
            for callback in callbacks:
                callback.add_penalty_grads()
        return loss

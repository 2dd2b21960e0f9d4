"""The hooks a regplug plugin can implement — the one file a plugin author needs.

A plugin is any object with methods named after these hooks, preferably marked with
``@regplug.hookimpl``; each method may take any *subset* of its spec's arguments (pluggy
passes them by name). The adapters call the hooks; plugins never call each other, and act on
the framework only through ``run`` (:class:`regplug.Run`: parameter handles, ``ops``, ``stop``).
Each spec below says when it fires in each of the four loops — a plain PyTorch loop, Keras
``model.fit``, the Lightning ``Trainer``, the Hugging Face ``Trainer``.

Several plugins implementing one hook are called in the order the user listed them, in every
hook and every adapter (as Keras, Lightning and fastai call their callbacks), so a plugin can
read what an earlier one added; ``@hookimpl(tryfirst=True)``/``(trylast=True)`` move one to
the front or the back. Results combine as each spec says, in that order.

Docs: docs/clock-and-window.md (the table of when each hook fires in each loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .penalty import Penalty
    from .run import Run

PROJECT = "regplug"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def on_train_begin(run: Run) -> None:
    """Training is about to start; no step has run yet.

    :param run: the run, with its parameters, ops and clock (``run.step == 0`` on a fresh
        run, or the restored counters after :meth:`load_state_dict`).

    Fires once per training run. PyTorch loop: at ``attach(...)`` (or entering its ``with``
    block). Keras: the callback's ``on_train_begin``, so once per ``fit`` call. Lightning:
    ``on_train_start``, once the optimizer exists (a checkpoint's regplug state is applied
    right after). Hugging Face: the callback's ``on_train_begin``, once per ``train()``.
    Use it to look at the model, take snapshots, validate that the selection matches what the
    plugin expects, or run a sanity check. Return values are ignored.
    """


@hookspec
def on_epoch_begin(run: Run, epoch: int) -> None:
    """An epoch is about to start.

    :param run: the run.
    :param epoch: index of the epoch about to start, from 0 (equal to ``run.epoch``).

    PyTorch loop: fires just before the first *training-mode* forward pass of the epoch (a
    module forward pre-hook), so changes made here — e.g. dropout rates — apply to that very
    batch. Keras: the callback's ``on_epoch_begin``. Lightning: ``on_train_batch_start`` of
    the epoch's first batch. Hugging Face: ``on_step_begin`` of the first optimizer step after
    the previous evaluation (a regplug epoch there is one evaluation period). Return values
    are ignored.
    """


@hookspec
def on_batch_begin(run: Run, step: int) -> None:
    """A training batch is about to start (before its forward pass).

    :param run: the run; its scheduled values (``run.scalar``) are already at this step.
    :param step: index of the optimizer update this batch belongs to (equal to ``run.step``).

    Runs as Python before every training batch, outside any compiled step — the place for
    per-step changes the compiled step must read from a variable, e.g. a dropout rate
    following a schedule step by step (set ``DropoutHandle.rate`` here). Once per optimizer
    update, at its first micro-batch. PyTorch loop: a module forward pre-hook on the first
    training-mode forward after an optimizer step (installed only when a plugin implements
    this hook or ``on_epoch_begin``). Keras: the callback's ``on_train_batch_begin`` (with
    ``steps_per_execution=k``, once per k updates). Lightning: ``on_train_batch_start`` of the
    first micro-batch after an optimizer step. Hugging Face: ``on_step_begin``. Keep it cheap:
    it runs at every step. Return values are ignored.
    """


@hookspec
def on_loss(run: Run, loss: Any) -> Penalty | None:
    """The loss of a batch has been computed; gradients have not.

    :param run: the run.
    :param loss: the framework's scalar loss (a ``torch.Tensor``; a symbolic tensor inside
        Keras' traced train step). Read it, never modify it in place.
    :return: a :class:`regplug.Penalty` to add to the objective, or ``None``.

    All non-``None`` results are added to the loss. The adapter decides *how*: a penalty
    that knows its closed-form gradient (L1, L2, elastic net) may be applied as a fused
    gradient update right before the optimizer step — numerically the same as adding its
    value to the loss, several times cheaper — while any other penalty is added to the loss
    and differentiated by the framework.

    PyTorch loop: exactly once per optimizer update, at the first ``reg.loss(loss)`` after a
    step (later calls in the same gradient-accumulation window return the loss unchanged, so
    accumulation never multiplies a penalty). Lightning: ``on_before_backward`` of the first
    micro-batch of each optimizer update (``self.manual_backward(loss)`` in manual
    optimization), likewise once per update. Hugging Face: ``on_pre_optimizer_step``, once
    per update, with ``loss=None`` (its callbacks never see the loss). Keras: while the train
    (and validation) step is traced — so ``val_loss`` includes the penalties, as with Keras'
    own regularizers — and once at ``fit`` start with ``loss=None`` to learn the penalties'
    names. The body therefore runs once per trace, not per step: it must use only ``run.ops``
    and values that live in framework variables (strengths obtained from ``run.scalar``),
    never Python branching on tensors, and must not count calls. Return the same penalty
    every time.
    """


@hookspec
def on_before_step(run: Run, step: int) -> None:
    """Gradients are final and the optimizer is about to update the parameters.

    :param run: the run.
    :param step: index of the update about to happen, from 0 (equal to ``run.step``). In a
        compiled Keras step this is the value at trace time: do not compute with it there.

    PyTorch loop: an optimizer step pre-hook, i.e. after ``loss.backward()``, gradient
    clipping and ``GradScaler`` unscaling, inside ``optimizer.step()`` (skipped with the step
    itself when ``GradScaler`` finds non-finite gradients). Keras: inside the compiled train
    step, immediately before the optimizer applies the gradients. Lightning:
    ``on_before_optimizer_step``, after the closure's backward pass and the unscaling but
    *before* Lightning clips them (``gradient_clip_val``). Hugging Face:
    ``on_pre_optimizer_step``, *after* the Trainer clipped them (``max_grad_norm``). In every
    loop the fused penalties' gradients are already in. Plugins change gradients or
    parameters in place through ``run.ops`` (decoupled weight decay shrinks the weights here,
    exactly as ``torch.optim.AdamW`` does). Return values are ignored.
    """


@hookspec
def on_step(run: Run, step: int) -> None:
    """The optimizer has updated the parameters.

    :param run: the run.
    :param step: index of the update that just happened, from 0 (``run.step`` is already
        ``step + 1``).

    PyTorch loop and Lightning: the optimizer's step post-hook (Lightning has no callback
    method right after the update). Keras: inside the compiled train step, after the
    optimizer update (with ``steps_per_execution=k`` it still fires after every one of the k
    updates, because it is part of the traced step). Hugging Face: ``on_optimizer_step``. A
    step that ``GradScaler`` skipped (non-finite gradients) has no ``on_step``. Projections
    belong here: proximal operators (soft-thresholding), norm constraints. Change parameters
    in place through ``run.ops``. Return values are ignored.
    """


@hookspec
def on_validation_begin(run: Run) -> None:
    """Validation (or evaluation) of the model is about to run during training.

    :param run: the run.

    Fires before each validation pass that happens while training, so a plugin can put
    other weights in for it (weight averaging evaluates the averaged weights, and every
    metric of that pass, the one early stopping monitors included, comes from them);
    :func:`on_validation_end` fires after it. PyTorch loop: entering ``with
    reg.validation():`` (wrap the validation code in it). Keras: the callback's
    ``on_test_begin`` inside ``fit`` (validation data given). Lightning:
    ``on_validation_start`` during ``fit`` (not the sanity check before it). Hugging Face:
    ``on_step_end`` or ``on_epoch_end`` when the Trainer is about to evaluate
    (``control.should_evaluate``). Python code, outside any compiled step. Return values are
    ignored.
    """


@hookspec
def on_validation_end(run: Run) -> None:
    """The validation pass that :func:`on_validation_begin` announced has finished.

    :param run: the run.

    Put back what ``on_validation_begin`` changed; fires before ``on_epoch_end`` sees the
    validation metrics, and before a trainer saves a checkpoint. PyTorch loop: leaving ``with
    reg.validation():`` (also by an exception). Keras: ``on_test_end`` inside ``fit``.
    Lightning: ``on_validation_end`` (before Lightning's own ``EarlyStopping`` and
    ``ModelCheckpoint`` act: they run after the other callbacks). Hugging Face:
    ``on_evaluate``, before the epoch's end is processed. Return values are ignored.
    """


@hookspec
def on_epoch_end(run: Run, epoch: int, logs: dict[str, float]) -> None:
    """An epoch, including its validation, has finished.

    :param run: the run; ``run.history`` already contains this epoch's ``logs``.
    :param epoch: index of the epoch that finished, from 0.
    :param logs: metrics of the epoch as plain floats, with each penalty's value under its
        own name: whatever the PyTorch loop passed to ``reg.epoch_end(logs)``; Keras' logs
        (``loss``, ``val_loss``, metrics); Lightning's ``trainer.callback_metrics``; the
        Hugging Face evaluation's metrics (``eval_loss``, also as ``val_loss``) and the
        training logs since the previous evaluation. Plugins may add entries.

    PyTorch loop: ``reg.epoch_end(logs)``. Keras: the callback's ``on_epoch_end``, after
    validation. Lightning: ``on_train_epoch_end``, after the epoch's validation. Hugging Face:
    ``on_evaluate`` during training (one regplug epoch per evaluation), or the Trainer's
    ``on_epoch_end`` with ``eval_strategy="no"``. To vote for stopping, call
    ``run.stop("reason")``; the run stops when any plugin votes (on several processes: the
    logs are averaged first, and when any process votes, all stop together). Return values
    are ignored.
    """


@hookspec
def on_train_end(run: Run) -> None:
    """Training has finished, by exhausting its epochs or by a stop request.

    :param run: the run; ``run.stop_requests`` says why it stopped, if it did, and
        ``run.exception`` is the exception that ended it, if one did (PyTorch loop: leaving
        the ``with`` block by an exception; Lightning: ``on_exception``; Keras and Hugging
        Face do not call this hook then). Leave the model as the error left it in that case.

    PyTorch loop: ``reg.close()`` or leaving the ``with`` block. Keras: ``on_train_end`` of
    each ``fit``. Lightning: ``on_train_end`` (or ``on_exception``). Hugging Face:
    ``on_train_end``, after the Trainer's ``load_best_model_at_end``. Restore best weights
    and report here. Return values are ignored.
    """


HOOK_NAMES: tuple[str, ...] = (
    "on_train_begin", "on_epoch_begin", "on_batch_begin", "on_loss", "on_before_step", "on_step",
    "on_validation_begin", "on_validation_end", "on_epoch_end", "on_train_end",
)


def implemented_hooks(plugin: object) -> tuple[str, ...]:
    """The hooks a plugin (an instance, a class, or a module) implements, in clock order."""
    return tuple(h for h in HOOK_NAMES if callable(getattr(plugin, h, None)))

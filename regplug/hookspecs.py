"""The hooks a regplug plugin can implement — the one file a plugin author needs.

A plugin is any object with methods named after these hooks, preferably marked with
``@regplug.hookimpl``. Each method may take any *subset* of the arguments listed in the spec
(pluggy passes them by name). The adapters call the hooks; plugins never call each other.

The training clock, the same in every framework:

======================  ==============================  ======================================
hook                    PyTorch loop (``attach``)       Keras ``model.fit`` (callback)
======================  ==============================  ======================================
``on_train_begin``      ``attach(...)`` / ``with``      ``on_train_begin``
``on_epoch_begin``      first training forward of an    ``on_epoch_begin``
                        epoch
``on_batch_begin``      every training forward          ``on_train_batch_begin``
                        (module pre-hook)
``on_loss``             ``reg.loss(loss)``              traced into the compiled train step
``on_before_step``      optimizer step pre-hook         inside the compiled step, before the
                                                        optimizer applies the update
``on_step``             optimizer step post-hook        inside the compiled step, after the
                                                        update
``on_epoch_end``        ``reg.epoch_end(logs)``         ``on_epoch_end`` (with validation logs)
``on_train_end``        ``reg.close()`` / end of        ``on_train_end``
                        ``with``
======================  ==============================  ======================================

Several plugins implementing one hook are called in the order the user listed them, in every
hook and every adapter, as Keras, Lightning and fastai call their callbacks — so a plugin can
read what an earlier one added (``[GeneralizationGap(), EarlyStopping(monitor="gap")]``).
``@hookimpl(tryfirst=True)``/``(trylast=True)`` move an implementation to the front or the
back. Results combine as each spec says, in that order.
Plugins act on the framework only through ``run`` (see :class:`regplug.Run`): its parameter
handles, its ``ops``, and its ``stop`` requests.
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

    Fires once per training run: when a PyTorch loop is wrapped with ``attach`` (or its
    ``with`` block is entered), and from Keras' ``on_train_begin`` (so once per ``fit`` call).
    Use it to look at the model, take snapshots, validate that the selection matches what the
    plugin expects, or run a sanity check. Return values are ignored.
    """


@hookspec
def on_epoch_begin(run: Run, epoch: int) -> None:
    """An epoch is about to start.

    :param run: the run.
    :param epoch: index of the epoch about to start, from 0 (equal to ``run.epoch``).

    PyTorch: fires just before the first *training-mode* forward pass of the epoch (a module
    forward pre-hook), so changes made here — e.g. dropout rates — apply to that very batch.
    Keras: from the callback's ``on_epoch_begin``. Return values are ignored.
    """


@hookspec
def on_batch_begin(run: Run, step: int) -> None:
    """A training batch is about to start (before its forward pass).

    :param run: the run; its scheduled values (``run.scalar``) are already at this step.
    :param step: index of the optimizer update this batch belongs to (equal to ``run.step``).

    Runs as Python before every training batch, outside any compiled step — the place for
    per-step changes the compiled step must read from a variable, e.g. a dropout rate
    following a schedule step by step (set ``DropoutHandle.rate`` here). PyTorch: a module
    forward pre-hook on the first training-mode forward after an optimizer step (installed
    only when a plugin implements this hook or ``on_epoch_begin``). Keras: the callback's
    ``on_train_batch_begin`` (with ``steps_per_execution=k``, once per k updates). Keep it
    cheap: it runs at every step. Return values are ignored.
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

    PyTorch: exactly once per optimizer update, at the first ``reg.loss(loss)`` after a step
    (later calls in the same gradient-accumulation window return the loss unchanged, so
    accumulation never multiplies a penalty). Keras: while the train (and validation) step
    is traced — so ``val_loss`` includes the penalties, as with Keras' own regularizers —
    and once at ``fit`` start with ``loss=None`` to learn the penalties' names. Hugging Face
    ``Trainer``: once per optimizer update with ``loss=None`` (its callbacks never see the
    loss). The body
    therefore runs once per trace, not per step: it must use only ``run.ops`` and values that
    live in framework variables (strengths obtained from ``run.scalar``), never Python
    branching on tensors, and must not count calls. Return the same penalty every time.
    """


@hookspec
def on_before_step(run: Run, step: int) -> None:
    """Gradients are final and the optimizer is about to update the parameters.

    :param run: the run.
    :param step: index of the update about to happen, from 0 (equal to ``run.step``). In a
        compiled Keras step this is the value at trace time: do not compute with it there.

    PyTorch: an optimizer step pre-hook, i.e. after ``loss.backward()``, gradient clipping
    and ``GradScaler`` unscaling, inside ``optimizer.step()`` (skipped with the step itself
    when ``GradScaler`` finds non-finite gradients). Keras: inside the compiled train step,
    immediately before the optimizer applies the gradients. Plugins change gradients or
    parameters in place through ``run.ops`` (decoupled weight decay shrinks the weights here,
    exactly as ``torch.optim.AdamW`` does). Return values are ignored.
    """


@hookspec
def on_step(run: Run, step: int) -> None:
    """The optimizer has updated the parameters.

    :param run: the run.
    :param step: index of the update that just happened, from 0 (``run.step`` is already
        ``step + 1``).

    PyTorch: an optimizer step post-hook. Keras: inside the compiled train step, after the
    optimizer update (with ``steps_per_execution=k`` it still fires after every one of the k
    updates, because it is part of the traced step). Projections belong here: proximal
    operators (soft-thresholding), norm constraints. Change parameters in place through
    ``run.ops``. Return values are ignored.
    """


@hookspec
def on_epoch_end(run: Run, epoch: int, logs: dict[str, float]) -> None:
    """An epoch, including its validation, has finished.

    :param run: the run; ``run.history`` already contains this epoch's ``logs``.
    :param epoch: index of the epoch that finished, from 0.
    :param logs: metrics of the epoch as plain floats: whatever the PyTorch loop passed to
        ``reg.epoch_end(logs)``, or Keras' logs (``loss``, ``val_loss``, metrics, and each
        penalty under its own name). Plugins may add entries.

    To vote for stopping, call ``run.stop("reason")``; the run stops when any plugin votes
    (on several processes: when any process votes, all stop together). Return values are
    ignored.
    """


@hookspec
def on_train_end(run: Run) -> None:
    """Training has finished, by exhausting its epochs or by a stop request.

    :param run: the run; ``run.stop_requests`` says why it stopped, if it did, and
        ``run.exception`` is the exception that ended it, if one did (PyTorch: leaving the
        ``with`` block by an exception; Keras does not call this hook then). Leave the model
        as the error left it in that case.

    PyTorch: ``reg.close()`` or leaving the ``with`` block. Keras: ``on_train_end`` of each
    ``fit``. Restore best weights and report here. Return values are ignored.
    """


HOOK_NAMES: tuple[str, ...] = (
    "on_train_begin", "on_epoch_begin", "on_batch_begin", "on_loss", "on_before_step", "on_step",
    "on_epoch_end", "on_train_end",
)


def implemented_hooks(plugin: object) -> tuple[str, ...]:
    """The hooks a plugin (an instance, a class, or a module) implements, in clock order."""
    return tuple(h for h in HOOK_NAMES if callable(getattr(plugin, h, None)))

"""The attachment: everything regplug puts on one Keras model for one ``fit``, and its removal.

:class:`Attachment` holds the model, the run and the parts, each in its own module: the
wrapped ``compute_loss`` (:mod:`.loss`), the wrapped ``optimizer.apply`` (:mod:`.optimizer`),
the dropout layers (:mod:`.dropout`), the variables the step reads (:mod:`.jax_step`) and
the fit's frame with the entry-point guards (:mod:`.guards`). ``attach``, ``detach`` and
``release`` call each part; the callback (``callback.py``) drives them.

Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from regplug.errors import UsageError
from regplug.manager import PluginManager
from regplug.run import Run

from .. import _compat
from ..discovery import discover_parameters
from ..ops import KerasOps
from ..state import KerasModelState
from ..trial import KerasTrial
from .dropout import DropoutPatch
from .guards import FitGuards
from .jax_step import StepVariables
from .loss import LossPatch
from .optimizer import OptimizerPatch, innermost_optimizer

__all__ = ["Attachment", "step_is_eager", "ATTACHED", "STEP_HOOKS"]

log = logging.getLogger(__name__)

#: The model attribute holding the live attachment (removed with it).
ATTACHED = "_regplug_attachment"
STEP_HOOKS = ("on_loss", "on_before_step", "on_step")
#: The graphs of the train and test steps Keras traces (TensorFlow names them after the
#: Python functions Keras' trainer defines).
_STEP_GRAPHS = frozenset({"one_step_on_data", "one_step_on_iterator", "multi_step_on_iterator",
                          "one_step_on_data_distributed"})


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
        self.wants = {h: self.manager.implements(h) for h in STEP_HOOKS}
        self.eager = step_is_eager(model)
        self.dirty = False   # the traced step predates a patch
        # TensorFlow's custom gradients registered before this fit traced its steps.
        self._gradients_before = _compat.custom_gradient_names()
        self.run: Run | None = None
        self.on_release: Callable[[Attachment], None] | None = None  # told of a release
        # The parts, one job each. `live` (whether the patches act) is the guards' own, so
        # a patch asks it without a detour.
        self.fit = FitGuards(model, on_entry=self._on_entry)
        self.variables = StepVariables(model, jax=self.jax, changed=self._changed)
        self.ops.register = self.variables.add  # ops.clone()'s copies: state of the step
        self.loss = LossPatch(model, self.manager, wanted=self.wants["on_loss"],
                              log_penalties=owner.log_penalties, live=self.fit.live,
                              call_hook=self._traced_hook, variables=self.variables)
        self.updates = OptimizerPatch(self.optimizer, self.ops,
                                      before_step=self.wants["on_before_step"],
                                      after_step=self.wants["on_step"], eager=self.eager,
                                      live=self.fit.live, call_hook=self._traced_hook,
                                      variables=self.variables)
        self.dropout = DropoutPatch(model, self.variables, live=self.fit.live,
                                    changed=self._changed)

    # -- what the callback reads -------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether the attachment serves a fit (set by the callback)."""
        return self.fit.active

    @active.setter
    def active(self, value: bool) -> None:
        self.fit.active = value

    @property
    def patched_loss(self) -> bool:
        return self.loss.patched

    @property
    def loss_seen(self) -> bool:
        return self.loss.seen

    @property
    def patched_apply(self) -> bool:
        return self.updates.patched

    @property
    def apply_seen(self) -> bool:
        return self.updates.seen

    # -- the Run ---------------------------------------------------------------------
    def build_run(self) -> Run:
        params = discover_parameters(self.model)
        device = "cpu"
        if params:
            device = str(getattr(params[0].tensor.value, "device", "cpu"))
        sync = self.variables.sync
        run = Run(params=params, ops=self.ops, learning_rate_groups=self.updates.lr_groups,
                  device=device, framework="keras", scalar_factory=self.variables.make_scalar,
                  dropout_layers_provider=self.dropout.handles,
                  model_state_provider=KerasModelState(self.model, sync),
                  trial_training_provider=KerasTrial(self.model, sync))
        run.step = self.read_iterations()
        self.run = self.updates.run = run
        return run

    def read_iterations(self) -> int:
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def _changed(self) -> None:
        self.dirty = True

    def _traced_hook(self, name: str, **kwargs: Any) -> list[Any]:
        """Call hook ``name`` from inside the step, explaining errors raised while tracing."""
        try:
            return self.manager.caller(name)(run=self.run, **kwargs)
        except BaseException as err:
            if isinstance(err, Exception):
                _hook_error(err, name, self.eager)
            # JAX's fit took the state out of the variables for this step and puts it
            # back only after a step ran: the error would leave them empty.
            self.variables.restore_purged(self.fit.frame)
            raise

    # -- the fit it belongs to (see guards.py) -------------------------------------------
    def bind_fit(self) -> None:
        """Remember the running ``fit`` and guard the model's entry points."""
        self.fit.bind()

    def fit_running(self) -> bool:
        """Whether the fit this attachment serves is known and still running (any thread)."""
        return self.fit.fit_running()

    def in_own_fit(self) -> bool:
        """Whether the caller runs inside the fit this attachment serves (same thread)."""
        return self.fit.in_own_fit()

    def live(self) -> bool:
        """Whether the patches act (called by each patch, also while the step is traced)."""
        return self.fit.live()

    def stale(self) -> bool:
        """Active, but its fit ended without on_train_end."""
        return self.fit.stale()

    def _on_entry(self, name: str) -> None:
        if self.stale():
            self.release(f"model.{name}()")

    def release(self, reason: str | None = None) -> None:
        """Remove the patches of a fit that did not finish; tell the callback."""
        if reason is not None:
            log.warning("regplug: model %r still carries regplug patches from a fit that did "
                        "not finish (an exception or Ctrl-C skips on_train_end); removing "
                        "them before %s", self.model.name, reason)
        notify = self.on_release
        if self.jax and not self.fit_running():
            # before the trackers and state slots leave the model's variable lists
            self.variables.restore_purged(self.fit.frame)
        try:
            self.detach()
        finally:
            if notify is not None:
                notify(self)

    # -- attach / detach ---------------------------------------------------------------
    def attach(self) -> None:
        """Install the patches and retrace; called after the plugins' on_train_begin."""
        self.loss.setup_trackers(self.run)
        if self.wants["on_loss"] or self.jax:
            self.loss.patch()
        if self.wants["on_before_step"] or self.wants["on_step"]:
            self.updates.patch()
            if self.jax:
                self.variables.patch_train_step()
        self.retrace()

    def retrace(self) -> None:
        self.variables.sync()
        self.updates.trace_step = self.run.step if self.run is not None else 0
        self.model.make_train_function(force=True)
        self.model.test_function = None  # validation sees the penalties too, as with Keras'
        self.dirty = False

    def detach(self) -> None:
        """Remove every patch; the model is as it was before fit (minus the training)."""
        model = self.model
        self.variables.sync()
        self.loss.detach()
        self.updates.detach()
        self.dropout.detach()
        self.variables.detach()  # after the trackers: both leave the model's variable lists
        # The traced functions contain the patches: make later fit/evaluate retrace.
        model.train_function = None
        model.test_function = None
        # ... and release what TensorFlow kept of them: a re-fit would otherwise keep every
        # earlier fit's traced step alive (~2 MB each).
        _compat.release_custom_gradients(self._gradients_before, _STEP_GRAPHS)
        self.fit.detach()
        if getattr(model, ATTACHED, None) is self:
            delattr(model, ATTACHED)
        self.active = False

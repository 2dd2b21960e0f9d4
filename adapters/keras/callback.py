"""The Python-side events of Keras 3 ``model.fit``: :class:`Regularize` and :func:`detach`.

::

    model.fit(x, y, epochs=10, callbacks=[Regularize([L2(1e-4), MaxNorm(3.0)])])

The callback's methods drive the run's epoch clock; penalties and updates are traced into the
compiled train step by the attachment (:mod:`.patches`). If an exception (Ctrl-C included)
ends ``fit``, Keras skips ``on_train_end``: the patches then act as the originals, and the
model's next ``fit``/``evaluate``/``predict``/``save``/... removes them (:func:`detach` by hand).

Docs: docs/loops/keras.md (when each hook fires; options, pitfalls); how the patches work on
each backend: docs/keras-internals.md.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from regplug.clock import EpochClock, Wording
from regplug.errors import RegplugWarning, UnsupportedPluginError, UsageError
from regplug.manager import PluginManager, plugin_label
from regplug.plugin import check_requirements
from regplug.run import Run, StopRequest

from .patches import ATTACHED, STEP_HOOKS, Attachment, step_is_eager

#: Held while a fit checks and claims its callback and model (two threads' fits at once).
_CLAIM = threading.Lock()

__all__ = ["Regularize", "detach", "SUPPORTED_BACKENDS"]

log = logging.getLogger(__name__)

SUPPORTED_BACKENDS: tuple[str, ...] = ("tensorflow", "torch", "jax")
"""Keras backends the adapter serves (the test matrix runs each one that is installed)."""

#: How the Keras adapter's messages name the user's calls.
KERAS_WORDING = Wording(
    adapter="Regularize", step="the optimizer update", loss_call="model.compute_loss",
    loss_fix="A custom train_step must compute its loss with self.compute_loss(...).",
    validation_hint="pass validation_data (or validation_split) to fit",
    close_hint="let the running fit finish first")


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
        self._clock: EpochClock | None = None
        self._att: Attachment | None = None
        self._epoch_start_step = 0
        self._checked_traced = False
        self._arrays_run: Run | None = None  # the fit _arrays_reported belongs to
        self._arrays_reported: set[str] = set()

    @property
    def plugins(self) -> list[object]:
        """The plugins, in the order they were listed (the order their hooks run)."""
        return self.manager.plugins

    # -- fit start ---------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        backend = keras.backend.backend()
        if backend not in SUPPORTED_BACKENDS:
            raise UnsupportedPluginError(
                f"Regularize: the Keras backend {backend!r} is not supported; regplug serves "
                f"{', '.join(SUPPORTED_BACKENDS)}")
        with _CLAIM:  # check and claim the callback and the model in one go
            self._refuse_if_busy()
            self._clear_leftovers(model)
            self._check_capabilities(model)
            att = Attachment(self, model)
            self._check_optimizer(att)
            run = att.build_run()
            warn_double_decay(run, att.optimizer, self.plugins)
            clock = EpochClock(run, self.manager, KERAS_WORDING)
            setattr(model, ATTACHED, att)
            att.active = True
            att.on_release = self._released
            att.bind_fit()  # the fit's frame; guards on the model's entry points
            self._att, self.run, self._clock = att, run, clock
        self._checked_traced = False
        try:
            clock.train_begin()
            att.attach()
        except BaseException:
            clock.abandon()
            att.detach()
            self._att = None
            raise
        log.debug("regplug: %d plugin(s) on %d parameters of %s (%s backend)",
                  len(self.plugins), len(run.params), model.name, backend)

    def set_model(self, model: Any) -> None:
        # Keras calls this when a fit builds its callback list, before on_train_begin: a
        # second fit using this callback while another runs is refused before it changes
        # anything (self.model included). Keras' own calls inside the running fit pass.
        att = self._att
        if not (att is not None and model is att.model and att.in_own_fit()):
            self._refuse_if_busy()
        super().set_model(model)

    def _refuse_if_busy(self) -> None:
        att = self._att
        if att is None:
            return
        if att.fit_running():
            raise UsageError(
                f"Regularize: this callback is already in use by a running fit of model "
                f"{att.model.name!r}; one Regularize per fit: give each fit that runs at the "
                "same time its own Regularize([...]) with its own plugin objects")
        if att.stale():  # its fit ended without on_train_end: clean up now
            att.release("this callback's next fit")

    def _released(self, att: Attachment) -> None:
        """A stale attachment of this callback was removed: end its run without hooks."""
        if self._att is att:
            self._att = None
            if self._clock is not None:
                self._clock.abandon()

    def _clear_leftovers(self, model: Any) -> None:
        previous = getattr(model, ATTACHED, None)
        if previous is None:
            return
        if previous.active and previous.fit_token is self.params:
            raise UsageError(
                "Regularize: this fit has two Regularize callbacks on the same model; pass "
                "all plugins to one: Regularize([plugin_a, plugin_b, ...]) (two would "
                "apply the penalties twice)")
        if previous.fit_running():
            raise UsageError(
                f"Regularize: model {model.name!r} is already being trained by a running fit "
                "with another Regularize callback; one Regularize per fit, and one fit of a "
                "model at a time")
        previous.release("this fit")

    def _check_capabilities(self, model: Any) -> None:
        compiled = None if step_is_eager(model) else (
            f"model.fit runs a compiled train step on the {keras.backend.backend()} backend, "
            f"where {', '.join(STEP_HOOKS)} run once, while the step is traced. Compile with "
            "model.compile(..., run_eagerly=True) to use this plugin with Keras.")
        check_requirements(self.plugins, {"eager_step": compiled, "dropout_layers": None,
                                          "model_state": None, "trial_training": None},
                           adapter="the Keras adapter")

    def _check_optimizer(self, att: Attachment) -> None:
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
        run, clock = self._live()
        run.epoch = epoch
        self._epoch_start_step = run.step
        clock.epoch_begin()  # fires on_epoch_begin, brings the schedules to the clock
        if self._att is not None and self._att.dirty:
            self._att.retrace()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Only the *begin* hook: implementing on_train_batch_end would make Keras turn the
        # logs into Python floats (a device sync) after every batch.
        run, clock = self._live()
        run.step = self._epoch_start_step + batch
        clock.batch_begin()
        att = self._att
        if att is not None:
            if att.dirty:
                att.retrace()
            if batch > 0 and not self._checked_traced:
                self._check_traced(att)

    def _check_traced(self, att: Attachment) -> None:
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
        run, clock = self._live()
        att = self._att
        if att is not None and not self._checked_traced:
            self._check_traced(att)
        run.step = att.read_iterations() if att is not None else run.step
        logs = logs if logs is not None else {}
        clean: dict[str, float] = {}
        arrays: dict[str, tuple[int, ...]] = {}
        for key, value in logs.items():
            number = log_number(value)
            if number is not None:
                clean[key] = number
            elif (shape := _array_shape(value)) is not None:
                arrays[key] = shape
        before = set(clean)
        reported = self._report_arrays(run, arrays)
        if reported:
            with warnings.catch_warnings():
                # Already explained with the shape; "not in the logs" would mislead.
                for key in reported:
                    warnings.filterwarnings("ignore", category=RegplugWarning,
                                            message=f".*monitor {re.escape(repr(key))} is not")
                stop = clock.epoch_end(clean)
        else:
            stop = clock.epoch_end(clean)
        for key in clean.keys() - before:
            logs[key] = clean[key]
        if stop:
            self.model.stop_training = True
            log.info("regplug: stopping at epoch %d: %s", epoch,
                     "; ".join(str(r) for r in run.stop_requests))

    def _report_arrays(self, run: Run, arrays: dict[str, tuple[int, ...]]) -> list[str]:
        """Warn (once per fit) for each monitored key whose value is not one number."""
        if not arrays:
            return []
        if self._arrays_run is not run:
            self._arrays_run, self._arrays_reported = run, set()
        reported = []
        for plugin in self.plugins:
            monitors = getattr(plugin, "monitor", None)
            if isinstance(monitors, str):
                monitors = (monitors,)
            if not isinstance(monitors, (tuple, list)):
                continue
            for key in monitors:
                if key not in arrays:
                    continue
                reported.append(key)
                if key in self._arrays_reported:
                    continue
                self._arrays_reported.add(key)
                warnings.warn(
                    f"{plugin_label(plugin)}: monitor {key!r} is logged as an array of shape "
                    f"{arrays[key]}, not as one number, so the plugin cannot act on it. "
                    "Monitor a metric that logs one number (e.g. "
                    "F1Score(average='macro') rather than average=None).",
                    RegplugWarning, stacklevel=2)
        return reported

    # -- validation inside fit ----------------------------------------------------------------
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._validation("on_validation_begin")

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._validation("on_validation_end")

    def _validation(self, hook: str) -> None:
        # Only fit's validation: this callback is in no other evaluate's callback list.
        if self.run is not None and self._clock is not None and self._clock.active:
            self.manager.caller(hook)(run=self.run)

    # -- fit end -------------------------------------------------------------------------
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        clock, att = self._clock, self._att
        self._att = None
        try:
            if clock is not None:
                clock.train_end()
        finally:
            if att is not None:
                att.detach()

    def _live(self) -> tuple[Run, EpochClock]:
        if self.run is None or self._clock is None or not self._clock.active:
            raise UsageError("Regularize: this callback is used outside model.fit (its "
                             "on_train_begin has not run)")
        return self.run, self._clock

    # -- results ---------------------------------------------------------------------------
    @property
    def history(self) -> dict[str, list[float]]:
        """The epochs' logs of the last (or current) fit, as regplug recorded them."""
        return self.run.history if self.run is not None else {}

    @property
    def stop_requests(self) -> list[StopRequest]:
        """Why the last fit was asked to stop, with plugin, epoch and step of each vote."""
        return list(self.run.stop_requests) if self.run is not None else []


def warn_double_decay(run: Run, optimizer: Any, plugins: Iterable[object]) -> list[str]:
    """Warn (:class:`~regplug.RegplugWarning`, once per plugin) for each
    :class:`~regplug.plugins.DecoupledWeightDecay` whose variables the optimizer decays too
    (its ``weight_decay`` set, as ``AdamW``'s is by default, and the variables not excluded
    with ``exclude_from_weight_decay``): they would decay twice. Returns the plugins warned
    about."""
    from regplug.plugins import DecoupledWeightDecay

    from ._compat import uses_weight_decay

    own = getattr(optimizer, "weight_decay", None)
    if not own or float(own) <= 0.0:
        return []
    warned = []
    for plugin in plugins:
        if not isinstance(plugin, DecoupledWeightDecay):
            continue
        twice = [h for h in run.params
                 if plugin.selection.matches(h) and uses_weight_decay(optimizer, h.tensor)]
        if not twice:
            continue
        count = f"{len(twice)} variable{'' if len(twice) == 1 else 's'}"
        warnings.warn(
            f"Regularize: {plugin!r} decays {count} that {type(optimizer).__name__} decays too "
            f"(its weight_decay={float(own):g}): the weights decay twice. Compile with the "
            "optimizer's weight_decay=None (Adam + DecoupledWeightDecay is AdamW with "
            "undecayed biases), or drop the plugin", RegplugWarning, stacklevel=2)
        warned.append(repr(plugin))
    return warned


def log_number(value: Any) -> float | None:
    """A log value as the one number it holds, or ``None`` when it holds no single number.

    Keras hands callbacks its logs with every value it could turn into a float already
    turned, and the rest as it found them: a metric whose result has shape ``(1,)``
    (``F1Score(average=None)`` on one class) stays an array, and Keras' own
    ``EarlyStopping`` compares it as its one element. So does regplug:

    >>> import numpy as np
    >>> log_number(np.array([0.25], dtype="float32")), log_number(3)
    (0.25, 3.0)
    >>> log_number(np.array([0.25, 0.5])) is None, log_number("abc") is None
    (True, True)
    """
    if keras.ops.is_tensor(value):
        value = keras.ops.convert_to_numpy(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    shape = _array_shape(value)
    if shape is None or math.prod(shape) != 1:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        return None
    return float(array.reshape(()))


def _array_shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype"):
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def detach(model: Any) -> bool:
    """Remove regplug's patches from ``model`` after a ``fit`` that ended in an exception.

    Keras skips ``on_train_end`` when ``fit`` raises, so the model may still carry the
    wrapped ``compute_loss``/``optimizer.apply``. They act as the originals already, and
    the model's next ``fit``, ``evaluate``, ``predict``, ``save``... removes them itself;
    this does it now. Returns whether there was anything.
    """
    att = getattr(model, ATTACHED, None)
    if att is None:
        return False
    att.release()
    return True

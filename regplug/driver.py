"""The framework-neutral heart of an adapter: when each hook fires, and the usage checks.

An adapter observes its framework (module and optimizer hooks in PyTorch, callback methods
in Keras) and tells the driver what happened; the driver advances the run's clock, calls the
hooks and refuses sequences that would silently give a wrong result.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .errors import RegplugWarning, UsageError
from .manager import PluginManager, plugin_label
from .penalty import Penalty, check_penalties
from .run import Run


class Driver:
    """Calls the hooks of ``manager``'s plugins on ``run`` at the right moments.

    :param fused: apply penalties that know their gradient (``Penalty.add_grad``) as a fused
        gradient update before the optimizer step; otherwise every penalty goes through the
        loss (``Penalty.value``) and the framework's autograd.
    """

    def __init__(self, run: Run, manager: PluginManager, *, fused: bool = True) -> None:
        self.run = run
        self.manager = manager
        self.fused = fused
        self.hook = manager.hook
        # The three hooks that fire at every optimizer step go through a direct call list.
        self._on_loss = _per_step_caller(manager, "on_loss")
        self._on_before_step = _per_step_caller(manager, "on_before_step")
        self._on_step = _per_step_caller(manager, "on_step")
        self._on_batch_begin = (_per_step_caller(manager, "on_batch_begin")
                                if manager.implements("on_batch_begin") else None)
        self._wants_loss = manager.implements("on_loss")
        self._epoch_open = False
        self._monitors_checked = False
        self._loss_seen = False  # on_loss fired since the last optimizer step
        self._grad_penalties: list[Penalty] = []
        #: Every penalty returned by the latest ``on_loss`` (for reporting their values).
        self.penalties: list[Penalty] = []
        self.active = False

    # -- run boundaries ----------------------------------------------------------------
    def train_begin(self) -> None:
        if self.active:
            raise UsageError("regplug: training already began for this run; close it first")
        self.active = True
        self.run.stop_requests.clear()
        self.run.exception = None
        self.hook.on_train_begin(run=self.run)

    def train_end(self) -> None:
        if not self.active:
            return
        self.active = False
        self._epoch_open = False
        self.hook.on_train_end(run=self.run)

    # -- per batch ---------------------------------------------------------------------
    def epoch_begin(self) -> None:
        """Open the epoch (``on_epoch_begin``) if it is not open yet; bring values to the clock."""
        if not self._epoch_open:
            self._epoch_open = True
            self.hook.on_epoch_begin(run=self.run, epoch=self.run.epoch)
        self.run.update_scalars()

    def batch_begin(self) -> None:
        """A training batch is starting (before its forward pass)."""
        self.epoch_begin()
        if self._on_batch_begin is not None:
            self._on_batch_begin(run=self.run, step=self.run.step)

    def collect_penalties(self, loss: Any) -> list[Penalty]:
        """Fire ``on_loss`` once per optimizer step; return the penalties for the loss.

        Penalties applied through their gradient are kept for :meth:`before_step`; the
        returned ones must be added to the loss by the adapter. Later calls in the same
        step (gradient accumulation) return nothing.
        """
        if self._loss_seen:
            return []
        if not self._epoch_open:
            self.batch_begin()
        self._loss_seen = True
        if not self._wants_loss:
            return []
        self.penalties = check_penalties(self._on_loss(run=self.run, loss=loss))
        to_loss = []
        self._grad_penalties = []
        for penalty in self.penalties:
            if self.fused and penalty.add_grad is not None:
                self._grad_penalties.append(penalty)
            else:
                to_loss.append(penalty)
        return to_loss

    def before_step(self) -> None:
        """Gradients are final; the optimizer is about to update."""
        if self._wants_loss and not self._loss_seen:
            names = ", ".join(getattr(p, "name", type(p).__name__)
                              for p in self.manager.implementers("on_loss"))
            raise UsageError(
                f"regplug: optimizer.step() was called but reg.loss(loss) was not called on a "
                f"training loss (one that requires grad) since the previous step, so the "
                f"penalties of {names} would be missing. Write `loss = reg.loss(loss)` before "
                "`loss.backward()` in every step.")
        for penalty in self._grad_penalties:
            penalty.add_grad()  # type: ignore[misc]
        self._on_before_step(run=self.run, step=self.run.step)

    def after_step(self) -> None:
        """The optimizer has updated the parameters."""
        self.reset_window()
        self.run.step += 1
        self._on_step(run=self.run, step=self.run.step - 1)

    def reset_window(self) -> None:
        """Gradients were zeroed: the next loss starts a new optimizer step's window.

        Normally :meth:`after_step` does this; adapters also call it when gradients are
        reset without a step (e.g. ``GradScaler`` skipped a step with non-finite gradients).
        """
        self._loss_seen = False
        self._grad_penalties = []

    # -- per epoch -----------------------------------------------------------------------
    def epoch_end(self, logs: dict[str, float]) -> bool:
        """Record the epoch, fire ``on_epoch_end``; return whether training should stop."""
        run = self.run
        if not self._epoch_open:
            self.hook.on_epoch_begin(run=run, epoch=run.epoch)
        if run.world.size > 1 and logs and hasattr(run.world, "mean"):
            # Every process decides on the same numbers, so stops, best epochs and restored
            # weights agree across the replicas.
            keys = sorted(logs)
            logs.update(zip(keys, run.world.mean(keys, [logs[k] for k in keys])))
        if not self._monitors_checked:
            self._monitors_checked = True
            check_monitors(self.manager.plugins, logs)
        before = set(logs)
        run.record(logs)
        self.hook.on_epoch_end(run=run, epoch=run.epoch, logs=logs)
        run.record({k: v for k, v in logs.items() if k not in before})  # plugins' additions
        stop = run.world.any(run.should_stop)
        if stop and not run.stop_requests:
            run.stop("another process voted to stop", source=f"rank {run.world.rank}")
        run.epoch += 1
        self._epoch_open = False
        return stop


def check_monitors(plugins: Sequence[object], logs: dict[str, Any]) -> list[str]:
    """Warn for each plugin whose ``monitor`` attribute (a key, or a tuple of keys) names
    a key missing from ``logs``.

    Returns the labels of the plugins warned about. The message lists the available keys
    (and says when validation metrics are missing altogether).
    """
    warned = []
    for plugin in plugins:
        monitors = getattr(plugin, "monitor", None)
        if isinstance(monitors, str):
            monitors = (monitors,)
        if not isinstance(monitors, (tuple, list)):
            continue
        missing = [m for m in monitors if isinstance(m, str) and m not in logs]
        if not missing:
            continue
        monitor = missing[0]
        label = plugin_label(plugin)
        keys = ", ".join(sorted(logs)) or "(none)"
        close = difflib.get_close_matches(monitor, list(logs), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if monitor.startswith("val_") and not any(k.startswith("val_") for k in logs):
            hint += (" There are no validation metrics: pass validation_data (or "
                     "validation_split) to fit, or validation metrics to reg.epoch_end.")
        warnings.warn(f"{label}: monitor {monitor!r} is not in the logs of this epoch, so "
                      f"the plugin cannot act on it. Available keys: {keys}.{hint}",
                      RegplugWarning, stacklevel=4)
        warned.append(label)
    return warned


def _per_step_caller(manager: PluginManager, name: str) -> Callable[..., list[Any]]:
    """Call the implementations of hook ``name`` the way pluggy does, with less overhead.

    pluggy spends several Python calls per hook call on tracing and wrapper support; at
    every optimizer step of a small model that is a measurable share (see benchmarks/).
    Plugins are fixed for the life of a driver, so the call list is built once: same order
    as pluggy (last registered first, ``tryfirst``/``trylast`` honoured — pluggy sorts
    ``get_hookimpls()`` and calls it in reverse), same argument subsets, non-``None``
    results collected. A hook with wrapper implementations goes through pluggy unchanged.
    """
    caller = getattr(manager.hook, name)
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return caller  # type: ignore[no-any-return]
    calls = [(impl.function, impl.argnames) for impl in reversed(impls)]

    def call(**kwargs: Any) -> list[Any]:
        results = []
        for function, argnames in calls:
            result = function(*[kwargs[arg] for arg in argnames])
            if result is not None:
                results.append(result)
        return results

    return call

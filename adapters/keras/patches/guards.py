"""The ``fit`` an attachment serves, and the guards that clean up after it if it is gone.

Keras' ``fit`` has no try/finally around its callbacks: when a callback or a traced step
raises (Ctrl-C included), ``on_train_end`` never runs and nothing tells regplug. So
:class:`FitGuards` keeps the frame of the fit the attachment serves. While that frame runs,
the patches act; once it is gone they act as the originals, and the first call of one of the
model's entry points (:data:`GUARDED_ENTRY_POINTS`) removes them all before doing its work.
Keras' own calls from inside the running fit (validation's ``self.evaluate``,
``ModelCheckpoint``'s ``save``) find the frame running and pass through.

Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import keras

from regplug.clock import frame_running

from .. import _compat

__all__ = ["FitGuards", "GUARDED_ENTRY_POINTS"]

log = logging.getLogger(__name__)

#: The model's methods that first remove the patches of a fit that ended without
#: ``on_train_end`` (an exception, Ctrl-C).
GUARDED_ENTRY_POINTS = ("fit", "evaluate", "predict", "train_on_batch", "test_on_batch",
                        "predict_on_batch", "save", "save_weights", "export")
_MISSING = object()


def _on_this_thread(frame: FrameType) -> bool:
    current: FrameType | None = sys._getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


class FitGuards:
    """The frame of the fit one attachment serves, and guards on the model's entry points.

    ``active``: the attachment serves a fit (set by the callback through
    ``Attachment.active``). ``on_entry(name)`` is called by the guard of ``model.<name>``
    before the method runs; the attachment releases itself there if it is stale.
    """

    def __init__(self, model: Any, on_entry: Callable[[str], None]) -> None:
        self.model = model
        self.on_entry = on_entry
        self.active = False
        self.frame: FrameType | None = None
        self.guards: list[tuple[str, Any, Any]] = []
        self._compiling: Callable[[], bool] | None = None
        if keras.backend.backend() == "torch":  # torch.compile traces the patches: no stack walks
            import torch

            self._compiling = torch.compiler.is_compiling

    def bind(self) -> None:
        """Remember the running ``fit`` and guard the model's entry points."""
        self.frame = _compat.running_fit_frame(self.model)
        if self.frame is None:  # callbacks driven by hand, not by model.fit
            log.debug("regplug: no running fit of %r found; its patches stay until "
                      "on_train_end or detach()", self.model.name)
            return
        self.guard_entry_points()

    def fit_running(self) -> bool:
        """Whether the fit is known and still running (any thread)."""
        frame = self.frame
        return self.active and frame is not None and frame_running(frame)

    def in_own_fit(self) -> bool:
        """Whether the caller runs inside the fit (same thread)."""
        frame = self.frame
        return self.active and frame is not None and _on_this_thread(frame)

    def live(self) -> bool:
        """Whether the patches act (called by each patch, also while the step is traced)."""
        if not self.active:
            return False
        if self._compiling is not None and self._compiling():
            return True  # only a running fit compiles the patched step
        return self.frame is None or frame_running(self.frame)

    def stale(self) -> bool:
        """Active, but the fit ended without ``on_train_end``."""
        return self.active and self.frame is not None and not self.fit_running()

    def guard_entry_points(self) -> None:
        model = self.model
        for name in GUARDED_ENTRY_POINTS:
            inner = getattr(model, name, None)
            if not callable(inner):
                continue
            previous = vars(model).get(name, _MISSING)
            guard = self._guard(name, inner)
            setattr(model, name, guard)
            self.guards.append((name, guard, previous))

    def _guard(self, name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(inner)
        def guard(*args: Any, **kwargs: Any) -> Any:
            self.on_entry(name)
            return inner(*args, **kwargs)

        return guard

    def detach(self) -> None:
        """Remove the guards (those still in place) and forget the frame."""
        model = self.model
        for name, guard, previous in reversed(self.guards):
            if vars(model).get(name) is not guard:
                continue  # replaced by someone else since: theirs stays
            if previous is _MISSING:
                delattr(model, name)
            else:
                setattr(model, name, previous)
        self.guards = []
        self.frame = None  # holds fit's locals (the data) alive otherwise

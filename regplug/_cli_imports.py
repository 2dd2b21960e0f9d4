"""The command line's imports of TensorFlow and Keras: without start-up chatter or extras.

Used by :func:`regplug.cli.main` only: a program that imports regplug itself is untouched.
While the first ``import tensorflow`` or ``import keras`` of a ``regplug`` command runs, file
descriptor 2 goes to a temporary file; afterwards every line of it is written to stderr
except TensorFlow's known start-up chatter (absl's pre-init notice, its INFO lines such as
oneDNN's and cpu_feature_guard's, CUDA plugin registrations), which goes to the DEBUG log
of ``regplug.cli.tensorflow``. Warnings, errors and Python's own output still show. Two
optional imports the libraries try and do without are refused meanwhile: ``jax`` inside
TensorFlow's import (TFLite's converter) and ``sklearn`` inside Keras's (its scikit-learn
wrappers); neither is used by ``regplug compare``/``tune``, and refusing them saves about a
second of start-up. Numerics are unchanged (no environment variable is set).
Docs: docs/compare.md
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

__all__ = ["quiet_framework_imports", "filter_startup_chatter", "stderr_filtered",
           "ImportGuard", "WATCHED"]

log = logging.getLogger("regplug.cli.tensorflow")

#: The imports whose start-up output is filtered, and the optional imports refused while
#: each runs (top-level names).
WATCHED: Mapping[str, tuple[str, ...]] = {"tensorflow": ("jax",), "keras": ("sklearn",)}

_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to"
# absl's prefix: severity, MMDD, time, thread, file:line]
_ABSL = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+ ([\w.-]+):\d+\] ?(.*)$")
# warnings and errors that a CPU or GPU build prints at every start (plugin registrations)
_NOISY_FILES = frozenset({"cuda_dnn.cc", "cuda_fft.cc", "cuda_blas.cc",
                          "computation_placer.cc"})
_CPU_GUARD_TAIL = "To enable the following instructions:"


def filter_startup_chatter(text: str) -> tuple[str, list[str]]:
    """``text`` less TensorFlow's start-up chatter, and the chatter's lines.

    >>> kept, chatter = filter_startup_chatter(
    ...     "I0000 00:00:1.5   7 port.cc:153] oneDNN custom operations are on.\\n"
    ...     "E0000 00:00:1.6   7 op_kernel.cc:9] a real error\\nTraceback\\n")
    >>> kept, len(chatter)
    ('E0000 00:00:1.6   7 op_kernel.cc:9] a real error\\nTraceback\\n', 1)
    """
    kept: list[str] = []
    chatter: list[str] = []
    after_guard = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        match = _ABSL.match(bare)
        noise = (bare.startswith(_PRE_INIT)
                 or (after_guard and bare.startswith(_CPU_GUARD_TAIL))
                 or (match is not None and (match.group(1) == "I"
                                            or match.group(2) in _NOISY_FILES)))
        after_guard = match is not None and match.group(2) == "cpu_feature_guard.cc"
        (chatter if noise else kept).append(line if not noise else bare)
    return "".join(kept), chatter


@contextmanager
def stderr_filtered() -> Iterator[None]:
    """File descriptor 2 into a temporary file meanwhile; then its text to stderr less the
    start-up chatter (logged at DEBUG). Without a usable descriptor 2, nothing is done."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            _emit(tmp.read().decode("utf-8", "replace"))  # also when the import failed


def _emit(text: str) -> None:
    kept, chatter = filter_startup_chatter(text)
    for line in chatter:
        log.debug("%s", line)
    if kept:
        stream = sys.stderr if sys.stderr is not None else sys.__stderr__
        if stream is not None:
            stream.write(kept)
            stream.flush()


class ImportGuard(importlib.abc.MetaPathFinder):
    """A finder that finds nothing itself: it wraps the first import of each ``watched``
    top-level module in :func:`stderr_filtered` and refuses that module's optional imports
    (``watched[name]``) while it runs. Nested watched imports share the outer one's filter."""

    def __init__(self, watched: Mapping[str, Sequence[str]] = WATCHED) -> None:
        self.watched = {name: tuple(hidden) for name, hidden in watched.items()}
        self._hidden: list[str] = []
        self._depth = 0
        self._finding = False

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self._hidden:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not imported by the "
                                      "regplug command while its framework loads)",
                                      name=fullname)
        if fullname not in self.watched or self._finding:
            return None
        self._finding = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._finding = False
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            try:
                with self._guarded(self.watched[fullname]):
                    original(module)
            finally:
                if vars(loader).get("exec_module") is exec_module:
                    del loader.exec_module  # the loader is as it was

        loader.exec_module = exec_module
        return spec

    @contextmanager
    def _guarded(self, hidden: Sequence[str]) -> Iterator[None]:
        fresh = [name for name in hidden if name not in sys.modules]
        self._hidden.extend(fresh)
        self._depth += 1
        try:
            if self._depth == 1:
                with stderr_filtered():
                    yield
            else:
                yield
        finally:
            self._depth -= 1
            for name in fresh:
                self._hidden.remove(name)


@contextmanager
def quiet_framework_imports() -> Iterator[ImportGuard]:
    """An :class:`ImportGuard` first on ``sys.meta_path`` meanwhile (the CLI's commands)."""
    guard = ImportGuard()
    sys.meta_path.insert(0, guard)
    try:
        yield guard
    finally:
        if guard in sys.meta_path:
            sys.meta_path.remove(guard)

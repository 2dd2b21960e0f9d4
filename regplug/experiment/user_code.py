"""Which command-line option's code an exception came from: ``--model module:factory`` or
``--data module:function``, so that the user's own error is one line naming the option
(:class:`UserCodeError`; ``-v`` shows the traceback) instead of a traceback from inside
regplug, or a bare ``boom``.

Docs: docs/compare.md
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import RegplugError

__all__ = ["UserCodeError", "reference_target", "raised_in", "blame"]

#: What each option's callable is called in the messages.
_NOUNS = {"--model": "factory", "--data": "function"}


class UserCodeError(RegplugError, ValueError):
    """An exception raised by the user's code that an option names; its ``__cause__`` is
    the original exception (``-v`` shows its traceback)."""


def reference_target(text: str | None) -> Any:
    """The object ``module:attr`` (or ``file.py:attr``) names if its module is imported
    already (nothing is imported here), else ``None``."""
    if not text or ":" not in text:
        return None
    module_name, _, attr = text.rpartition(":")
    if module_name.endswith(".py"):  # how references.load_reference imports a file
        module_name = f"_regplug_user_{Path(module_name).stem}"
    target: Any = sys.modules.get(module_name)
    for part in attr.split(".") if target is not None else ():
        target = getattr(target, part, None)
    return target


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def raised_in(err: BaseException, target: Any) -> bool:
    """Whether ``err`` was raised inside ``target`` (a function, a class, or code in the
    same file), or — for a callable without Python code, such as ``os.system`` — by the
    call of it in the innermost frame."""
    if target is None:
        return False
    code = getattr(target, "__code__", None)
    files: set[str] = set()
    if code is not None:
        files.add(code.co_filename)
    elif inspect.isclass(target):
        with contextlib.suppress(TypeError, OSError):  # not a built-in class
            files.add(inspect.getfile(target))
    frames = list(_frames(err.__traceback__))
    if files:
        return any(tb.tb_frame.f_code.co_filename in files for tb in frames)
    if not frames:
        return False
    innermost = frames[-1].tb_frame.f_locals.values()
    return any(value is target or getattr(value, "factory", None) is target
               for value in innermost)


def blame(err: BaseException, **options: str | None) -> UserCodeError | None:
    """A :class:`UserCodeError` naming the option whose code raised ``err``, e.g.
    ``blame(err, model="fac:build")`` → "--model 'fac:build': the factory raised
    RuntimeError: kaboom"; ``None`` where none did (or ``err`` is regplug's own)."""
    if isinstance(err, RegplugError):
        return None
    for name, text in options.items():
        option = f"--{name}"
        if text and raised_in(err, reference_target(text)):
            first = (str(err).strip().splitlines() or [""])[0]
            detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
            return UserCodeError(f"{option} {text!r}: the {_NOUNS.get(option, 'function')} "
                                 f"raised {detail}")
    return None

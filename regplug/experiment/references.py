"""``module:function`` references given on the command line (``--data``, ``--model``).

Docs: docs/compare.md
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RegplugError

__all__ = ["BadReferenceError", "load_reference", "is_reference"]


class BadReferenceError(RegplugError, ValueError):
    """A ``module:function`` reference that cannot be imported or is not callable."""


def is_reference(text: str) -> bool:
    """Whether ``text`` reads as ``module:attribute`` (and not as a Windows drive path).

    >>> is_reference("mypkg.data:load"), is_reference("data.npz"), is_reference("C:\\\\x.npz")
    (True, False, False)
    """
    module, sep, attr = text.rpartition(":")
    return bool(sep and module and attr) and not (len(module) == 1 and attr[:1] in "\\/")


def load_reference(text: str, *, option: str) -> Callable[..., Any]:
    """Import ``module:attr`` (or ``path/to/file.py:attr``) and return the callable.

    A module is looked up on ``sys.path`` with the current directory first, the way
    ``python -m`` finds it, so ``--data mydata:load`` works for a ``mydata.py`` beside you.
    Errors name the option and what is missing, in one line.
    """
    module_name, _, attr = text.rpartition(":")
    if not module_name or not attr:
        raise BadReferenceError(f"{option} {text!r}: expected module:function")
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            cwd = os.getcwd()
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(cwd)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            # the module exists but imports something that is not installed
            raise BadReferenceError(
                f"{option} {text!r}: importing {module_name!r} failed: it imports "
                f"{missing or str(err)!r}, which is not installed (pip install it, or fix "
                "the import; -v shows where)") from err
        raise BadReferenceError(f"{option} {text!r}: no module named {module_name!r} (looked in "
                              "the current directory and the Python path)") from None
    except FileNotFoundError:
        raise BadReferenceError(f"{option} {text!r}: file {module_name!r} does not exist") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            public = sorted(n for n in vars(module) if not n.startswith("_")
                            and callable(getattr(module, n)))
            raise BadReferenceError(f"{option} {text!r}: module {module_name!r} has no "
                                  f"{attr!r}; it has {', '.join(public) or 'no callables'}"
                                  ) from None
    if not callable(target):
        raise BadReferenceError(f"{option} {text!r}: {attr!r} is a {type(target).__name__}, "
                              "not a function")
    return target  # type: ignore[no-any-return]


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(path)
    name = f"_regplug_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadReferenceError(f"cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

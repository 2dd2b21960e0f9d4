"""Reading TOML configs: the one reader behind ``regplug.load_config`` and ``regplug compare
--config``.

Every way a file can be unusable ends in a :class:`ConfigError` that names the file and what
is wrong with it: unreadable, not a regular file (a FIFO, ``/dev/zero``: never read), over
:data:`MAX_CONFIG_BYTES`, not UTF-8 (with the line and column of the first bad byte; a
leading byte-order mark is skipped), not TOML (with tomllib's line and column), or nested
deeper than :data:`MAX_NESTING` levels. Parsing never surfaces a ``RecursionError``:
tomllib recurses once per level of nested arrays and inline tables, so a file of a few
thousand ``[`` would otherwise end in a traceback.

Docs: docs/plugins/index.md
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

from .errors import RegplugError

__all__ = ["ConfigError", "ConfigTypeError", "MAX_NESTING", "MAX_CONFIG_BYTES", "read_toml",
           "key_path", "describe_value"]

#: Deepest nesting of tables and arrays a config may have. Real configs use 3 or 4 levels
#: (strategies → plugins → a schedule table → a list of milestones); anything near this
#: limit is a generated or hostile file.
MAX_NESTING = 32
#: The most bytes a config may have: a config of thousands of choices is some hundred
#: kilobytes; more is the wrong file (or an endless one), read no further.
MAX_CONFIG_BYTES = 16 << 20
#: UTF-8's byte-order mark, which some editors put at the start of a text file.
_BOM = b"\xef\xbb\xbf"


class ConfigError(RegplugError, ValueError):
    """A config file or a plain config structure that cannot be used; the message names the
    file or the key path (``strategies[2].plugins``) and what is allowed there."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type (also a ``TypeError``, as a wrong argument is)."""


def read_toml(path: str | os.PathLike[str], *, what: str = "config") -> dict[str, Any]:
    """The table of a TOML file, or a :class:`ConfigError` naming ``what`` and the file.

    >>> read_toml("/nonexistent/strategies.toml", what="strategy config")
    Traceback (most recent call last):
    regplug.configfile.ConfigError: strategy config '/nonexistent/strategies.toml' cannot be
    read: No such file or directory
    """
    label = f"{what} {str(path)!r}"
    raw = _read_capped(Path(path), label)
    if raw.startswith(_BOM):  # Windows editors write one; TOML's text is what follows
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(f"{label} is not UTF-8 text (TOML files must be): byte "
                          f"0x{raw[err.start]:02x} at line {line}, column {column}; save it "
                          "as UTF-8") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{label} is not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{label} nests arrays or inline tables too deeply to parse "
                          f"(regplug allows {MAX_NESTING} levels)") from None
    deepest = _too_deep(data)
    if deepest is not None:
        raise ConfigError(f"{label} nests tables and arrays more than {MAX_NESTING} levels "
                          f"deep (at {deepest}); regplug configs need a few")
    return data


def _read_capped(path: Path, label: str) -> bytes:
    """The bytes of the regular file ``path``, at most :data:`MAX_CONFIG_BYTES`: a FIFO, a
    device (``/dev/zero``) or a socket is refused before a byte is read (opening without
    blocking: a FIFO would wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ConfigError(f"{label} cannot be read: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise ConfigError(f"{label} cannot be read: Is a directory")
            kind = ("a FIFO" if stat.S_ISFIFO(mode)
                    else "a character device" if stat.S_ISCHR(mode) else "a block device"
                    if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a file")
            raise ConfigError(f"{label} cannot be read: it is not a regular file ({kind})")
        try:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as err:
            raise ConfigError(f"{label} cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{label} is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB; a "
                          "regplug config is a few kilobytes (is it the right file?)")
    return raw


def _too_deep(data: Mapping[str, Any]) -> str | None:
    """The key path of the first value nested deeper than :data:`MAX_NESTING`, else None.
    Iterative, so that the check itself cannot overflow the stack."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_NESTING:
            return path or "the top level"
        if isinstance(value, Mapping):
            stack.extend((v, key_path(path, k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def key_path(prefix: str, key: object) -> str:
    """``key_path("strategies[2]", "plugins")`` → ``"strategies[2].plugins"``."""
    text = key if isinstance(key, str) else repr(key)
    return f"{prefix}.{text}" if prefix else text


def describe_value(value: object, limit: int = 60) -> str:
    """A short account of a config value for messages: its repr (cut at ``limit`` characters)
    and, for non-obvious cases, its type.

    >>> describe_value(5), describe_value("l2"), describe_value({"a": 1})
    ('5', "the string 'l2'", "a table {'a': 1}")
    """
    try:
        text = repr(value)
    except RecursionError:  # a self-referencing structure built in Python
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    if isinstance(value, str):
        return f"the string {text}"
    if isinstance(value, Mapping):
        return f"a table {text}"
    return text

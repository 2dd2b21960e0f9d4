"""The ``regplug`` command: list plugins, compare regularization strategies, tune them.

Docs: docs/cli-plugins.md
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from ._cli_imports import quiet_framework_imports
from .compare.cli import add_compare_parser
from .doctor.cli import add_doctor_parser
from .errors import PluginLoadError, PluginValidationError, RegplugError
from .experiment.user_code import UserCodeError, blame
from .hookspecs import HOOK_NAMES, implemented_hooks
from .manager import validate_plugin_class
from .ranges import SpaceError, tunable_arguments
from .registry import DISABLE_AUTOLOAD_ENV, autoload_disabled, available_plugins
from .tune.cli import add_tune_parser


def listed_hooks(factory: object) -> tuple[str, ...]:
    """The hooks a plugin class can fire, in clock order, as ``regplug plugins`` shows them.

    A class whose instances choose hooks by their configuration names them in
    ``configured_hooks`` (and why in ``configured_hooks_note``); they are listed as one
    entry, "on_epoch_begin or on_batch_begin (from the schedule's per)".

    >>> from regplug.plugins import DropoutSchedule
    >>> listed_hooks(DropoutSchedule)
    ('on_train_begin', "on_epoch_begin or on_batch_begin (from the schedule's per)",
     'on_train_end')
    """
    hooks = list(implemented_hooks(factory))
    configured = [h for h in getattr(factory, "configured_hooks", ()) or ()
                  if h in HOOK_NAMES and h not in hooks]
    if configured:
        note = getattr(factory, "configured_hooks_note", "")
        first = HOOK_NAMES.index(configured[0])
        at = sum(HOOK_NAMES.index(h) < first for h in hooks)
        hooks.insert(at, " or ".join(configured) + (f" ({note})" if note else ""))
    return tuple(hooks)


def plugin_listing() -> list[dict[str, Any]]:
    """Every available plugin as a plain record: built-ins first, then discovered ones.

    Each record has ``name``, ``distribution`` (``"regplug (built-in)"`` or the installing
    distribution's ``"name version"``), ``builtin``, ``target`` (``"module:Factory"``),
    ``hooks`` (in clock order), ``tunable`` (each argument the plugin declares worth tuning
    and its range as text, ``{"l2": "1e-06 .. 0.1, log"}``; ``{}`` when it declares none),
    ``status`` (``"ok"`` or ``"broken"``) and ``error`` (why a broken one cannot be loaded or
    its ``tunable`` declaration cannot be used, else ``None``). Loading one plugin never stops
    the others.
    """
    records = []
    for name, info in sorted(available_plugins().items(),
                             key=lambda kv: (not kv[1].builtin, kv[0])):
        hooks: tuple[str, ...] = ()
        tunable: dict[str, str] = {}
        error = None
        try:
            factory = info.load()
        except PluginLoadError as err:
            cause = err.__cause__ or err
            error = f"{type(cause).__name__}: {cause}"
        else:
            if callable(factory):
                hooks = listed_hooks(factory)
                if inspect.isclass(factory):
                    try:  # what registering an instance would refuse, listed now
                        validate_plugin_class(factory)
                    except PluginValidationError as err:
                        error = f"{type(err).__name__}: {err}"
                if error is None:
                    try:
                        tunable = {key: space.describe() for key, space
                                   in tunable_arguments(factory, name=name).items()}
                    except SpaceError as err:
                        error = f"SpaceError: {err}"
            else:
                error = (f"TypeError: {info.target} is a {type(factory).__name__}, not a plugin "
                         "class or factory")
        records.append({"name": name, "distribution": info.distribution,
                        "builtin": info.builtin, "target": info.target, "hooks": list(hooks),
                        "tunable": tunable, "status": "ok" if error is None else "broken",
                        "error": error})
    return records


#: How every error of the command starts, whichever sub-command and whoever found it
#: (argparse or the command itself); the sub-command is named by the "--help" hint.
ERROR_PREFIX = "regplug: error:"
WIDTH = 80  # the default listing fits a terminal this wide; --wide prints everything
NAME_WIDTH = 24  # the longest name that sets the width of the name column


def plugin_summary(factory: object) -> str:
    """The first sentence of a plugin's own docstring as plain text (reST roles and literals
    unwrapped), ``""`` when it has none; a class without a docstring of its own does not
    borrow its base class's.

    >>> from regplug.plugins import L2
    >>> plugin_summary(L2)
    'Add l2 · Σθ² over the selected parameters to the loss (a Gaussian prior).'
    """
    doc = vars(factory).get("__doc__") if inspect.isclass(factory) else \
        getattr(factory, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())
    paragraph = re.sub(r":[\w:]+:`~[\w.]*?(\w+)`", r"\1", paragraph)  # :class:`~a.B` -> B
    paragraph = re.sub(r":[\w:]+:`([^`]*)`", r"\1", paragraph)  # :func:`a.f` -> a.f
    paragraph = re.sub(r"``([^`]*)``|`([^`]*)`", lambda m: m.group(1) or m.group(2) or "",
                       paragraph)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph, maxsplit=1)[0]


def _shorten(text: str, room: int) -> str:
    """``text`` if it fits in ``room`` characters, else cut with "…": at the last clause
    break outside parentheses (", ", "; ", " (") in the last third of the room, else at the
    end of the last whole word."""
    if len(text) <= room:
        return text
    if room < 2:
        return ""
    limit = room - 1  # characters before the "…"
    depth, clause = 0, -1
    for i, char in enumerate(text[:limit + 1]):
        if char == "(":
            if depth == 0 and text[i - 1:i] == " ":
                clause = i - 1
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char in ",;" and depth == 0 and text[i + 1:i + 2] == " ":
            clause = i
    if clause >= 2 * room // 3:
        cut = text[:clause]
    else:
        cut = text[:limit]
        if text[limit] != " " and " " in cut.strip():
            cut = cut[:cut.rstrip().rfind(" ")]
    return cut.rstrip(" ,;:(-—") + "…"


def _print_wide(records: list[dict[str, Any]]) -> None:
    """Every plugin with its origin, target, hooks and status; its tunable ranges under it."""
    rows = [(r["name"], r["distribution"], r["target"],
             ", ".join(r["hooks"]) or ("-" if r["error"] else "(no hooks)"),
             "ok" if r["error"] is None else f"BROKEN: {r['error']}") for r in records]
    header = ("name", "from", "target", "hooks", "status")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print("  ".join(str(c).ljust(w) for c, w in zip(header[:4], widths)) + "  " + header[4])
    for row, record in zip(rows, records):
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        if record["tunable"]:  # its own line: the row keeps ending in its status
            print("    tune: " + "; ".join(f"{k}: {v}" for k, v in record["tunable"].items()))


def _print_short(records: list[dict[str, Any]], summaries: dict[str, str]) -> None:
    """One line per plugin, at most :data:`WIDTH` characters: its name and the first sentence
    of its docstring (a third-party one's distribution first; a broken one's error)."""
    # a name longer than NAME_WIDTH takes the room of its own description only
    name_width = max([len("name"), *(len(r["name"]) for r in records
                                     if len(r["name"]) <= NAME_WIDTH)])
    print("name".ljust(name_width) + "  description")
    for record in records:
        if record["error"] is not None:
            text = f"BROKEN: {record['error']}"
        else:
            text = summaries.get(record["name"]) or "(no description)"
        if not record["builtin"]:
            text = f"({record['distribution']}) {text}"
        name = record["name"].ljust(name_width)
        short = _shorten(text, WIDTH - len(name) - 2)
        print(name + "  " + short if short else record["name"])
    print("(regplug plugins --wide: each plugin's origin, class, hooks and tunable ranges)")


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print every available plugin: by default one line each (its name and what it does,
    in 80 columns); with ``--wide`` its origin and hooks, and under it the ranges of its
    tunable arguments (``regplug tune`` searches them); broken ones with their error."""
    records = plugin_listing()
    if args.json:
        print(json.dumps({"third_party_discovery": not autoload_disabled(),
                          "plugins": records}, indent=2))
        return 0
    if args.wide:
        _print_wide(records)
    else:
        summaries: dict[str, str] = {}
        for name, info in available_plugins().items():
            if any(r["name"] == name and r["error"] is None for r in records):
                summaries[name] = plugin_summary(info.load())
        _print_short(records, summaries)
    if autoload_disabled():
        print(f"(third-party discovery is off: {DISABLE_AUTOLOAD_ENV} is set)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes in one line (``regplug: error: argument --seeds: must be
    at least 1, got 0 (see regplug compare --help)``, exit code 2) instead of the usage
    block before it: the command's other mistakes are one line too. Its sub-commands'
    parsers are of this class as well (argparse creates them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{ERROR_PREFIX} {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="regplug",
        description="Regularization plugins for four training loops: a plain PyTorch loop, "
                    "Keras fit, Lightning and the Hugging Face Trainer.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"regplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list available plugins (built-in and discovered)")
    p.add_argument("--wide", action="store_true",
                   help="one row per plugin with its origin, target, hooks and status, and "
                        "the ranges of its tunable arguments under it (wider than 80 columns)")
    p.add_argument("--json", action="store_true",
                   help="print the listing as JSON (name, distribution, target, hooks, "
                        "tunable ranges, status, error of each plugin)")
    p.set_defaults(func=cmd_plugins)
    add_compare_parser(sub)
    add_tune_parser(sub)
    add_doctor_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``regplug`` command; ``argv`` defaults to the program's own arguments.

    Called without ``argv`` (as the program: the console script, ``python -m regplug``), it
    ends by freezing the garbage collector's objects: the process exits next, and its last
    collections over the objects of torch and TensorFlow would take seconds (1.5 s of 1.7 s
    of exit for a process that imported both) for memory the operating system frees anyway.
    """
    as_program = argv is None
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    finally:
        if as_program:
            gc.freeze()


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with quiet_framework_imports():  # TensorFlow's start-up lines stay off the terminal
            return int(args.func(args))
    except UserCodeError as err:
        return _user_code_error(err, verbose=args.verbose)
    except (RegplugError, ValueError, OSError) as err:
        blamed = blame(err, model=getattr(args, "model", None), data=getattr(args, "data", None))
        if blamed is not None:
            return _user_code_error(blamed, verbose=args.verbose, cause=err)
        if args.verbose:
            traceback.print_exc()
        print(f"{ERROR_PREFIX} {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        blamed = blame(err, model=getattr(args, "model", None), data=getattr(args, "data", None))
        if blamed is not None:
            return _user_code_error(blamed, verbose=args.verbose, cause=err)
        if args.verbose:
            traceback.print_exc()
        hint = "" if "pip install" in str(err) else \
            ". Install the extras: pip install 'regplug[all]'"
        print(f"{ERROR_PREFIX} {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regplug: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the user's own factory's error is theirs: one line, -v more
        blamed = blame(err, model=getattr(args, "model", None), data=getattr(args, "data", None))
        if blamed is None:
            raise
        return _user_code_error(blamed, verbose=args.verbose, cause=err)


def _user_code_error(err: UserCodeError, *, verbose: bool,
                     cause: BaseException | None = None) -> int:
    """Print the one line of an error raised by the user's code (``--model``, ``--data``),
    and with ``-v`` the traceback of what it raised; exit status 2."""
    original = cause or err.__cause__ or err
    if verbose:
        traceback.print_exception(original)
    print(f"{ERROR_PREFIX} {err}" + ("" if verbose else " (-v shows the traceback)"),
          file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

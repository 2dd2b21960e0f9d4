"""The ``regplug`` command: list plugins, compare regularization strategies, tune them."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .compare.cli import add_compare_parser
from .errors import PluginLoadError, PluginValidationError, RegplugError
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


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print every available plugin with its origin and hooks, and under it the ranges of
    its tunable arguments (``regplug tune`` searches them); broken ones with their error."""
    records = plugin_listing()
    if args.json:
        print(json.dumps({"third_party_discovery": not autoload_disabled(),
                          "plugins": records}, indent=2))
        return 0
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
    if autoload_disabled():
        print(f"(third-party discovery is off: {DISABLE_AUTOLOAD_ENV} is set)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes in one line (``regplug compare: error: argument --seeds:
    must be at least 1, got 0 (regplug compare --help)``, exit code 2) instead of the usage
    block before it: the command's other mistakes are one line too. Its sub-commands'
    parsers are of this class as well (argparse creates them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="regplug", description="Regularization plugins for PyTorch loops and Keras fit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"regplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list available plugins (built-in and discovered)")
    p.add_argument("--json", action="store_true",
                   help="print the listing as JSON (name, distribution, target, hooks, "
                        "tunable ranges, status, error of each plugin)")
    p.set_defaults(func=cmd_plugins)
    add_compare_parser(sub)
    add_tune_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (RegplugError, ValueError, OSError) as err:
        if args.verbose:
            traceback.print_exc()
        print(f"regplug: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        if args.verbose:
            traceback.print_exc()
        hint = "" if "pip install" in str(err) else \
            ". Install the extras: pip install 'regplug[all]'"
        print(f"regplug: error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

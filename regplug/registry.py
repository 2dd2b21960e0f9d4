"""Plugins by name: built-ins, entry-point discovery, and building plugins from a config.

Discovery makes third-party plugins *available by name*; it never switches one on.
Installing a package must not change anyone's training: a plugin runs only when a config,
the CLI or code names it. ``REGPLUG_DISABLE_PLUGIN_AUTOLOAD=1`` skips discovery entirely
(built-ins stay available).

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import FrameType
from typing import Any

from .builtins import BUILTIN_PLUGINS
from .configfile import ConfigError, ConfigTypeError, describe_value, read_toml
from .errors import PluginLoadError, RegplugError, UnknownPluginError
from .ranges import SearchRange, tunable_arguments

ENTRY_POINT_GROUP = "regplug"
DISABLE_AUTOLOAD_ENV = "REGPLUG_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginInfo:
    """An available plugin: where it comes from, and whether it can be loaded."""

    name: str
    target: str  # "package.module:Factory"
    distribution: str  # "regplug (built-in)" or the installing distribution "name version"
    builtin: bool

    def load(self) -> Any:
        """Import and return the factory (usually a class)."""
        module_name, _, attr = self.target.partition(":")
        user_interrupted: list[bool] = []
        try:
            with _user_interrupts_marked() as user_interrupted:
                obj = importlib.import_module(module_name)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
        except (Exception, SystemExit, KeyboardInterrupt) as err:
            # A broken third-party package must not take the others down — not even one that
            # calls sys.exit() or raises KeyboardInterrupt while being imported. The user's
            # own Ctrl-C during the import still interrupts (see _user_interrupts_marked).
            if isinstance(err, KeyboardInterrupt) and user_interrupted:
                raise
            raise PluginLoadError(
                f"plugin {self.name!r} from {self.distribution} failed to load "
                f"({self.target}): {type(err).__name__}: {err}") from err
        return obj

    def tunable(self) -> dict[str, SearchRange]:
        """The arguments the plugin declares worth tuning and their ranges (its ``tunable``
        attribute, checked against its constructor by
        :func:`~regplug.ranges.tunable_arguments`); ``{}`` when it declares none.

        Loads the plugin: a :class:`~regplug.errors.PluginLoadError` when it cannot be
        imported, a :class:`~regplug.ranges.SpaceError` naming it when the declaration is
        unusable.

        >>> available_plugins()["l2"].tunable()
        {'l2': FloatRange(low=1e-06, high=0.1, log=True)}
        """
        return tunable_arguments(self.load(), name=self.name)


@contextlib.contextmanager
def _user_interrupts_marked() -> Iterator[list[bool]]:
    """Tell the user's Ctrl-C apart from a ``KeyboardInterrupt`` that imported code raises.

    Yields a list that is non-empty once a SIGINT arrived during the block. In the main
    thread (the only one Python delivers signals to) the current SIGINT handler is wrapped
    for the duration: it records the signal, then does what it did before (by default,
    raise ``KeyboardInterrupt``). In any other thread a ``KeyboardInterrupt`` can only come
    from the imported code itself, so nothing needs marking.
    """
    marked: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield marked
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> Any:
        marked.append(True)
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_DFL:
            raise KeyboardInterrupt
        return None  # SIG_IGN: the user's Ctrl-C was ignored before, and stays ignored

    try:
        signal.signal(signal.SIGINT, handler)
    except (ValueError, TypeError, OSError):  # no signal support here: nothing to tell apart
        yield marked
        return
    try:
        yield marked
    finally:
        signal.signal(signal.SIGINT, previous)


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _dist_label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def available_plugins() -> dict[str, PluginInfo]:
    """Every plugin that can be named: built-ins first, then discovered entry points.

    A third-party entry point may not shadow a built-in name (it is listed under
    ``"<distribution>:<name>"`` instead), so ``l2`` always means regplug's ``L2``.

    Entry points are scanned once per process and search path (``sys.path``, and whether
    :data:`DISABLE_AUTOLOAD_ENV` is set): a scan reads every installed distribution's
    metadata (some 10 ms), and building plugins asks for them each time (a tune config of
    5,000 choices builds 5,000 strategies).
    """
    return dict(_discover(autoload_disabled(), tuple(sys.path)))


@functools.lru_cache(maxsize=8)
def _discover(disabled: bool, search_path: tuple[str, ...]) -> dict[str, PluginInfo]:
    """:func:`available_plugins` for one search path (the key of the cache; the scan itself
    reads ``sys.path``). Callers get a copy; ``_discover.cache_clear()`` forgets."""
    found = {name: PluginInfo(name, target, "regplug (built-in)", True)
             for name, target in BUILTIN_PLUGINS.items()}
    if disabled:
        return found
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_PLUGINS and ep.value == BUILTIN_PLUGINS[ep.name]:
            continue  # regplug's own declaration of a built-in
        name = ep.name
        if name in found:
            dist = getattr(ep, "dist", None)
            name = f"{dist.name if dist else 'unknown'}:{ep.name}"
        found[name] = PluginInfo(name, ep.value, _dist_label(ep), False)
    return found


def create_plugin(name: str, /, **kwargs: Any) -> Any:
    """Build the plugin called ``name`` with keyword arguments.

    >>> create_plugin("l2", l2=1e-4)
    L2(l2=0.0001)
    """
    plugins = available_plugins()
    if name not in plugins:
        close = difflib.get_close_matches(str(name).lower(), list(plugins), n=1)
        raise UnknownPluginError(
            f"unknown plugin {name!r}; "
            + (f"did you mean {close[0]!r}? " if close else "")
            + f"available: {', '.join(sorted(plugins))}"
            + (f" (third-party discovery is off: {DISABLE_AUTOLOAD_ENV} is set)"
               if autoload_disabled() else ""))
    factory = plugins[name].load()
    check_factory_arguments(factory, name, kwargs)
    return factory(**kwargs)


def check_factory_arguments(factory: Any, name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming plugin ``name`` and the arguments its ``factory`` accepts
    when ``kwargs`` do not fit its signature (one without a signature: the call complains)."""
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        accepted = _accepted_arguments(factory)
        raise TypeError(f"plugin {name!r}: {err}; it accepts {accepted}") from None
    except ValueError:  # builtins without a signature: let the call itself complain
        pass


def _accepted_arguments(factory: Any) -> str:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return "(unknown arguments)"
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return ", ".join(names) if names else "no arguments"


PluginSpec = str | Mapping[str, Any] | tuple[str, Mapping[str, Any]]


def build_plugins(config: Iterable[PluginSpec] | Mapping[str, Any], *,
                  where: str = "plugin config") -> list[Any]:
    """Build plugins from a plain config, in order.

    Accepts a list whose items are a name (``"l2"``), a mapping with a ``name`` key and the
    keyword arguments (``{"name": "l2", "l2": 1e-4}``) or a ``(name, kwargs)`` pair; or a
    mapping with a ``plugins`` list (what :func:`load_config` reads from TOML). A config
    that is none of these is a :class:`~regplug.configfile.ConfigError` naming ``where`` and
    the key path (``plugins[1]``); so is a plugin's refusal of its arguments, after
    ``where`` (a :class:`~regplug.configfile.ConfigTypeError` where the plugin raised a
    ``TypeError``). Unknown and broken plugins raise their own :class:`RegplugError`.

    >>> build_plugins([{"name": "l2", "l2": 1e-4}, ("max_norm", {"max_value": 3.0})])
    [L2(l2=0.0001), MaxNorm(max_value=3.0)]
    >>> build_plugins("l2")
    Traceback (most recent call last):
    regplug.configfile.ConfigTypeError: plugin config: plugins: expected a list of plugins, got
    the string 'l2'; for one plugin write ['l2']
    """
    prefix = "plugins"  # the key path of the list, in a table or given alone
    if isinstance(config, Mapping):
        if "plugins" not in config:
            raise ConfigError(f"{where}: expected a list of plugins or a table with a 'plugins' "
                              f"list; got keys {sorted(map(str, config))}")
        config = config["plugins"]
        if isinstance(config, Mapping):
            raise ConfigTypeError(
                f"{where}: 'plugins' must be a list; in TOML write each plugin as [[plugins]] "
                "(an array of tables), not [plugins]")
    at = f"{where}: {prefix}"
    if isinstance(config, (str, bytes)):
        raise ConfigTypeError(f"{at}: expected a list of plugins, got {describe_value(config)}; "
                              f"for one plugin write [{config!r}]")
    if not isinstance(config, Iterable):
        raise ConfigTypeError(f"{at}: expected a list of plugin tables, got "
                              f"{describe_value(config)}")
    built = []
    for index, item in enumerate(config):
        entry = f"{prefix}[{index}]"
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
            name, kwargs = item[0], dict(item[1])
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            kwargs = dict(item)
            name = kwargs.pop("name")
        else:
            raise ConfigTypeError(
                f"{where}: {entry}: expected a plugin name, a (name, kwargs) pair or a table "
                f"with a 'name' key (a string); got {describe_value(item)}")
        bad_keys = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
        if not isinstance(name, str) or bad_keys:
            raise ConfigTypeError(
                f"{where}: {entry}: plugin names and argument names must be strings (argument "
                f"names Python identifiers); got name {describe_value(name)}"
                + (f", arguments {bad_keys!r}" if bad_keys else ""))
        try:
            built.append(create_plugin(name, **kwargs))
        except RegplugError:
            raise  # unknown or broken plugins already say which and why
        except TypeError as err:  # the plugin's own message names it and the argument
            raise ConfigTypeError(f"{where}: {err}") from err
        except (ValueError, KeyError, ArithmeticError) as err:
            raise ConfigError(f"{where}: {err}") from err
    return built


def load_config(path: str | os.PathLike[str]) -> list[Any]:
    """Build the plugins listed in a TOML file::

        [[plugins]]
        name = "l2"
        l2 = 1e-4

        [[plugins]]
        name = "max_norm"
        max_value = 3.0

    Every mistake — the file, its encoding, its TOML, its nesting, the plugins — is a
    :class:`~regplug.configfile.ConfigError` (a ``ValueError``) naming the file.
    """
    label = f"plugin config {str(path)!r}"
    return build_plugins(read_toml(path, what="plugin config"), where=label)

"""The plugin manager: pluggy underneath, with validation that names the faulty plugin.

Docs: docs/clock-and-window.md
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import PluginValidationError
from .hookspecs import HOOK_NAMES, PROJECT, implemented_hooks


def plugin_label(plugin: object) -> str:
    """How messages name a plugin: its ``name`` attribute, else its class name."""
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) else type(plugin).__name__


class _Pluggy(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOK_NAMES and callable(getattr(plugin, name, None)):
            # Plain methods named after a hook count as implementations, so a plugin works
            # with or without the decorator (the decorator adds tryfirst/trylast/...).
            opts = cast("pluggy.HookimplOpts", {})
        return opts


def _new_pluggy() -> _Pluggy:
    pm = _Pluggy(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _pluggy_name(plugin: object) -> str:
    return f"{plugin_label(plugin)}@{id(plugin):x}"


def _direct_caller(caller: Any) -> Callable[..., list[Any]]:
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return caller  # type: ignore[no-any-return]
    # pluggy keeps the implementations sorted for calling in reverse. Most hooks take one or
    # two arguments (run; run and step): those are passed without building a list, which
    # halves the cost of a call (a step fires several hooks, each for several plugins).
    calls = [(impl.function, len(impl.argnames), *(*impl.argnames, None, None)[:2],
              impl.argnames) for impl in reversed(impls)]

    def call(**kwargs: Any) -> list[Any]:
        results = []
        for function, count, first, second, argnames in calls:
            if count == 1:
                result = function(kwargs[first])
            elif count == 2:
                result = function(kwargs[first], kwargs[second])
            else:
                result = function(*[kwargs[arg] for arg in argnames])
            if result is not None:
                results.append(result)
        return results

    return call


#: The hooks a plugin may prepare (``prepare_hooks``): those fired at every update.
PREPARABLE_HOOKS = ("on_loss", "on_before_step", "on_step")


def _prepared_hook(plugin: object, hook_name: str, run: Any) -> Callable[[], object] | None:
    """``plugin``'s prepared ``hook_name`` for ``run`` (its ``prepare_hooks``), if it has one.

    A mapping that is not one from hook names to functions, names a hook that cannot be
    prepared, or prepares a hook the plugin does not implement (nothing would ever call it)
    is a :class:`PluginValidationError` naming the plugin."""
    prepare = getattr(plugin, "prepare_hooks", None)
    if prepare is None:
        return None
    label = plugin_label(plugin)
    prepared = prepare(run) if callable(prepare) else None
    if not isinstance(prepared, Mapping) or not all(
            isinstance(k, str) and callable(f) for k, f in prepared.items()):
        raise PluginValidationError(
            f"{label}: prepare_hooks(run) must return a mapping from hook names to functions "
            f"taking no argument, got {type(prepared).__name__}")
    implemented = implemented_hooks(plugin)
    for name in prepared:
        if name not in PREPARABLE_HOOKS:
            close = difflib.get_close_matches(name, PREPARABLE_HOOKS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PluginValidationError(
                f"{label}: prepare_hooks(run) prepared {name!r}, which is not a hook fired at "
                f"every update; {hint}the hooks it can prepare are {', '.join(PREPARABLE_HOOKS)}")
        if name not in implemented:
            raise PluginValidationError(
                f"{label}: prepare_hooks(run) prepared {name!r}, but the plugin does not "
                f"implement {name}; add the hook (calling the prepared function), or only the "
                f"adapters' step window would know it and nothing would call it")
    return cast("Callable[[], object] | None", prepared.get(hook_name))


def validate_plugin(plugin: object) -> None:
    """Raise :class:`PluginValidationError` for misspelled hooks or arguments.

    Catches what pluggy would otherwise ignore: a method called ``on_los`` or
    ``on_epoch_ends``, a ``@hookimpl`` on a name that is not a hook, a hook taking an
    argument its spec does not provide.
    """
    label = plugin_label(plugin)
    if inspect.isclass(plugin):
        raise PluginValidationError(
            f"{label}: register an instance, not the class (write {plugin.__name__}(...))")
    owner = plugin if inspect.ismodule(plugin) else type(plugin)
    for attr in _hook_methods(owner, label):
        _check_hook_arguments(label, attr, list(inspect.signature(
            getattr(plugin, attr)).parameters))


def validate_plugin_class(cls: type) -> None:
    """The checks of :func:`validate_plugin` on a plugin *class*, without instantiating it
    (what ``regplug plugins`` runs on each discovered factory).

    >>> class Typo:
    ...     def on_los(self, run, loss): ...
    >>> validate_plugin_class(Typo)
    Traceback (most recent call last):
    regplug.errors.PluginValidationError: Typo: method 'on_los' is not a regplug hook; did you
    mean 'on_loss'? hooks are ...
    """
    label = getattr(cls, "name", None)
    label = label if isinstance(label, str) else cls.__name__
    for attr in _hook_methods(cls, label):
        params = list(inspect.signature(getattr(cls, attr)).parameters)
        if not isinstance(inspect.getattr_static(cls, attr), (staticmethod, classmethod)):
            params = params[1:]  # self, bound when an instance is registered
        _check_hook_arguments(label, attr, params)


def _hook_methods(owner: object, label: str) -> list[str]:
    """The hook names ``owner`` implements; a misspelled or unknown ``on_*``/``@hookimpl``
    method is a :class:`PluginValidationError`."""
    implemented = []
    for attr in dir(owner):
        member = getattr(owner, attr, None)
        marked = hasattr(member, f"{PROJECT}_impl")
        if attr in HOOK_NAMES:
            implemented.append(attr)
        elif (attr.startswith("on_") or marked) and callable(member):
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PluginValidationError(
                f"{label}: method {attr!r} is not a regplug hook; {hint}"
                f"hooks are {', '.join(HOOK_NAMES)}")
    return implemented


def _check_hook_arguments(label: str, attr: str, got: list[str]) -> None:
    spec_args = set(inspect.signature(getattr(hookspecs, attr)).parameters)
    extra = [a for a in got if a not in spec_args]
    if extra:
        raise PluginValidationError(
            f"{label}: hook {attr}() takes argument(s) {extra} that regplug does not "
            f"provide; {attr} can take any of {sorted(spec_args)}")


def load_plugin_states(plugins: Sequence[object], states: Sequence[Mapping[str, Any]], *,
                       where: str) -> None:
    """Give each plugin its state from a checkpoint: all of them, or none.

    Every plugin's current state is kept (a deep copy of its ``state_dict()``) before the
    first is loaded; if any ``load_state_dict`` raises, the plugins loaded so far — and the
    one that failed part-way — get their kept state back, and a ``ValueError`` names the
    plugin, its position and the cause. ``where`` names the call in messages.

    >>> from regplug.plugins import EarlyStopping
    >>> first, second = EarlyStopping(), EarlyStopping()
    >>> state = {**first.state_dict(), "wait": 3}
    >>> load_plugin_states([first, second], [state, {"wait": "x"}], where="load")
    Traceback (most recent call last):
    ValueError: load: the state of plugin 2 ('early_stopping') cannot be loaded, so no plugin's
    state was changed: ValueError: invalid literal for int() with base 10: 'x'
    >>> first.wait
    0
    """
    if len(states) != len(plugins):
        raise ValueError(f"{where}: the checkpoint holds {len(states)} plugin states, this run "
                         f"has {len(plugins)} plugins")
    getters = [getattr(p, "state_dict", None) for p in plugins]
    kept = [copy.deepcopy(get()) if callable(get) else None for get in getters]
    for index, (plugin, state) in enumerate(zip(plugins, states)):
        load = getattr(plugin, "load_state_dict", None)
        if not callable(load):
            continue
        try:
            load(state)
        except Exception as err:
            failed = _put_back(plugins[:index + 1], kept)
            raise ValueError(
                f"{where}: the state of plugin {index + 1} ({plugin_label(plugin)!r}) cannot be "
                f"loaded, so no plugin's state was changed"
                + (f" (except {', '.join(failed)}, whose earlier state could not be put back)"
                   if failed else "")
                + f": {type(err).__name__}: {err}") from err


def _put_back(plugins: Sequence[object], kept: Sequence[Any]) -> list[str]:
    """Load each plugin's kept state again; the labels of those that refused it."""
    failed = []
    for plugin, state in zip(plugins, kept):
        load = getattr(plugin, "load_state_dict", None)
        if state is None or not callable(load):
            continue
        try:
            load(state)
        except Exception:  # reported by label: the original error is the one to show
            failed.append(plugin_label(plugin))
    return failed


class PluginManager:
    """Holds the plugins of one run and calls their hooks.

    >>> import regplug
    >>> pm = PluginManager([regplug.plugins.L2(1e-4)])
    >>> pm.implements("on_loss"), pm.implements("on_step")
    (True, False)
    """

    def __init__(self, plugins: Iterable[object] = ()) -> None:
        self._pm = _new_pluggy()
        self._plugins: list[object] = []
        self._callers: dict[str, Callable[..., list[Any]]] = {}
        if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable) or any(
                callable(getattr(plugins, hook, None)) for hook in HOOK_NAMES):
            raise TypeError("plugins must be a list of plugin objects, e.g. [L2(l2=0.01)]; "
                            f"got one {type(plugins).__name__}")
        for plugin in plugins:
            self.register(plugin)

    def register(self, plugin: object) -> None:
        """Add ``plugin`` after the others: its hooks run after theirs (list order)."""
        validate_plugin(plugin)
        if any(p is plugin for p in self._plugins):
            raise PluginValidationError(
                f"{plugin_label(plugin)}: the same plugin object was given twice; "
                "create two instances if you want it twice")
        try:
            single = _new_pluggy()
            single.register(plugin, name=_pluggy_name(plugin))
            single.check_pending()
        except pluggy.PluginValidationError as err:
            raise PluginValidationError(f"{plugin_label(plugin)}: {err}") from None
        self._plugins.append(plugin)
        # pluggy calls the implementations of a hook last registered first; registering the
        # plugins in reverse makes that the order the user listed them in (tryfirst/trylast
        # still move a plugin to the front or the back).
        self._pm = _new_pluggy()
        for each in reversed(self._plugins):
            self._pm.register(each, name=_pluggy_name(each))
        self._callers.clear()

    @property
    def plugins(self) -> list[object]:
        """Registered plugins, in the order they were listed (the order their hooks run)."""
        return list(self._plugins)

    @property
    def hook(self) -> Any:
        """pluggy's hook relay: ``pm.hook.on_step(run=run, step=0)`` (same order as
        :meth:`caller`; adapters use :meth:`caller`)."""
        return self._pm.hook

    def caller(self, hook_name: str) -> Callable[..., list[Any]]:
        """A function calling every implementation of ``hook_name`` with keyword arguments
        and returning the non-``None`` results — the one dispatch path of every adapter.

        Same order and results as pluggy (list order, ``tryfirst``/``trylast`` honoured, each
        implementation given the subset of arguments it takes), with less overhead per call:
        pluggy spends several Python calls per hook call on tracing and wrapper support,
        measurable at every optimizer step of a small model (see ``benchmarks/``). The call
        list is built once per hook (plugins do not change during a run). A hook with wrapper
        implementations goes through pluggy unchanged.

        >>> import regplug
        >>> pm = PluginManager([regplug.plugins.L2(1e-4)])
        >>> pm.caller("on_step")(run=None, step=0)
        []
        """
        call = self._callers.get(hook_name)
        if call is None:
            call = self._callers[hook_name] = _direct_caller(getattr(self._pm.hook, hook_name))
        return call

    def run_caller(self, hook_name: str, run: Any, argument: str) -> Callable[[Any], list[Any]]:
        """:meth:`caller` for a hook fired at every update (``on_loss``, ``on_before_step``,
        ``on_step``) of ``run``, as a function of the one argument that changes from call to
        call (``"loss"`` or ``"step"``); same order and results as :meth:`caller`.

        A plugin with ``prepare_hooks(run)`` (see :class:`regplug.Plugin`) that prepared the
        hook is called through its prepared function, which spares the dispatch and the hook's
        own per-call work (finding its parameters and strengths); every other implementation is
        called as :meth:`caller` calls it. Build it once the run has begun: plugins bind to
        ``run`` in ``on_train_begin``. A hook with wrapper implementations goes through pluggy.

        >>> import numpy as np
        >>> import regplug
        >>> from regplug.testing import numpy_run
        >>> run = numpy_run({"w": np.ones((1, 1))})
        >>> pm = PluginManager([regplug.plugins.MaxNorm(0.5)])
        >>> pm.run_caller("on_step", run, "step")(0)
        []
        >>> run.params[0].tensor.round(6).tolist()  # clipped to the unit norm 0.5
        [[0.5]]
        """
        hook = getattr(self._pm.hook, hook_name)
        impls = hook.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            caller = self.caller(hook_name)
            return lambda value: caller(**{"run": run, argument: value})
        calls: list[tuple[Callable[..., Any], bool]] = []  # (function, takes the argument)
        for impl in reversed(impls):
            prepared = _prepared_hook(impl.plugin, hook_name, run)
            if prepared is not None:
                calls.append((prepared, False))
            elif impl.argnames == ("run",):
                calls.append((functools.partial(impl.function, run), False))
            else:  # the changing argument, with or without run, in either order
                def call(value: Any, function: Any = impl.function,
                         names: tuple[str, ...] = impl.argnames) -> Any:
                    return function(*[value if n == argument else run for n in names])

                calls.append((call, True))

        def run_call(value: Any) -> list[Any]:
            results = []
            for function, takes_value in calls:
                result = function(value) if takes_value else function()
                if result is not None:
                    results.append(result)
            return results

        return run_call

    def implements(self, hook_name: str) -> bool:
        """Whether any registered plugin implements ``hook_name``."""
        return bool(getattr(self._pm.hook, hook_name).get_hookimpls())

    def implementers(self, hook_name: str) -> list[object]:
        return [impl.plugin for impl in getattr(self._pm.hook, hook_name).get_hookimpls()]

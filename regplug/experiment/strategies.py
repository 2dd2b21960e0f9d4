"""Strategies: what an experiment trains the model under (``regplug compare`` compares them,
``regplug tune`` searches their strengths).

A strategy is the model's own regularizing layers (a dropout rate, batch normalization)
plus a list of plugins, given by registry name and keyword arguments — so a third-party
plugin installed through the ``regplug`` entry-point group is as easy to name as a built-in.
Nothing here imports a framework; each framework's runner builds the model and the plugins.

Docs: docs/compare.md
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry
from ..configfile import ConfigError, describe_value, read_toml
from ..errors import PluginValidationError, RegplugError, UnknownPluginError
from ..hookspecs import implemented_hooks
from ..manager import plugin_label, validate_plugin_class
from ..registry import build_plugins
from .references import is_reference, load_reference

__all__ = ["Strategy", "BUILTIN_STRATEGIES", "DEFAULT_STRATEGIES", "load_strategies",
           "strategies_from_tables", "strategy_from_table", "select_strategies",
           "StrategyError", "plugin_factory", "check_monitors", "monitored_keys",
           "added_keys", "Preset", "PRESETS", "DEFAULT_PRESET"]

#: At most 64 characters: a strategy name becomes a table row and file names.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]{0,63}$")
_KEYS = ("name", "description", "dropout", "batch_norm", "plugins")


def _shorten(value: object, limit: int = 64) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}...{size}"


class StrategyError(ConfigError):
    """A strategy name, selection or config that cannot be used (a ``ValueError``)."""


@dataclass(frozen=True)
class Strategy:
    """The model options and plugins of one column of the comparison.

    :param name: how the table and the files call it (letters, digits, ``_ . + -``).
    :param plugins: plugin configs, each ``{"name": <registry name>, **arguments}``, built
        afresh for every run with :func:`regplug.build_plugins`.
    :param dropout: rate of a dropout layer after the last hidden layer, or ``None`` for no
        dropout layer. A plugin that requires dropout layers (``DropoutSchedule``) gets one
        built with rate 0 when this is ``None``.
    :param batch_norm: a batch-normalization layer after the last hidden layer.
    :param description: a line for the table header; by default the plugins' reprs.

    >>> s = Strategy("l2_dropout", plugins=({"name": "l2", "l2": 1e-3},), dropout=0.2)
    >>> s.describe()
    'Dropout(0.2) + L2(l2=0.001)'
    >>> s.model_options()
    (0.2, False)
    """

    name: str
    plugins: tuple[Mapping[str, Any], ...] = ()
    dropout: float | None = None
    batch_norm: bool = False
    description: str = ""
    builtin: bool = field(default=False, compare=False)

    def build_plugins(self) -> list[Any]:
        """Fresh plugin objects (plugins keep state during a run, so every run builds its own).

        A plugin is named by its registry name, or as ``module:Class`` (``file.py:Class``) for
        a plugin class (or factory) of your own that no package registers.
        """
        where = f"strategy {self.name!r}"
        specs = [dict(p) for p in self.plugins]
        try:
            if not any(_is_plugin_reference(spec["name"]) for spec in specs):
                return build_plugins(specs, where=where)
            return [_build_one(spec, index, where=where) for index, spec in enumerate(specs)]
        except ConfigError as err:
            raise StrategyError(str(err)) from None
        except UnknownPluginError as err:
            raise StrategyError(f"{where}: {err}; or name a plugin class of yours as "
                                "module:Class (e.g. name = \"my_plugins:GroupLasso\" for "
                                "my_plugins.py beside you)") from None
        except (TypeError, ValueError, KeyError) as err:
            raise StrategyError(f"{where}: {err}") from None

    def model_options(self, plugins: Sequence[object] | None = None) -> tuple[float | None, bool]:
        """``(dropout rate or None, batch_norm)`` for the model factory.

        A plugin declaring ``requires = ("dropout_layers",)`` needs a dropout layer to act on:
        where the strategy has none, the model gets one built with rate 0.
        """
        dropout = self.dropout
        if dropout is None:
            plugins = self.build_plugins() if plugins is None else plugins
            if any("dropout_layers" in _requires(p) for p in plugins):
                dropout = 0.0
        return dropout, self.batch_norm

    def describe(self) -> str:
        """A one-line account: model options, then the plugins' reprs."""
        if self.description:
            return self.description
        parts = []
        if self.batch_norm:
            parts.append("BatchNorm")
        if self.dropout is not None:
            parts.append(f"Dropout({self.dropout:g})")
        parts.extend(repr(p) for p in self.build_plugins())
        return " + ".join(parts) or "no regularization"

    def to_config(self) -> dict[str, Any]:
        """The strategy as a plain table (what ``--config`` reads and ``results.json`` holds)."""
        out: dict[str, Any] = {"name": self.name}
        if self.dropout is not None:
            out["dropout"] = self.dropout
        if self.batch_norm:
            out["batch_norm"] = True
        out["plugins"] = [dict(p) for p in self.plugins]
        return out


def _is_plugin_reference(name: object) -> bool:
    """Whether a strategy's plugin ``name`` is a ``module:Class`` reference (a name the
    registry knows wins: a third-party plugin shadowing a built-in is ``dist:name``)."""
    return (isinstance(name, str) and is_reference(name)
            and name not in registry.available_plugins())


def plugin_factory(name: str, *, where: str) -> Any:
    """The factory (usually a class) of a plugin a strategy names: a registry name, or
    ``module:Class`` / ``path/to/file.py:Class`` for a plugin of your own that no package
    registers (imported as ``--model module:factory`` is, the current directory first).
    Mistakes are a one-line :class:`StrategyError` starting with ``where``."""
    plugins = registry.available_plugins()
    if name in plugins:
        return plugins[name].load()
    if not is_reference(name):
        raise StrategyError(f"{where}: unknown plugin {name!r}; see `regplug plugins`, or name "
                            "a plugin class of yours as module:Class")
    try:
        return _referenced_factory(name)
    except RegplugError as err:
        raise StrategyError(f"{where}: {err}") from None


def _referenced_factory(name: str) -> Any:
    """Import ``module:Class`` and check the class as registering an instance would."""
    factory = load_reference(name, option="plugin")
    if inspect.isclass(factory):
        try:
            validate_plugin_class(factory)
        except PluginValidationError as err:
            raise StrategyError(f"plugin {name!r}: {err}") from None
    return factory


def _build_one(spec: Mapping[str, Any], index: int, *, where: str) -> Any:
    """Plugin ``index`` of a strategy: by registry name, or from a ``module:Class``."""
    name = spec["name"]
    if not _is_plugin_reference(name):
        try:
            return build_plugins([spec], where=where)[0]
        except ConfigError as err:  # its index in the strategy, not in a list of one
            raise ConfigError(str(err).replace(f"{where}: plugins[0]",
                                               f"{where}: plugins[{index}]", 1)) from None
    factory = plugin_factory(name, where=where)
    kwargs = {key: value for key, value in spec.items() if key != "name"}
    try:
        registry.check_factory_arguments(factory, name, kwargs)
    except TypeError as err:
        raise StrategyError(f"{where}: {err}") from None
    return factory(**kwargs)


def _keys(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list, set, frozenset)):
        return tuple(k for k in value if isinstance(k, str))
    return ()


def monitored_keys(plugin: object) -> tuple[str, ...]:
    """The log keys a plugin watches: its ``monitor`` attribute, a key or a tuple of keys
    (``EarlyStopping.monitor``, ``OptunaPruning.monitor``, ``GeneralizationGap``'s
    validation loss); none without one. The adapters warn mid-run for the same attribute."""
    return _keys(getattr(plugin, "monitor", None))


def added_keys(plugin: object) -> tuple[str, ...]:
    """The log keys a plugin adds to every epoch's logs: its ``log_keys`` attribute, a key
    or a tuple of keys (``GeneralizationGap``: ``gap``, ``pct_diff``); none without one.
    A penalty's key (``l2_penalty``) needs no declaration: the adapters log it."""
    return _keys(getattr(plugin, "log_keys", None))


#: Each penalty is logged under the name its plugin gives it (``l2_penalty``, a second one
#: ``l2_penalty_2``; Keras also ``val_l2_penalty``).
_PENALTY_KEY = re.compile(r"^(val_)?\w+_penalty(_\d+)?$")


def check_monitors(strategy: Strategy, log_keys: Iterable[str], *, framework: str,
                   plugins: Sequence[object] | None = None) -> None:
    """Refuse a plugin of ``strategy`` that monitors a key no epoch's logs will hold: one
    line naming the strategy, the plugin and the key, with the closest key there is.

    The logs hold ``log_keys`` (what the framework's runner logs,
    :func:`regplug.experiment.frameworks.runner_log_keys`), each penalty, and what the
    plugins listed before the monitoring one add (:func:`added_keys`), so
    ``[generalization_gap, {name = "early_stopping", monitor = "gap"}]`` is valid.

    >>> s = Strategy("es", ({"name": "early_stopping", "monitor": "val_acc"},))
    >>> check_monitors(s, ["loss", "val_loss", "accuracy", "val_accuracy"], framework="torch")
    Traceback (most recent call last):
    regplug.experiment.strategies.StrategyError: strategy 'es': plugin 'early_stopping' monitors 'val_acc', which no epoch's logs hold in torch (did you mean 'val_accuracy'?); they hold accuracy, loss, val_accuracy, val_loss
    """  # noqa: E501
    plugins = strategy.build_plugins() if plugins is None else list(plugins)
    available = list(dict.fromkeys(log_keys))
    penalties = any("on_loss" in implemented_hooks(p) for p in plugins)
    for index, plugin in enumerate(plugins):
        for key in monitored_keys(plugin):
            if key in available or (penalties and _PENALTY_KEY.match(key)):
                continue
            label = plugin_label(plugin)
            later = [plugin_label(p) for p in plugins[index + 1:] if key in added_keys(p)]
            if later:
                raise StrategyError(
                    f"strategy {strategy.name!r}: plugin {label!r} monitors {key!r}, which "
                    f"plugin {later[0]!r} adds to the logs, but {later[0]!r} is listed after "
                    f"it (the plugins see each epoch's logs in their order): list "
                    f"{later[0]!r} first")
            lowered = {k.lower(): k for k in available}
            close = difflib.get_close_matches(key.lower(), list(lowered), n=1)
            raise StrategyError(
                f"strategy {strategy.name!r}: plugin {label!r} monitors {key!r}, which no "
                f"epoch's logs hold in {framework}"
                + (f" (did you mean {lowered[close[0]]!r}?)" if close else "")
                + f"; they hold {', '.join(sorted(available)) or 'nothing'}"
                + (" and each penalty (<name>_penalty)" if penalties else ""))
        available.extend(k for k in added_keys(plugin) if k not in available)


def _requires(plugin: object) -> tuple[str, ...]:
    needs = getattr(plugin, "requires", ()) or ()
    return (needs,) if isinstance(needs, str) else tuple(needs)


def _builtin(name: str, *plugins: Mapping[str, Any], dropout: float | None = None,
             batch_norm: bool = False) -> Strategy:
    return Strategy(name, tuple(plugins), dropout, batch_norm, builtin=True)


#: Every strategy ``--strategies`` can name without a config. The first ten are the default
#: run: the comparison notebook's six (none, L2, L1, dropout, batch norm, batch norm +
#: dropout; dropout and batch norm after the last hidden layer, as there) and early stopping,
#: then what regplug adds (decoupled weight decay, proximal L1, a dropout schedule).
#: Strengths are chosen for the default run (the notebook MLP, SGD with momentum, batch
#: 128, 30 epochs on digits) from a sweep over three seeds: each acts visibly (a penalty,
#: a third of the weights exactly zero, a rising dropout rate) without costing test accuracy
#: beyond the seed-to-seed spread, which on digits is about ±0.5 % — the size of most
#: differences between the strategies there.
BUILTIN_STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    _builtin("none"),
    _builtin("l2", {"name": "l2", "l2": 1e-3}),
    _builtin("l1", {"name": "l1", "l1": 1e-4}),
    _builtin("dropout", dropout=0.2),
    _builtin("batch_norm", batch_norm=True),
    _builtin("batch_norm_dropout", dropout=0.2, batch_norm=True),
    _builtin("early_stopping", {"name": "early_stopping", "monitor": "val_loss",
                                "patience": 5, "restore_best_weights": True}),
    _builtin("decoupled_weight_decay", {"name": "decoupled_weight_decay",
                                        "weight_decay": 0.01}),
    _builtin("proximal_l1", {"name": "proximal_l1", "l1": 5e-3}),
    _builtin("dropout_schedule", {"name": "dropout_schedule",
                                  "rate": {"schedule": "linear", "start": 0.0, "end": 0.5,
                                           "span": 10, "per": "epoch"}}),
    # Available by name, not in the default run.
    _builtin("max_norm", {"name": "max_norm", "max_value": 2.0}),
    _builtin("elastic_net", {"name": "elastic_net", "l1": 1e-4, "l2": 1e-3}),
)}

#: The strategies of a plain ``regplug compare``, in table order.
DEFAULT_STRATEGIES: tuple[str, ...] = (
    "none", "l2", "l1", "dropout", "batch_norm", "batch_norm_dropout", "early_stopping",
    "decoupled_weight_decay", "proximal_l1", "dropout_schedule")


@dataclass(frozen=True)
class Preset:
    """The settings ``regplug compare --preset NAME`` runs with; an option given on the
    command line overrides its value. ``strengths`` replace built-in strategies of the
    same name (the others stay as :data:`BUILTIN_STRATEGIES` has them)."""

    name: str
    about: str
    data: str | None
    train_rows: int | None
    label_noise: float
    epochs: int
    seeds: int
    framework: str
    strengths: tuple[Strategy, ...] = ()

    def strategies(self) -> dict[str, Strategy]:
        """The built-in strategies with this preset's strengths, in the built-in order."""
        mine = {s.name: s for s in self.strengths}
        return {name: mine.get(name, strategy) for name, strategy in BUILTIN_STRATEGIES.items()}


#: ``--preset overfit`` (the default): a run where the unregularized network visibly fits
#: noise and the classic regularizers visibly cure it — 1,000 MNIST training rows, 30 % of
#: their labels replaced at random, 40 epochs, 5 seeds, torch. Its strengths are the best of
#: ``regplug tune`` grid searches on that task (7 points per range, the mean validation
#: cross-entropy over tune seeds 100 to 102, none of them a compare seed; docs/compare.md).
OVERFIT = Preset(
    "overfit", "MNIST, 1,000 training rows, 30 % of their labels replaced at random, "
               "40 epochs, 5 seeds, torch; strengths tuned for it",
    data="mnist", train_rows=1000, label_noise=0.3, epochs=40, seeds=5, framework="torch",
    strengths=(
        _builtin("l2", {"name": "l2", "l2": 0.01}),
        _builtin("l1", {"name": "l1", "l1": 0.003}),
        _builtin("dropout", dropout=0.9),
        _builtin("batch_norm_dropout", dropout=0.9, batch_norm=True),
        _builtin("decoupled_weight_decay", {"name": "decoupled_weight_decay",
                                            "weight_decay": 0.2}),
        _builtin("proximal_l1", {"name": "proximal_l1", "l1": 0.0316}),
        _builtin("dropout_schedule", {"name": "dropout_schedule",
                                      "rate": {"schedule": "linear", "start": 0.0, "end": 0.9,
                                               "span": 10, "per": "epoch"}}),
    ))
#: ``--preset notebook``: the course notebook's setting, what a plain ``regplug compare`` ran
#: before the overfit preset — digits, every training row, clean labels, 30 epochs, one
#: seed, torch and Keras, the strengths of :data:`BUILTIN_STRATEGIES`.
NOTEBOOK = Preset(
    "notebook", "digits, all rows, clean labels, 30 epochs, 1 seed, torch and Keras; the "
                "notebook's strengths",
    data=None, train_rows=None, label_noise=0.0, epochs=30, seeds=1, framework="both")
#: The presets by ``--preset`` name.
PRESETS: dict[str, Preset] = {p.name: p for p in (OVERFIT, NOTEBOOK)}
#: What a plain ``regplug compare`` runs.
DEFAULT_PRESET = "overfit"


def strategy_from_table(table: Mapping[str, Any], *, where: str) -> Strategy:
    """One strategy from a config table; every mistake is a :class:`StrategyError`.

    >>> strategy_from_table({"name": "wd", "plugins": [{"name": "l2", "l2": 0.01}]}, where="x")
    Strategy(name='wd', plugins=({'name': 'l2', 'l2': 0.01},), dropout=None, batch_norm=False,
             description='', builtin=False)
    """
    if not isinstance(table, Mapping):
        raise StrategyError(f"{where}: expected a table with a 'name' and 'plugins', got "
                            f"{table!r}")
    at = where  # the key path, for the messages about one key
    unknown = sorted(set(table) - set(_KEYS), key=str)
    if unknown:
        raise StrategyError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a "
                            f"strategy has {', '.join(_KEYS)}")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise StrategyError(f"{where}: 'name' must be a word of at most 64 letters, digits "
                            f"and _ . + - (it names a table row and files), got "
                            f"{_shorten(name)}")
    if name in ("default", "all"):
        raise StrategyError(f"{where}: {name!r} names a group of strategies on the command "
                            "line; choose another name")
    where = f"{where} ({name!r})"
    dropout = table.get("dropout")
    if dropout is not None:
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0 or not math.isfinite(dropout):
            raise StrategyError(f"{where}: 'dropout' must be a rate in [0, 1), got {dropout!r}")
        dropout = float(dropout)
    batch_norm = table.get("batch_norm", False)
    if not isinstance(batch_norm, bool):
        raise StrategyError(f"{where}: 'batch_norm' must be true or false, got {batch_norm!r}")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise StrategyError(f"{where}: 'description' must be a string, got {description!r}")
    plugins = table.get("plugins", [])
    if isinstance(plugins, Mapping) or not isinstance(plugins, list):
        raise StrategyError(f"{at}.plugins: expected a list of plugin tables, got "
                            f"{describe_value(plugins)}; write plugins = "
                            "[{name = \"l2\", l2 = 1e-4}], or [[strategies.plugins]] blocks")
    specs = []
    for index, spec in enumerate(plugins):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise StrategyError(f"{at}.plugins[{index}]: expected a table with a 'name' key "
                                "(a registry name, see `regplug plugins`), got "
                                f"{describe_value(spec)}")
        specs.append(dict(spec))
    strategy = Strategy(name, tuple(specs), dropout, batch_norm, description)
    strategy.build_plugins()  # unknown plugins and bad arguments fail now, not mid-run
    return strategy


def load_strategies(path: str | Path) -> dict[str, Strategy]:
    """Read custom strategies from a TOML file, in file order.

    ::

        [[strategies]]
        name = "strong_l2"
        plugins = [{name = "l2", l2 = 0.01}]

        [[strategies]]
        name = "bn_group_lasso"
        batch_norm = true
        dropout = 0.1
        [[strategies.plugins]]
        name = "group_lasso"          # a third-party plugin, by its entry-point name
        strength = 1e-3
    """
    label = f"config {str(path)!r}"
    try:
        data = read_toml(path)
    except ConfigError as err:
        raise StrategyError(str(err)) from None
    tables = data.get("strategies")
    others = sorted(set(data) - {"strategies"})
    if tables is None or others:
        raise StrategyError(
            f"{label}: expected [[strategies]] tables (each with a name and "
            f"plugins); found {', '.join(map(repr, sorted(data))) or 'nothing'}")
    return strategies_from_tables(tables, label=label, allow_empty=False)


def strategies_from_tables(tables: object, *, label: str,
                           allow_empty: bool = True) -> dict[str, Strategy]:
    """The strategies of a config's ``strategies`` value (its ``[[strategies]]`` blocks), by
    name in file order, for a config that holds other tables too (``regplug tune``'s
    ``[tune.<plugin>]``). ``label`` names the file in errors (``"config 'x.toml'"``); an
    empty list is refused unless ``allow_empty``. Each table is read by
    :func:`strategy_from_table`; a name defined twice is a :class:`StrategyError`.

    >>> found = strategies_from_tables([{"name": "a", "plugins": [{"name": "l2", "l2": 1e-3}]}],
    ...                                label="config 'x.toml'")
    >>> list(found), found["a"].describe()
    (['a'], 'L2(l2=0.001)')
    >>> strategies_from_tables({"name": "a"}, label="config 'x.toml'")
    Traceback (most recent call last):
    regplug.experiment.strategies.StrategyError: config 'x.toml': write each strategy as a [[strategies]] block (an array of tables), not [strategies]
    """  # noqa: E501
    if isinstance(tables, Mapping):
        raise StrategyError(f"{label}: write each strategy as a [[strategies]] "
                            "block (an array of tables), not [strategies]")
    if not isinstance(tables, list) or not (tables or allow_empty):
        raise StrategyError(f"{label}: strategies: expected a list of strategy tables "
                            f"([[strategies]] blocks), got {describe_value(tables)}")
    found: dict[str, Strategy] = {}
    for index, table in enumerate(tables):
        strategy = strategy_from_table(table, where=f"{label}: strategies[{index}]")
        if strategy.name in found:
            raise StrategyError(f"{label}: strategy {strategy.name!r} is defined twice")
        found[strategy.name] = strategy
    return found


def select_strategies(selection: str | Iterable[str] | None,
                      custom: Mapping[str, Strategy] | None = None, *,
                      builtin: Mapping[str, Strategy] | None = None,
                      default: Sequence[str] | None = None) -> list[Strategy]:
    """The strategies to run, in the order given.

    ``selection`` is a comma-separated string or a list of names; ``"default"`` stands for
    :data:`DEFAULT_STRATEGIES` and ``"all"`` for every built-in and custom strategy. Names
    come from the built-ins and ``custom`` (a config's strategies, which take precedence).
    Without a selection: the config's strategies if there are any, else the default ones.
    ``builtin`` replaces :data:`BUILTIN_STRATEGIES` (a :class:`Preset`'s strategies),
    ``default`` :data:`DEFAULT_STRATEGIES` (another task's, e.g. ``--task finetune``).

    >>> [s.name for s in select_strategies("none, l2")]
    ['none', 'l2']
    >>> select_strategies("l3")
    Traceback (most recent call last):
    regplug.experiment.strategies.StrategyError: unknown strategy 'l3' (did you mean 'l2'?); valid:
    none, l2, l1, dropout, batch_norm, batch_norm_dropout, early_stopping, decoupled_weight_decay,
    proximal_l1, dropout_schedule, max_norm, elastic_net, default, all
    """
    import difflib

    custom = dict(custom or {})
    catalogue = {**(BUILTIN_STRATEGIES if builtin is None else builtin), **custom}
    defaults = DEFAULT_STRATEGIES if default is None else tuple(default)
    if selection is None:
        return list(custom.values()) if custom else [catalogue[n] for n in defaults]
    names = [n.strip() for n in selection.split(",")] if isinstance(selection, str) \
        else [str(n).strip() for n in selection]
    names = [n for n in names if n]
    if not names:
        raise StrategyError("no strategy selected; name at least one, e.g. --strategies none,l2")
    chosen: list[Strategy] = []
    for name in names:
        if name == "default":
            group = [catalogue[n] for n in defaults]
        elif name == "all":
            group = list(catalogue.values())
        elif name in catalogue:
            group = [catalogue[name]]
        else:
            valid = [*catalogue, "default", "all"]
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5) \
                if len(name) <= 64 else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StrategyError(f"unknown strategy {_shorten(name)}{hint}; valid: "
                                f"{', '.join(valid)}")
        chosen.extend(s for s in group if s not in chosen)
    return chosen

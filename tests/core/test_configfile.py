"""Configs, from TOML files or plain Python: every mistake is a named ConfigError (a
RegplugError) — the file, the line, the key path, what is allowed — never a traceback."""

from __future__ import annotations

import contextlib
import re
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import regplug
from regplug.builtins import BUILTIN_PLUGINS
from regplug.cli import main
from regplug.configfile import MAX_NESTING, ConfigError, ConfigTypeError, read_toml
from regplug.errors import RegplugError
from regplug.experiment.strategies import StrategyError, load_strategies, strategy_from_table


def write(tmp_path, text: str | bytes, name: str = "c.toml"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


# -- plain configs -----------------------------------------------------------------------------
def test_a_single_name_is_not_iterated_character_by_character():
    with pytest.raises(ConfigTypeError, match=re.escape(
            "plugin config: plugins: expected a list of plugins, got the string 'l2'; for one "
            "plugin write ['l2']")):
        regplug.build_plugins("l2")  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [5, {"plugins": 5}, None, 2.5])
def test_a_plugins_value_that_is_not_a_list_is_named(config):
    with pytest.raises(ConfigTypeError, match=r"^plugin config: plugins: expected a list of "
                                              r"plugin tables, got (5|None|2\.5)$"):
        regplug.build_plugins(config)  # type: ignore[arg-type]


@pytest.mark.parametrize(("item", "got"), [
    (5, "got 5"), ({"name": 5}, "got a table {'name': 5}"), (("l2", 5), "got ('l2', 5)")])
def test_an_entry_that_is_not_a_plugin_is_named_by_its_index(item, got):
    with pytest.raises(ConfigTypeError, match=re.escape("plugin config: plugins[1]: expected a "
                                                        "plugin name")) as err:
        regplug.build_plugins(["l2", item])
    assert str(err.value).endswith(got)


def test_a_plugins_refusal_of_its_arguments_is_a_config_error_keeping_its_type():
    with pytest.raises(ConfigTypeError, match=r"^plugin config: L2: argument 'l2' must be a real"):
        regplug.build_plugins([{"name": "l2", "l2": "big"}])
    with pytest.raises(ConfigError, match=r"^plugin config: L2: argument 'l2' must be a finite"):
        regplug.build_plugins([{"name": "l2", "l2": -1}])


# -- TOML files -------------------------------------------------------------------------------
def test_plugins_5_in_a_toml_file_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path, "plugins = 5\n")
    with pytest.raises(ConfigTypeError, match=re.escape(
            f"plugin config {str(path)!r}: plugins: expected a list of plugin tables, got 5")):
        regplug.load_config(path)


def test_plugins_5_in_a_strategy_names_the_key_path(tmp_path):
    path = write(tmp_path, """
        [[strategies]]
        name = "a"
        [[strategies]]
        name = "b"
        plugins = 5
    """)
    with pytest.raises(StrategyError, match=re.escape(
            f"config {str(path)!r}: strategies[1].plugins: expected a list of plugin tables, "
            "got 5")):
        load_strategies(path)
    write(tmp_path, "strategies = 5\n")
    with pytest.raises(StrategyError, match=r"strategies: expected a list of strategy tables"):
        load_strategies(path)


def test_a_toml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path, '[[plugins]]\nname = "l2"\nl2 = 1e-4 1\n')
    with pytest.raises(ConfigError, match=r"is not valid TOML: .*\(at line 3, column 11\)"):
        regplug.load_config(path)


LATIN1 = '# r\xe9gularisation\n[[plugins]]\nname = "l2"\n'.encode("latin-1")


def test_a_file_that_is_not_utf8_is_named_with_the_bad_byte(tmp_path):
    path = write(tmp_path, LATIN1)
    message = (f"{str(path)!r} is not UTF-8 text (TOML files must be): byte 0xe9 at line 1, "
               "column 4; save it as UTF-8")
    with pytest.raises(ConfigError, match=re.escape(f"plugin config {message}")):
        regplug.load_config(path)
    with pytest.raises(StrategyError, match=re.escape(f"config {message}")):
        load_strategies(path)


DEEP = "x = " + "[" * 20_000 + "]" * 20_000 + "\n"


@pytest.mark.parametrize("body", [
    DEEP,                                                      # tomllib recurses: too deep to parse
    "x = " + "{a = " * 5_000 + "1" + "}" * 5_000 + "\n",        # inline tables
    "plugins = " + "[" * 40 + "]" * 40 + "\n",                # parses, deeper than the limit
    "[" + ".".join(["a"] * 200) + "]\nx = 1\n",               # dotted table headers
])
def test_deeply_nested_toml_is_a_named_error_not_a_recursion_error(tmp_path, body):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=rf"nests .* (deeply to parse|more than {MAX_NESTING})"):
        regplug.load_config(path)
    with pytest.raises(StrategyError, match=r"nests "):
        load_strategies(path)


def test_nesting_up_to_the_limit_is_read(tmp_path):
    path = write(tmp_path, "x = " + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1) + "\n")
    assert isinstance(read_toml(path)["x"], list)


def test_the_cli_answers_a_deep_config_with_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, DEEP)
    assert main(["compare", "--list", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("regplug: error: config ") and "nests" in err


# -- fuzzing ----------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12)
names = st.one_of(st.sampled_from(sorted(set(BUILTIN_PLUGINS) - {"overfit_batch"})),
                  st.text(max_size=6))
arguments = st.sampled_from(["l1", "l2", "weight_decay", "max_value", "rate", "monitor",
                             "patience", "min_delta", "include", "exclude", "kinds", "mode",
                             "schedule", "value", "per", "start", "end", "span"])
plugin_tables = st.builds(lambda name, kwargs: {"name": name, **kwargs}, names,
                          st.dictionaries(st.one_of(arguments, st.text(max_size=4)), values,
                                          max_size=3))
configs = st.one_of(values, st.lists(st.one_of(plugin_tables, values), max_size=3),
                    st.dictionaries(st.just("plugins"), st.lists(plugin_tables, max_size=3)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_config_builds_plugins_or_raises_a_regplug_error(config):
    try:
        built = regplug.build_plugins(config)
    except RegplugError:
        return
    assert isinstance(built, list)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["name", "plugins", "dropout", "batch_norm",
                                        "description", "other"]), values, max_size=5),
       st.lists(plugin_tables, max_size=2))
def test_any_strategy_table_is_a_strategy_or_a_strategy_error(table, plugins):
    if "plugins" not in table:
        table = {**table, "plugins": plugins}
    with contextlib.suppress(StrategyError):
        strategy_from_table(table, where="strategies[0]")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
def test_any_file_is_a_table_or_a_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_bytes(raw)
    with contextlib.suppress(RegplugError):
        regplug.load_config(path)

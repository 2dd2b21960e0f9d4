"""Plugins by name: built-ins, entry-point discovery (never switched on), configs."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

import regplug
from regplug.builtins import BUILTIN_PLUGINS
from regplug.registry import available_plugins

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install a fake distribution 'acme-reg' with a good, a broken and a shadowing plugin."""
    (tmp_path / "acme_reg.py").write_text(textwrap.dedent("""
        import regplug

        class Orthogonal(regplug.Plugin):
            def __init__(self, strength=0.1):
                self.strength = strength
            @regplug.hookimpl
            def on_step(self, run, step):
                pass
    """))
    (tmp_path / "acme_broken.py").write_text("raise ImportError('needs libfoo')\n")
    dist = tmp_path / "acme_reg-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-reg\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [regplug]
        orthogonal = acme_reg:Orthogonal
        broken = acme_broken:Thing
        l2 = acme_reg:Orthogonal
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield
    sys.modules.pop("acme_reg", None)


def test_builtin_table_matches_the_entry_points_declared_in_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["regplug"]
    assert declared == BUILTIN_PLUGINS


#: Arguments of built-ins that have no sensible default (a dropout schedule needs its rate).
REQUIRED_ARGS = {"dropout_schedule": {"rate": 0.1},
                 "overfit_batch": {"x": [[0.0]], "y": [0]}}


def test_every_builtin_loads_and_is_a_plugin_with_state():
    for name, info in available_plugins().items():
        if info.builtin:
            plugin = regplug.create_plugin(name, **REQUIRED_ARGS.get(name, {}))
            assert callable(plugin.state_dict) and callable(plugin.load_state_dict), name


def test_discovered_plugin_is_available_by_name_with_its_distribution(third_party):
    info = available_plugins()["orthogonal"]
    assert info.distribution == "acme-reg 1.2" and not info.builtin
    plugin = regplug.create_plugin("orthogonal", strength=0.5)
    assert plugin.strength == 0.5


def test_discovery_does_not_switch_a_plugin_on(third_party):
    built = regplug.build_plugins(["l2"])
    assert [type(p).__name__ for p in built] == ["L2"]


def test_a_third_party_name_cannot_shadow_a_builtin(third_party):
    plugins = available_plugins()
    assert plugins["l2"].builtin
    assert plugins["acme-reg:l2"].target == "acme_reg:Orthogonal"


def test_a_broken_plugin_is_reported_without_breaking_the_others(third_party):
    with pytest.raises(regplug.PluginLoadError, match=r"'broken' from acme-reg 1.2 failed to load .*needs libfoo"):
        regplug.create_plugin("broken")
    assert type(regplug.create_plugin("orthogonal")).__name__ == "Orthogonal"


def test_autoload_can_be_disabled_by_environment(third_party, monkeypatch):
    monkeypatch.setenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "orthogonal" not in available_plugins()
    assert "l2" in available_plugins()
    with pytest.raises(regplug.UnknownPluginError, match="discovery is off"):
        regplug.create_plugin("orthogonal")


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(regplug.UnknownPluginError) as err:
        regplug.create_plugin("l3")
    # Every available name, sorted (installed third-party plugins included).
    assert str(err.value) == ("unknown plugin 'l3'; available: "
                              + ", ".join(sorted(available_plugins())))
    with pytest.raises(regplug.UnknownPluginError, match="did you mean 'l2'"):
        regplug.create_plugin("L2")
    with pytest.raises(regplug.UnknownPluginError, match="did you mean 'proximal_l1'"):
        regplug.create_plugin("proximal_L1")


def test_wrong_keyword_lists_the_accepted_ones():
    with pytest.raises(TypeError, match=r"plugin 'l2': .*'lambda'.*accepts l2, kinds, include, exclude"):
        regplug.create_plugin("l2", **{"lambda": 0.1})


def test_build_plugins_accepts_names_tables_and_pairs():
    built = regplug.build_plugins(["l1", {"name": "l2", "l2": 1e-4},
                                   ("max_norm", {"max_value": 3.0})])
    assert repr(built) == "[L1(l1=0.01), L2(l2=0.0001), MaxNorm(max_value=3.0)]"


def test_build_plugins_rejects_entries_it_cannot_read():
    with pytest.raises(ValueError, match=r"plugin config: plugins\[1\]: expected a plugin name"):
        regplug.build_plugins(["l2", {"l2": 0.1}])
    with pytest.raises(ValueError, match="'plugins' list"):
        regplug.build_plugins({"plugin": []})


def test_toml_config_builds_plugins_with_schedules(tmp_path):
    path = tmp_path / "reg.toml"
    path.write_text(textwrap.dedent("""
        [[plugins]]
        name = "l2"
        l2 = { schedule = "linear_warmup", value = 1e-3, warmup_steps = 100 }
        exclude = ["head.*"]

        [[plugins]]
        name = "decoupled_weight_decay"
        weight_decay = 0.05
    """))
    l2, wd = regplug.load_config(path)
    assert repr(l2) == ("L2(l2=LinearWarmup(value=0.001, start=0.0, warmup_steps=100, "
                        "warmup_epochs=None), kinds=['weight'], exclude=['head.*'])")
    assert repr(wd) == "DecoupledWeightDecay(weight_decay=0.05)"


def test_toml_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[plugins]\n")
    with pytest.raises(ValueError, match="bad.toml' is not valid TOML"):
        regplug.load_config(bad)
    with pytest.raises(ValueError, match="missing.toml' cannot be read"):
        regplug.load_config(tmp_path / "missing.toml")


def test_a_toml_plugins_table_instead_of_an_array_of_tables_is_explained(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text('[plugins]\nname = "l2"\n')
    with pytest.raises(ValueError, match=r"write each plugin as \[\[plugins\]\] \(an array of tables\), not \[plugins\]"):
        regplug.load_config(path)

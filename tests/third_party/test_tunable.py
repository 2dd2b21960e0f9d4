"""Third-party plugins are tunable the way built-ins are: the registry reads the ``tunable``
declaration of a plugin found through its entry point.

The example package ``examples/regplug-group-lasso`` is used as installed when it is (tox
installs it); otherwise a distribution is faked in a temporary folder — its metadata with
the entry point the example's pyproject declares, its source folder on ``sys.path`` — so
discovery still goes through ``importlib.metadata`` exactly as for an installed package.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tomllib

import regplug
from regplug.ranges import FloatRange, SpaceError, apply_value, grid_values, parse_overrides
from regplug.registry import available_plugins, build_plugins
from regplug.testing import NumpyLoop

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "regplug-group-lasso"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]


def _fake_distribution(folder: Path, name: str, version: str, entry_points: str) -> None:
    dist = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def group_lasso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The example plugin's distribution label, available through its entry point."""
    monkeypatch.delenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    if importlib.util.find_spec("regplug_group_lasso") is not None:
        yield f"{PROJECT['name']} {PROJECT['version']}"
        return
    points = "".join(f"{k} = {v}\n" for k, v in PROJECT["entry-points"]["regplug"].items())
    _fake_distribution(tmp_path, PROJECT["name"], PROJECT["version"], f"[regplug]\n{points}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    yield f"{PROJECT['name']} {PROJECT['version']}"
    for module in [m for m in sys.modules if m.startswith("regplug_group_lasso")]:
        del sys.modules[module]


def test_the_entry_point_plugin_declares_its_strength_through_the_registry(group_lasso):
    info = available_plugins()["group_lasso"]
    assert (info.distribution, info.builtin) == (group_lasso, False)
    assert info.tunable() == {"strength": FloatRange(1e-6, 1e-1, log=True)}
    assert info.tunable() == dict(info.load().tunable)


def test_the_third_party_plugin_builds_and_penalizes_across_its_range(group_lasso):
    (space,) = available_plugins()["group_lasso"].tunable().values()
    base = {"name": "group_lasso", "strength": 1e-3}
    params = {"w": np.ones((1, 4))}  # penalty = strength · √4 · ‖w‖ = 4 · strength
    for value in grid_values(space, 4):
        (plugin,) = build_plugins([apply_value(base, "strength", value)])
        assert NumpyLoop(params, [plugin]).penalty() == pytest.approx(4 * value)


def test_a_tune_config_overrides_the_third_party_range(group_lasso):
    table = tomllib.loads("[tune.group_lasso]\nstrength = {low = 1e-4, high = 1e-2, log = true}")
    factory = available_plugins()["group_lasso"].load()
    space = parse_overrides(factory, table["tune"]["group_lasso"], where="tune.group_lasso")
    assert space == {"strength": FloatRange(1e-4, 1e-2, log=True)}


MODULE = textwrap.dedent("""
    from regplug.ranges import Choice, FloatRange

    class Smoothing:  # no regplug.Plugin: any object with hooks and the attribute will do
        tunable = {"eps": FloatRange(0.0, 0.3), "per": Choice(["step", "epoch"])}
        def __init__(self, eps=0.1, per="epoch"):
            self.eps = eps
        def on_step(self, run, step):
            pass

    class Misdeclared:
        tunable = {"strenght": FloatRange(0.0, 1.0)}
        def __init__(self, strength=0.1):
            self.strength = strength
        def on_step(self, run, step):
            pass
""")


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "acme_tunable.py").write_text(MODULE)
    _fake_distribution(tmp_path, "acme-tunable", "2.0", textwrap.dedent("""
        [regplug]
        smoothing = acme_tunable:Smoothing
        misdeclared = acme_tunable:Misdeclared
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield
    sys.modules.pop("acme_tunable", None)


def test_a_plain_class_is_tunable_and_a_misdeclared_one_is_named(acme):
    plugins = available_plugins()
    assert plugins["smoothing"].tunable() == {
        "eps": FloatRange(0.0, 0.3), "per": regplug.ranges.Choice(("step", "epoch"))}
    with pytest.raises(SpaceError, match=r"^plugin 'misdeclared' \(acme_tunable\.Misdeclared\): "
                                         r"tunable key 'strenght' is not an argument of its "
                                         r"constructor; it accepts strength$"):
        plugins["misdeclared"].tunable()
    assert plugins["l2"].tunable()  # the others are unaffected

"""What gets installed: one import name, the built-ins as entry points, a framework-free core."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import regplug
from regplug.builtins import BUILTIN_PLUGINS

from_wheel = pytest.mark.skipif(os.environ.get("REGPLUG_TESTING_WHEEL") != "1",
                                reason="only meaningful against the wheel tox installs")


@from_wheel
def test_tests_run_against_the_installed_wheel_not_the_checkout():
    checkout = Path(__file__).resolve().parents[2]
    installed = Path(regplug.__file__).resolve()
    assert installed.parent != checkout / "regplug", installed
    assert "site-packages" in installed.parts, installed


@from_wheel
def test_no_top_level_plugins_or_adapters_module_is_installed():
    for name in ("plugins", "adapters"):
        spec = importlib.util.find_spec(name)
        assert spec is None, f"a top-level {name!r} module is importable from {spec.origin}"


@from_wheel
def test_the_distribution_ships_only_the_regplug_package():
    files = metadata.files("regplug") or []
    top = {Path(str(f)).parts[0] for f in files if str(f).endswith(".py")}
    assert top == {"regplug"}, top


def test_builtins_are_declared_as_entry_points_of_group_regplug():
    declared = {ep.name: ep.value for ep in metadata.entry_points(group="regplug")
                if ep.dist is not None and ep.dist.name == "regplug"}
    assert declared == BUILTIN_PLUGINS


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
               if ep.dist is not None and ep.dist.name == "regplug"}
    assert scripts == {"regplug": "regplug.cli:main"}


# Subprocesses run outside the checkout: `python -c` would put the source folders first.
def test_core_and_plugins_import_no_framework(tmp_path):
    code = ("import sys, regplug, regplug.plugins, regplug.testing, regplug.registry;"
            "regplug.available_plugins();"
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_cli_lists_the_builtins(tmp_path):
    out = subprocess.run([sys.executable, "-m", "regplug", "plugins", "--wide"], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout
    for name in BUILTIN_PLUGINS:
        assert name in out
    assert "DecoupledWeightDecay" in out and "on_before_step" in out


@from_wheel
def test_the_wheel_ships_every_source_module_and_nothing_else():
    """A subpackage left out of pyproject's ``packages`` list (adapters/keras/patches/ once was)
    is missing from the wheel, and a stale ``build/lib`` can ship modules deleted since: the
    installed .py files are exactly the checkout's, mapped as pyproject's package-dir maps them."""
    checkout = Path(__file__).resolve().parents[2]
    folders = {"regplug": "regplug", "plugins": "regplug/plugins", "adapters": "regplug/adapters"}
    expected = set()
    for folder, installed in folders.items():
        for source in (checkout / folder).rglob("*.py"):
            relative = source.relative_to(checkout / folder).as_posix()
            expected.add(f"{installed}/{relative}")
    shipped = {str(f) for f in metadata.files("regplug") or [] if str(f).endswith(".py")}
    assert not expected - shipped, f"modules missing from the wheel: {sorted(expected - shipped)}"
    assert not shipped - expected, f"modules the checkout no longer has: {sorted(shipped - expected)}"

"""The API reference (docs/api/*.md) has an entry for every public name.

mkdocstrings renders a ``::: regplug.X`` line from X's docstring; a public name without
one has no page. The public names are those the modules export: ``__all__`` of regplug,
regplug.plugins and each adapter, and the public names regplug.testing and
regplug.uncertainty define. Everything is read from the sources (no framework, no mkdocs
needed), following ``from .x import Name`` to where a name is defined, so
``regplug.MCPrediction`` and ``regplug.uncertainty.MCPrediction`` are one entry.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "api"
# where each package's sources are in the checkout (the wheel maps them under regplug/)
PACKAGE_DIRS = {"regplug.plugins": ROOT / "plugins", "regplug.adapters": ROOT / "adapters",
                "regplug": ROOT / "regplug"}
PUBLIC_MODULES = ["regplug", "regplug.plugins", "regplug.adapters.torch",
                  "regplug.adapters.keras", "regplug.adapters.lightning",
                  "regplug.adapters.transformers", "regplug.testing", "regplug.uncertainty"]


def source_file(module: str) -> Path | None:
    """The file of a module of the installed package, in the checkout."""
    for package, folder in PACKAGE_DIRS.items():  # longest prefixes first
        if module == package or module.startswith(package + "."):
            base = folder.joinpath(*module[len(package):].split(".")[1:])
            for candidate in (base / "__init__.py", base.with_suffix(".py")):
                if candidate.is_file():
                    return candidate
            return None
    return None


@cache
def parse(module: str) -> ast.Module:
    path = source_file(module)
    assert path is not None, f"no source for {module}"
    return ast.parse(path.read_text())


def _is_package(module: str) -> bool:
    path = source_file(module)
    return path is not None and path.name == "__init__.py"


def _imported_from(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if _is_package(module) else parts[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def defined_names(module: str) -> dict[str, str]:
    """Names a module binds at top level: those it defines map to themselves
    (``module.name``), those it imports to the dotted name they come from."""
    names: dict[str, str] = {}
    for node in parse(module).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = f"{module}.{node.name}"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = f"{module}.{target.id}"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = f"{module}.{node.target.id}"
        elif isinstance(node, ast.ImportFrom):
            origin = _imported_from(module, node)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{origin}.{alias.name}"
    return names


def exported(module: str) -> list[str]:
    """``__all__``, or else the public names the module defines itself."""
    for node in parse(module).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return [name for name, origin in defined_names(module).items()
            if not name.startswith("_") and origin == f"{module}.{name}"]


def canonical(dotted: str) -> str | None:
    """Where ``dotted`` (a module, or a name in one) is defined; None if nowhere."""
    if source_file(dotted) is not None:
        return dotted
    module, _, name = dotted.rpartition(".")
    if not module or source_file(module) is None:
        return None
    origin = defined_names(module).get(name)
    if origin is None:
        return dotted if name in exported(module) and source_file(f"{module}.{name}") else None
    if origin == f"{module}.{name}":
        return origin
    if not origin.startswith("regplug"):
        return origin  # a name taken from another package: documented there
    return canonical(origin)


DIRECTIVE = re.compile(r"^::: *([\w.]+)[ \t]*\n((?:(?:    |\t).*\n|[ \t]*\n)*)", re.M)


def directives() -> list[tuple[str, str, list[str]]]:
    """(page, target, members listed in its options) of every ``:::`` line in docs/api."""
    found = []
    for page in sorted(API.glob("*.md")):
        for target, options in DIRECTIVE.findall(page.read_text()):
            members: list[str] = []
            listed = re.search(r"^\s*members:\s*(\[.*?\]|\n(?:\s*- *\w+\s*\n?)+)", options, re.M)
            if listed:
                members = re.findall(r"\w+", listed.group(1))
            found.append((page.name, target, members))
    return found


def documented() -> dict[str, list[str]]:
    """Each object the reference renders (its canonical name) → the entries rendering it."""
    rendered: dict[str, list[str]] = {}
    for page, target, members in directives():
        for name in [target] + [f"{target}.{m}" for m in members]:
            where = canonical(name)
            assert where is not None, f"docs/api/{page}: '::: {name}' names nothing in regplug"
            rendered.setdefault(where, []).append(f"{page}: {name}")
    return rendered


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_has_an_entry_in_the_api_reference(module):
    names = exported(module)
    assert names, f"{module} exports nothing?"
    rendered = documented()
    missing = [name for name in names if canonical(f"{module}.{name}") not in rendered]
    assert not missing, (f"public names of {module} without a '::: {module}.<name>' entry in "
                         f"docs/api/*.md: {missing}")


def test_every_hook_has_an_entry_in_the_api_reference():
    (names,) = [ast.literal_eval(node.value) for node in parse("regplug.hookspecs").body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.target.id == "HOOK_NAMES"]
    assert "on_loss" in names
    rendered = documented()
    missing = [name for name in names if f"regplug.hookspecs.{name}" not in rendered]
    assert not missing, f"hooks without an entry in docs/api/hooks.md: {missing}"


def test_every_entry_names_something_and_nothing_is_rendered_twice():
    # documented() fails on an entry naming nothing (a renamed or removed object); an object
    # rendered twice gets two anchors, and cross-references to it would be ambiguous
    twice = {where: entries for where, entries in documented().items() if len(entries) > 1}
    assert not twice, twice


def test_the_reference_covers_each_public_module_and_has_pages_in_the_site_nav():
    rendered = documented()
    for module in PUBLIC_MODULES:
        assert module in rendered, f"{module}'s own docstring has no '::: {module}' entry"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in API.glob("*.md"):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in mkdocs.yml's nav"


def test_the_check_itself_sees_a_missing_name(tmp_path, monkeypatch):
    """A reference page losing an entry makes the check fail (the check is not vacuous)."""
    page = (API / "plugins.md").read_text()
    assert "::: regplug.plugins.L2\n" in page
    (tmp_path / "plugins.md").write_text(page.replace("::: regplug.plugins.L2\n", ""))
    for other in API.glob("*.md"):
        if other.name != "plugins.md":
            (tmp_path / other.name).write_text(other.read_text())
    monkeypatch.setattr(sys.modules[__name__], "API", tmp_path)
    assert canonical("regplug.plugins.L2") not in documented()
    assert canonical("regplug.plugins.L2") == "regplug.plugins.penalties.L2"
    assert canonical("regplug.MCPrediction") == canonical("regplug.uncertainty.MCPrediction")

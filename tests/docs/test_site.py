"""The docs site's configuration (mkdocs.yml) and its build helpers (docs/_hooks/), checked
without mkdocs: the nav and the pages agree, the site needs no network, the API reference
reads the package in its installed layout, and the docstrings' reST forms become Markdown.
(`tox -e docs` builds the site with warnings as errors; tests/browser looks at it.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIG = (ROOT / "mkdocs.yml").read_text()


def _hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_site_{name}", DOCS / "_hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav() -> list[str]:
    nav = CONFIG[CONFIG.index("\nnav:"):]
    return re.findall(r"^\s+- (?:[^\n]*?: )?([\w./-]+\.md)\s*$", nav, re.M)


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")
             if "_hooks" not in page.parts}
    nav = _nav()
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert set(nav) == pages, (f"in the nav, no such page: {sorted(set(nav) - pages)}; "
                               f"pages not in the nav: {sorted(pages - set(nav))}")
    for loop in ("torch", "keras", "lightning", "transformers"):
        assert f"loops/{loop}.md" in nav and f"api/{loop}.md" in nav


def test_the_site_needs_no_network():
    assert re.search(r"^theme:\n(?:  .*\n)*  font: false$", CONFIG, re.M), "no web fonts"
    assert not re.search(r"^\s*analytics:", CONFIG, re.M)
    for key in ("extra_css", "extra_javascript"):
        block = re.search(rf"^{key}:\n((?:  - .*\n)+)", CONFIG, re.M)
        for entry in re.findall(r"- (\S+)", block.group(1)) if block else []:
            assert not re.match(r"(https?:)?//", entry), entry
            assert (DOCS / entry).is_file(), entry


def test_the_api_sources_are_laid_out_as_the_wheel_installs_them():
    """The hook copies regplug/, plugins/ and adapters/ to where the wheel puts them; that
    mapping is pyproject's package-dir."""
    hook = _hook("api_source")
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    assert {installed.replace("/", "."): folder
            for installed, folder in hook.LAYOUT.items()} == package_dir
    sources = {str(path): source for path, source in hook._sources().items()}
    assert sources["regplug/plugins/penalties.py"] == ROOT / "plugins" / "penalties.py"
    assert sources["regplug/adapters/lightning.py"] == ROOT / "adapters" / "lightning.py"
    assert sources["regplug/__init__.py"] == ROOT / "regplug" / "__init__.py"
    assert not any("__pycache__" in path for path in sources)


def test_the_docstrings_rest_forms_become_markdown():
    pytest.importorskip("griffe", reason="the docs site's docstring hook needs mkdocstrings "
                        "(pip install 'regplug[docs]'); tox -e docs runs this test")
    to_markdown = _hook("docstrings").to_markdown
    text = """Uses :class:`~regplug.run.Run` and :func:`regplug.build_plugins`.

:param model: the model,
    wrapped or not.
:param kinds, include: the selection.
:returns: the run.

The pattern::

    with attach(model) as reg:
        pass

====  ======
name  value
====  ======
``a`` 1
``b`` 2
====  ======

>>> [0.0, 0.1]
[0.0, 0.1]

Docs: docs/loops/torch.md."""
    out = to_markdown(text)
    assert out.startswith("Uses `Run` and `regplug.build_plugins`.")
    assert "- **`model`**: the model,\n  wrapped or not." in out
    assert "- **`kinds`**, **`include`**: the selection." in out
    assert "- **returns**: the run." in out
    assert "The pattern:\n\n```\nwith attach(model) as reg:\n    pass\n```" in out
    assert "| name | value |\n| --- | --- |\n| ``a`` | 1 |\n| ``b`` | 2 |" in out
    assert "```pycon\n>>> [0.0, 0.1]\n[0.0, 0.1]\n```" in out
    title = (DOCS / "loops" / "torch.md").read_text().splitlines()[0].removeprefix("# ")
    assert f"Docs: [{title}](../loops/torch.md)." in out
    assert to_markdown("see docs/no-such-page.md") == "see docs/no-such-page.md"


def test_files_the_site_includes_have_no_repository_relative_links():
    """BENCHMARKS.md and CHANGELOG.md are pasted into docs/project/ pages at build time: a
    link written relative to the repository root there breaks `mkdocs build --strict`."""
    included = {match for page in DOCS.rglob("*.md")
                for match in re.findall(r'^--8<-- "([^"]+)"', page.read_text(), re.M)}
    assert {"BENCHMARKS.md", "CHANGELOG.md"} <= included
    for name in sorted(included):
        links = re.findall(r"\]\(([^)#][^)]*)\)", (ROOT / name).read_text())
        relative = [link for link in links if not re.match(r"[a-z]+://", link)]
        assert not relative, f"{name} links {relative}: write the path as text or a full URL"

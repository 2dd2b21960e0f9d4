"""Module docstrings stay short (a module says what it is and links its docs page; manuals
live in docs/), and the clock table has a column per loop."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import regplug
import regplug.adapters
import regplug.plugins
from regplug.hookspecs import HOOK_NAMES

MAX_LINES = 15
DOCS = Path(__file__).resolve().parents[2] / "docs"

def _sources() -> dict[str, Path]:
    """Every module of regplug, regplug.plugins and regplug.adapters, by dotted name, found
    as files in the installed package (nothing is imported: no framework is needed)."""
    found: dict[str, Path] = {}
    for package in (regplug, regplug.plugins, regplug.adapters):
        for folder in map(Path, package.__path__):
            for path in sorted(folder.rglob("*.py")):
                parts = path.relative_to(folder).with_suffix("").parts
                if "__pycache__" in parts:
                    continue
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                name = ".".join((package.__name__, *parts))
                if package is regplug and parts[:1] in (("plugins",), ("adapters",)):
                    continue  # a non-editable install nests them; walked on their own
                found[name] = path
    return found


SOURCES = _sources()


def _docstring(path: Path) -> str | None:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


def test_the_modules_are_found():
    assert {"regplug", "regplug.hookspecs", "regplug.plugins", "regplug.plugins.penalties",
            "regplug.adapters", "regplug.adapters.torch.uncertainty"} <= set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_module_docstring_is_short(name):
    doc = _docstring(SOURCES[name])
    assert doc, f"{name} has no module docstring: say in one line what the module is"
    lines = len(doc.splitlines())
    assert lines <= MAX_LINES, (
        f"{name}: the module docstring has {lines} lines (at most {MAX_LINES}); say what the "
        "module is, link its docs page, and move the manual into docs/ or into the docstrings "
        "of the functions and classes it describes")


DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_module_docstring_links_a_docs_page_that_exists(name):
    doc = _docstring(SOURCES[name]) or ""
    pages = re.findall(r"\bdocs/([\w/.-]+\.md)", doc)
    assert pages, f"{name}: the module docstring links no docs page (a 'Docs: docs/....md' line)"
    for page in pages:
        assert (DOCS / page).is_file(), f"{name} links docs/{page}, which does not exist"


def test_the_budget_check_counts_lines():
    """The check above is not vacuous: a long docstring is seen as long."""
    long = "\n".join(f"line {i}" for i in range(MAX_LINES + 1))
    assert len(ast.get_docstring(ast.parse(f'"""{long}"""')).splitlines()) == MAX_LINES + 1


# -- the clock table: when each hook fires, with a column per loop -----------------------------
LOOPS = ("PyTorch", "Keras", "Lightning", "Hugging Face")


def _clock_table() -> tuple[list[str], dict[str, list[str]]]:
    text = (DOCS / "clock-and-window.md").read_text(encoding="utf-8")
    section = text.split("## When each hook fires, in each loop", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("- ")]
    return header, {re.sub(r"`", "", row[0]): row[1:] for row in body}


def test_the_clock_table_has_a_column_per_loop_and_a_row_per_hook():
    header, rows = _clock_table()
    assert len(header) == 1 + len(LOOPS)
    for loop, column in zip(LOOPS, header[1:]):
        assert loop in column, (loop, column)
    assert list(rows) == list(HOOK_NAMES)
    for hook, cells in rows.items():
        assert len(cells) == len(LOOPS) and all(cells), (hook, cells)


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_each_hook_spec_says_when_it_fires_in_each_loop(hook):
    from regplug import hookspecs

    doc = getattr(hookspecs, hook).__doc__ or ""
    text = " ".join(doc.split())
    for loop in LOOPS:
        assert loop in text, f"the spec of {hook} does not say when it fires in {loop}"

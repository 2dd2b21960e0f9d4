"""mkdocs hook: lay out the source tree as the installed package for the API reference.

In the repository regplug.plugins lives in plugins/ and regplug.adapters in adapters/; the
wheel maps them under regplug/. griffe reads source files, not import hooks (and resolves
symlinks), so this hook copies the sources to build/docs-api-src/regplug/ in the installed
layout: regplug/ with plugins/ and adapters/ inside. mkdocs.yml points mkdocstrings' ``paths``
there. It runs at mkdocs' ``on_startup`` event, before mkdocstrings sets up its Python
handler (whose search paths must exist by then), and again at each ``on_config`` (the
rebuilds of ``mkdocs serve``); each file is swapped in atomically, so two builds at once do
not read half-written files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "build" / "docs-api-src"
LAYOUT = {"regplug": "regplug", "regplug/plugins": "plugins", "regplug/adapters": "adapters"}


def _sources() -> dict[Path, Path]:
    """Each source file (.py, .pyi, py.typed) by its path in the installed layout."""
    files: dict[Path, Path] = {}
    for installed, folder in LAYOUT.items():
        for source in (ROOT / folder).rglob("*"):
            if source.is_file() and (source.suffix in (".py", ".pyi")
                                     or source.name == "py.typed"):
                files[Path(installed) / source.relative_to(ROOT / folder)] = source
    return files


def stage() -> Path:
    """Copy the sources (only those that changed) and remove files no longer there; returns
    the folder to give griffe."""
    wanted = _sources()
    for relative, source in wanted.items():
        copy = STAGE / relative
        data = source.read_bytes()
        if copy.is_file() and copy.read_bytes() == data:
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        temporary = copy.with_name(f".{copy.name}.{os.getpid()}")
        temporary.write_bytes(data)
        os.replace(temporary, copy)
    for copy in list((STAGE / "regplug").rglob("*")):
        if copy.is_file() and copy.relative_to(STAGE) not in wanted:
            copy.unlink(missing_ok=True)
    return STAGE


def on_startup(command: str, dirty: bool) -> None:
    """mkdocs' first event: lay out the sources before mkdocstrings looks for them."""
    stage()


def on_config(config: Any) -> Any:
    """mkdocs' event at every (re)build: bring the copy up to date."""
    stage()
    return config

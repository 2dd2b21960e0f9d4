"""The examples in docstrings and in the README run and say what they claim."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
import shlex
from pathlib import Path

import pytest
import tomllib


def _framework(module: str) -> str | None:
    """The framework an adapter module needs (``regplug.adapters.torch.ops`` → torch)."""
    prefix = "regplug.adapters."
    if module.startswith(prefix):
        for framework in ("torch", "keras", "lightning", "transformers"):
            if module[len(prefix):].startswith(framework):
                return framework
    return None


def _modules() -> list[str]:
    """Every module of the installed package. regplug.plugins and regplug.adapters are
    walked on their own: an editable install maps them from other folders, where walking
    regplug.__path__ would not find them."""
    import regplug.adapters
    import regplug.plugins

    found = {"regplug.plugins", "regplug.adapters"}
    for package in (regplug, regplug.plugins, regplug.adapters):
        found.update(m.name for m in pkgutil.walk_packages(package.__path__,
                                                           f"{package.__name__}."))
    return sorted(m for m in found if not m.endswith("__main__"))


MODULES = _modules()
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if _framework(name) is not None:
        pytest.importorskip(_framework(name))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_examples_run(index, tmp_path, monkeypatch):
    """Each block runs alone, in a fresh namespace, as a reader pastes it: no `regplug` or
    other name handed in. A block using a class an earlier block defines says so in its
    first line ("# uses ShrinkHead, ...") and runs after that block."""
    code = _python_blocks()[index]
    if "torch" in code:
        pytest.importorskip("torch")
    if "keras" in code:
        pytest.importorskip("keras")
    if "lightning" in code:
        pytest.importorskip("lightning")
    if "transformers" in code:
        pytest.importorskip("transformers")
    if "optuna" in code:
        pytest.importorskip("optuna")
    monkeypatch.chdir(tmp_path)
    if "regularization.toml" in code:
        toml = re.search(r"```toml\n# regularization.toml\n(.*?)```", README.read_text(), re.S)
        (tmp_path / "regularization.toml").write_text(toml.group(1))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for previous in _python_blocks()[:index]:
        for name in re.findall(r"^class (\w+)", previous, re.M):
            if re.search(rf"\b{name}\b", code):
                assert code.startswith(f"# uses {name}"), (
                    f"this README block uses {name} from an earlier block without saying so")
                exec(compile(previous, "README.md", "exec"), namespace)
    exec(compile(code, "README.md", "exec"), namespace)


def test_readme_blocks_import_what_they_use():
    """The newcomer's NameError: a block writing `regplug.X` must import regplug itself."""
    for code in _python_blocks():
        body = "\n".join(line for line in code.splitlines()
                         if not re.match(r"\s*(from|import) ", line))
        if re.search(r"(?<![\w.])regplug\.\w", body):
            assert re.search(r"^import regplug\b", code, re.M), code


def test_the_readme_plugin_table_lists_the_hooks_regplug_plugins_lists():
    from regplug.cli import plugin_listing

    listing = {r["name"]: ", ".join(r["hooks"]) for r in plugin_listing() if r["builtin"]}
    table = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| `(\w+)` \| .*? \| (`on_.*?) \| ", line)
        if match:
            table[match.group(1)] = match.group(2).replace("`", "")
    assert table == {name: hooks for name, hooks in listing.items() if name in table}
    assert set(listing) - set(table) == {"overfit_batch"} or set(table) == set(listing)


# -- the plugin-author guide -----------------------------------------------------------------
# Runnable python blocks run in order (each after the blocks before it that define a
# plugin class); "python excerpt" blocks must be verbatim parts of the example package's
# source; the other blocks are checked against what they show.

ROOT = README.parent
GUIDE = ROOT / "docs" / "plugin-guide.md"
EXAMPLE = ROOT / "examples" / "regplug-group-lasso"


def _guide_blocks(kind: str) -> list[str]:
    return [body for info, body in re.findall(r"```([\w ]*)\n(.*?)```", GUIDE.read_text(), re.S)
            if info == kind]


def _example_installed() -> bool:
    return importlib.util.find_spec("regplug_group_lasso") is not None


@pytest.mark.parametrize("index", range(len(_guide_blocks("python"))))
def test_guide_python_examples_run(index, tmp_path, monkeypatch):
    blocks = _guide_blocks("python")
    code = blocks[index]
    for module in ("torch", "keras"):
        if f"import {module}" in code:
            pytest.importorskip(module)
    if "group_lasso" in code and not _example_installed():
        pytest.skip("the example plugin package is not installed")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for previous in blocks[:index]:
        if re.search(r"^class ", previous, re.M):
            exec(compile(previous, str(GUIDE), "exec"), namespace)
    exec(compile(code, str(GUIDE), "exec"), namespace)


def test_guide_excerpts_are_verbatim_parts_of_the_example_source():
    source = (EXAMPLE / "src" / "regplug_group_lasso" / "plugin.py").read_text()
    excerpts = _guide_blocks("python excerpt")
    assert len(excerpts) == 3
    for excerpt in excerpts:
        assert excerpt in source, excerpt


def test_guide_entry_point_is_the_one_the_example_declares():
    (block,) = _guide_blocks("toml")
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]
    assert tomllib.loads(block)["project"]["entry-points"] == declared


def test_guide_shell_commands_name_existing_paths_and_valid_regplug_commands():
    from regplug import cli

    lines = [line for block in _guide_blocks("bash") for line in block.splitlines() if line]
    assert lines
    for line in lines:
        words = shlex.split(line)
        if words[:2] == ["pip", "install"]:
            assert (ROOT / words[-1]).is_dir(), line
        else:
            assert words[0] == "regplug", line
            cli.build_parser().parse_args(words[1:])  # exits (fails the test) if invalid


def test_guide_plugins_listing_shows_what_the_command_prints(capsys):
    if not _example_installed():
        pytest.skip("the example plugin package is not installed")
    from regplug import cli

    (block,) = _guide_blocks("text")
    assert cli.main(["plugins"]) == 0
    printed = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    for line in block.splitlines():
        assert printed[line.split()[0]] == line.split(), line


def test_guide_links_point_to_files_of_the_repository():
    links = re.findall(r"\]\((\.\./[^)#]+)\)", GUIDE.read_text())
    assert links
    for link in links:
        assert (GUIDE.parent / link).exists(), link
    assert "(docs/plugin-guide.md)" in README.read_text()

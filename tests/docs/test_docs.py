"""The examples in docstrings and in the README run and say what they claim."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
import shlex
import textwrap
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
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if _framework(name) is not None:
        pytest.importorskip(_framework(name))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


# -- every ```python block of README.md and docs/**/*.md -------------------------------------
# Each block runs alone, in a fresh namespace, with a temporary folder as the working
# directory, as a reader pastes it: no `regplug` or other name handed in. A block using a
# class an earlier block of its page defines says so in its first line ("# uses ShrinkHead,
# ...") and runs after that block. A block that cannot run in a test starts with
# "# not run by the tests: <reason>" (reported as a skip with its reason; a test keeps them
# few). A block importing a framework that is not installed is skipped. ```text blocks show
# output and are not run. Two pages' blocks run in tests of their own: docs/plugin-guide.md's
# in the guide's tests below (each after every earlier block defining a plugin class, as the
# guide reads in order), docs/tuning-in-your-loop.md's in each framework's test_pruning.py
# (with the reader's own model and data handed in, and fewer trials).

OWN_RUNNER = {DOCS / "plugin-guide.md", DOCS / "tuning-in-your-loop.md"}
PRUNING_TESTS = [ROOT / "tests" / framework / "test_pruning.py"
                 for framework in ("torch", "keras", "lightning", "transformers")]
NOT_RUN = "# not run by the tests:"
# the optional packages a block may need, by import name
OPTIONAL = ("torch", "keras", "tensorflow", "jax", "lightning", "pytorch_lightning",
            "transformers", "accelerate", "optuna", "matplotlib", "sklearn", "mlxtend")


def _pages() -> list[Path]:
    return [README] + sorted(page for page in DOCS.rglob("*.md") if "_hooks" not in page.parts)


def _fenced(page: Path) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block of a page, in order; indented fences (in a
    list item) are dedented."""
    found = re.findall(r"^([ \t]*)```([\w ]*)\n(.*?)^[ \t]*```", page.read_text(), re.S | re.M)
    return [(info.strip(), textwrap.dedent(indent + body) if indent else body)
            for indent, info, body in found]


def _python_blocks(page: Path = README) -> list[str]:
    return [body for info, body in _fenced(page) if info == "python"]


def _label(page: Path) -> str:
    return str(page.relative_to(ROOT))


BLOCKS = [(page, index) for page in _pages() if page not in OWN_RUNNER
          for index in range(len(_python_blocks(page)))]


def _needs(code: str) -> list[str]:
    """The optional packages a block imports, directly or through an adapter or app."""
    needs = {name for name in OPTIONAL
             if re.search(rf"^\s*(import|from)\s+{name}\b", code, re.M)
             or re.search(rf"regplug\.adapters\.{name}\b", code)
             or re.search(rf"^\s*from\s+regplug\.adapters\s+import\s.*\b{name}\b", code, re.M)}
    if re.search(r"\bOptunaPruning\b|regplug\.tune\b", code):
        needs.add("optuna")
    return sorted(needs)


def _classes(code: str) -> list[str]:
    return re.findall(r"^class (\w+)", code, re.M)


def _run_block(page: Path, index: int, namespace: dict[str, object], done: set[int]) -> None:
    """Run block ``index`` of ``page`` in ``namespace``, after the earlier blocks whose classes
    it declares it uses (and theirs), each once."""
    blocks = _python_blocks(page)
    code = blocks[index]
    first = code.splitlines()[0] if code.strip() else ""
    declared = set(re.findall(r"\w+", first[len("# uses"):])) if first.startswith("# uses") else set()
    own = set(_classes(code))
    for earlier in range(index):
        used = [name for name in _classes(blocks[earlier])
                if name not in own and re.search(rf"\b{name}\b", code)]
        for name in used:
            assert name in declared, (
                f"{_label(page)}, python block {index + 1} uses {name} from block {earlier + 1} "
                f"without saying so: start it with '# uses {name}'")
        if used and earlier not in done:
            _run_block(page, earlier, namespace, done)
    exec(compile(code, f"{_label(page)}:python block {index + 1}", "exec"), namespace)
    done.add(index)


def _write_named_files(page: Path, code: str, folder: Path) -> None:
    """A block reading a file the page shows (a ```toml block starting with '# name.toml')
    finds it in its working directory."""
    for info, body in _fenced(page):
        match = re.match(r"#\s*([\w.-]+\.(?:toml|json|cfg))\s*\n", body)
        if match and match.group(1) in code:
            (folder / match.group(1)).write_text(body[match.end():])


@pytest.mark.parametrize(("page", "index"), BLOCKS,
                         ids=[f"{_label(page)}:{index + 1}" for page, index in BLOCKS])
def test_docs_python_examples_run(page, index, tmp_path, monkeypatch):
    code = _python_blocks(page)[index]
    if code.startswith(NOT_RUN):
        pytest.skip(f"{_label(page)}, python block {index + 1}: "
                    f"{code.splitlines()[0][2:].strip()}")
    for name in _needs(code):
        pytest.importorskip(name)
    monkeypatch.chdir(tmp_path)
    _write_named_files(page, code, tmp_path)
    _run_block(page, index, {"__name__": "__docs__"}, set())


def test_the_docs_blocks_are_found_and_few_are_left_unrun():
    pages = {page for page, _ in BLOCKS}
    assert README in pages and len(BLOCKS) >= 10
    unrun = [(page, code) for page, index in BLOCKS
             if (code := _python_blocks(page)[index]).startswith(NOT_RUN)]
    for page, code in unrun:
        reason = code.splitlines()[0][len(NOT_RUN):].strip()
        assert len(reason) >= 10, f"{_label(page)}: say why the block is not run: {code[:80]}"
    assert len(unrun) <= max(2, len(BLOCKS) // 10), [_label(page) for page, _ in unrun]


def test_each_block_of_tuning_in_your_loop_is_run_by_a_framework_test():
    """Its blocks are titled ("# Keras fit"); a framework's test_pruning.py picks each by title."""
    sources = "\n".join(path.read_text() for path in PRUNING_TESTS)
    blocks = _python_blocks(DOCS / "tuning-in-your-loop.md")
    assert blocks
    for code in blocks:
        title = code.splitlines()[0].removeprefix("# ")
        assert f'"# {title}\\n"' in sources or f'doc_block("{title}")' in sources, (
            f"docs/tuning-in-your-loop.md: no test runs the block titled {title!r}")


def test_the_docs_blocks_import_what_they_use():
    """The newcomer's NameError: a block writing `regplug.X` must import regplug itself."""
    for page in _pages():
        if page in OWN_RUNNER:
            continue  # the guide's blocks run in order, in one namespace (its tests below)
        for code in _python_blocks(page):
            body = "\n".join(line for line in code.splitlines()
                             if not re.match(r"\s*(from|import) ", line))
            if re.search(r"(?<![\w.])regplug\.\w", body):
                assert re.search(r"^import regplug\b", code, re.M), f"{_label(page)}: {code}"


def test_the_readme_links_point_to_files_of_the_repository():
    """The README links into the docs (docs/*.md) and the repository; each target exists."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), link


def _plugin_table(page: Path) -> dict[str, str]:
    table = {}
    for line in page.read_text().splitlines():
        match = re.match(r"\| `(\w+)` \| .*? \| (`on_.*?) \| ", line)
        if match:
            table[match.group(1)] = match.group(2).replace("`", "")
    return table


def test_the_plugin_table_lists_the_hooks_regplug_plugins_lists():
    from regplug.cli import plugin_listing

    listing = {r["name"]: ", ".join(r["hooks"]) for r in plugin_listing() if r["builtin"]}
    table = _plugin_table(DOCS / "plugins" / "index.md")  # the built-ins' table lives there
    assert table
    assert table == {name: hooks for name, hooks in listing.items() if name in table}
    assert set(listing) - set(table) == {"overfit_batch"} or set(table) == set(listing)


# -- the plugin-author guide -----------------------------------------------------------------
# Runnable python blocks run in order (each after the blocks before it that define a
# plugin class); "python excerpt" blocks must be verbatim parts of the example package's
# source; the other blocks are checked against what they show.

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
    """Links to other pages resolve inside docs/ (as the site needs); links up into the
    repository (``../examples/...``) and the repository paths the guide names in code spans
    (`examples/regplug-group-lasso`) exist."""
    text = GUIDE.read_text()
    links = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
             if not link.startswith(("http://", "https://"))]
    paths = re.findall(r"`((?:examples|regplug|plugins|adapters)/[\w./-]*)`", text)
    assert links and paths
    for link in links:
        assert (GUIDE.parent / link).exists(), link
    for path in paths:
        assert (ROOT / path).exists(), path
    assert "plugin-guide.md" in README.read_text()

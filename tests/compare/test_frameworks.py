"""regplug.experiment.frameworks: the FrameworkRunner protocol and the registry of runners
(entry points of group ``regplug.frameworks``, and runners registered in code); and that the
framework-neutral package never imports an adapter itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import regplug
from regplug.errors import RegplugError
from regplug.experiment import frameworks
from regplug.experiment.frameworks import (
    ENTRY_POINT_GROUP,
    FrameworkRunner,
    FrameworkUnavailable,
    framework_names,
    get_runner,
    register_runner,
)


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test: what a test registers (or loads)
    does not leak into the next one."""
    monkeypatch.setattr(frameworks, "_registered", dict(frameworks._registered))
    monkeypatch.setattr(frameworks, "_loaded", dict(frameworks._loaded))
    return frameworks


class FakeRunner:
    name = "fake"

    def describe(self) -> str:
        return "fake 1.0"

    def train_strategy(self, splits, strategy, plugins, model_choice, settings,
                       on_epoch=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def mc_dropout(self, toy, *, seed=0):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class NoTrainStrategy:
    name = "broken"

    def describe(self) -> str:
        return "broken"

    def mc_dropout(self, toy, *, seed=0):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class FailingEntryPoint:
    """Like an importlib.metadata.EntryPoint whose module needs a package not installed."""

    def __init__(self, name: str, value: str, missing: str) -> None:
        self.name, self.value, self.group, self.missing = name, value, ENTRY_POINT_GROUP, missing

    def load(self):  # type: ignore[no-untyped-def]
        raise ImportError(f"No module named {self.missing!r}", name=self.missing)


# -- names ----------------------------------------------------------------------------------
def test_framework_names_include_torch_and_keras_from_the_declared_entry_points():
    names = framework_names()
    assert {"torch", "keras"} <= set(names)
    assert len(names) == len(set(names))
    declared = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert declared["torch"] == "regplug.adapters.torch.compare:TorchRunner"
    assert declared["keras"] == "regplug.adapters.keras.compare:KerasRunner"


def test_the_installed_entry_points_are_those_pyproject_declares():
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("no pyproject.toml beside the tests")
    tomllib = pytest.importorskip("tomllib")
    table = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    declared = table["project"]["entry-points"][ENTRY_POINT_GROUP]
    installed = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert installed == declared
    assert set(declared) <= set(framework_names())


# -- get_runner -----------------------------------------------------------------------------
def test_get_runner_torch_returns_a_framework_runner_named_torch(registry):
    pytest.importorskip("torch")
    runner = get_runner("torch")
    assert isinstance(runner, FrameworkRunner)
    assert runner.name == "torch"
    assert runner.describe().startswith("torch ")
    assert get_runner("torch") is runner  # loaded once


def test_an_unknown_name_near_a_known_one_says_did_you_mean():
    with pytest.raises(FrameworkUnavailable, match=r"unknown framework 'troch'; did you mean "
                                                   r"'torch'\?") as info:
        get_runner("troch")
    assert isinstance(info.value, ImportError) and isinstance(info.value, RegplugError)
    assert "torch" in str(info.value).split("choose from", 1)[1]


def test_an_unknown_name_far_from_any_lists_the_choices_without_a_guess():
    with pytest.raises(FrameworkUnavailable) as info:
        get_runner("mxnet")
    message = str(info.value)
    assert "did you mean" not in message
    assert "choose from" in message and "keras" in message and "torch" in message


def test_register_runner_makes_get_runner_return_the_factorys_runner(registry):
    assert "fake" not in framework_names()
    calls = []

    def factory() -> FakeRunner:
        calls.append(1)
        return FakeRunner()

    register_runner("fake", factory)
    assert "fake" in framework_names()
    runner = get_runner("fake")
    assert isinstance(runner, FakeRunner) and isinstance(runner, FrameworkRunner)
    assert get_runner("fake") is runner and calls == [1]


def test_the_registry_fixture_leaves_no_fake_runner_behind():
    # runs after the test above (file order): the fixture restored the registry
    assert "fake" not in framework_names()
    with pytest.raises(FrameworkUnavailable, match="unknown framework 'fake'"):
        get_runner("fake")


def test_a_registered_runner_replaces_the_entry_points_runner(registry):
    register_runner("torch", FakeRunner)
    assert isinstance(get_runner("torch"), FakeRunner)
    assert framework_names().count("torch") == 1


def test_a_runner_lacking_train_strategy_is_a_type_error_naming_the_framework(registry):
    register_runner("broken", NoTrainStrategy)
    with pytest.raises(TypeError, match=r"framework 'broken'.*NoTrainStrategy.*FrameworkRunner"):
        get_runner("broken")
    with pytest.raises(TypeError):  # not cached as if it had worked
        get_runner("broken")


@pytest.mark.parametrize("name, factory, error", [
    ("not an identifier", FakeRunner, ValueError),
    ("fake", FakeRunner(), TypeError),  # a runner, not a factory
])
def test_register_runner_checks_its_arguments(registry, name, factory, error):
    with pytest.raises(error, match="register_runner"):
        register_runner(name, factory)
    assert name not in framework_names()


def test_an_entry_point_failing_to_import_gives_framework_unavailable_with_the_install_hint(
        registry, monkeypatch):
    monkeypatch.setattr(frameworks, "_loaded", {})
    monkeypatch.setattr(frameworks, "_entry_points", lambda: {
        "torch": FailingEntryPoint("torch", "regplug.adapters.torch.compare:TorchRunner",
                                   "torch")})
    with pytest.raises(FrameworkUnavailable) as info:
        get_runner("torch")
    message = str(info.value)
    assert "needs 'torch', which is not installed" in message
    assert "pip install 'regplug[torch]'" in message
    assert isinstance(info.value, ImportError)


def test_an_unknown_frameworks_import_failure_names_its_entry_point(registry, monkeypatch):
    value = "thirdparty.runner:Runner"
    monkeypatch.setattr(frameworks, "_entry_points", lambda: {
        "mine": FailingEntryPoint("mine", value, "thirdparty")})
    with pytest.raises(FrameworkUnavailable, match=f"needs 'thirdparty'.*{value}"):
        get_runner("mine")


# -- the dependency points one way ----------------------------------------------------------
def test_importing_regplug_compare_imports_no_adapter_module(tmp_path):
    code = ("import sys\n"
            "import regplug.compare, regplug.compare.cli, regplug.compare.comparison\n"
            "import regplug.experiment, regplug.experiment.training, regplug.tune.cli\n"
            "import regplug.experiment.frameworks as f\n"
            "f.framework_names()\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('regplug.adapters'))\n"
            "assert not loaded, loaded\n"
            "assert 'torch' not in sys.modules and 'keras' not in sys.modules, 'framework'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)  # the installed regplug
    assert result.returncode == 0, result.stderr[-2000:]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _adapter_imports(path: Path, root: Path) -> list[str]:
    """Import statements (and import_module/__import__ calls) in ``path`` that name
    regplug.adapters, absolutely or relatively."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            targets = [c.value for arg in node.args for c in ast.walk(arg)
                       if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        if any(t.startswith("regplug.adapters") or "adapters" in t.split(".")
               for t in targets if isinstance(t, str)):
            found.append(f"{path}:{node.lineno}")
    return found


def test_the_import_scan_finds_absolute_relative_and_dynamic_adapter_imports(tmp_path):
    root = tmp_path / "regplug"
    (root / "compare").mkdir(parents=True)
    sample = root / "compare" / "sample.py"
    sample.write_text("from regplug.adapters.torch import attach\n"
                      "from ..adapters import keras\n"
                      "from .. import adapters\n"
                      "import importlib\n"
                      "importlib.import_module(f'regplug.adapters.{name}.compare')\n"
                      "from ..compare import frameworks  # fine\n"
                      "'''regplug.adapters in prose is fine'''\n", encoding="utf-8")
    assert [int(f.rsplit(":", 1)[1]) for f in _adapter_imports(sample, root)] == [1, 2, 3, 5]


def test_no_module_of_the_core_imports_an_adapter():
    # regplug/ and what is installed under it (regplug.plugins; in a wheel also the adapters,
    # which are left out: they may import one another)
    roots = [Path(p) for p in regplug.__path__]
    files = [(root, f) for root in roots for f in sorted(root.rglob("*.py"))
             if not _module_name(f, root).startswith("regplug.adapters")]
    assert any(f.name == "frameworks.py" for _, f in files), files
    offences = [o for root, f in files for o in _adapter_imports(f, root)]
    assert not offences, "regplug/ imports an adapter:\n" + "\n".join(offences)

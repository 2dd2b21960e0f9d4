"""The examples in docstrings and in the README run and say what they claim."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import regplug

FRAMEWORK_MODULES = {"regplug.adapters.torch": "torch", "regplug.adapters.torch_ops": "torch",
                     "regplug.adapters.torch_example": "torch",
                     "regplug.adapters.keras": "keras", "regplug.adapters.keras_ops": "keras"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(regplug.__path__, "regplug.")
                 if not m.name.endswith("__main__"))
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in FRAMEWORK_MODULES:
        pytest.importorskip(FRAMEWORK_MODULES[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_examples_run(index, tmp_path, monkeypatch):
    code = _python_blocks()[index]
    if "torch" in code:
        pytest.importorskip("torch")
    if "keras" in code:
        pytest.importorskip("keras")
    monkeypatch.chdir(tmp_path)
    if "regularization.toml" in code:
        toml = re.search(r"```toml\n# regularization.toml\n(.*?)```", README.read_text(), re.S)
        (tmp_path / "regularization.toml").write_text(toml.group(1))
    namespace = {"regplug": regplug}
    for previous in _python_blocks()[:index]:  # later blocks build on the plugin defined earlier
        if "class " in previous and "regplug.Plugin" in previous:
            exec(compile(previous, "README.md", "exec"), namespace)
    exec(compile(code, "README.md", "exec"), namespace)

"""The Keras test modules again under Keras' other backends, each in a fresh Python.

Keras fixes its backend when it is first imported, so every other backend gets a
subprocess running the same modules with ``KERAS_BACKEND`` set. Backends that are not
installed (JAX, usually) are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

# Every Keras test module but this one, the TensorFlow-only MirroredStrategy test, and the
# comparison command (it trains whole strategies; its Keras runner is backend-neutral code).
_NOT_RERUN = {"test_keras_backends.py", "test_keras_distributed.py", "test_keras_compare.py"}
MODULES = tuple(sorted(p.name for p in Path(__file__).resolve().parent.glob("test_keras_*.py")
                       if p.name not in _NOT_RERUN))
OTHER_BACKENDS = [b for b in ("tensorflow", "torch", "jax") if b != keras.backend.backend()]


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_keras_adapter_tests_pass_on_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    tests = Path(__file__).resolve().parent
    root = tests.parent
    # Run from tests/: `python -m` puts the working directory first on sys.path, and from the
    # repository root that would shadow the installed regplug with the source folder.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
               "-c", str(root / "pyproject.toml"), "--rootdir", str(root),
               *(str(tests / m) for m in MODULES)]
    done = subprocess.run(command, cwd=tests, capture_output=True, text=True,
                          env=dict(os.environ, KERAS_BACKEND=backend), timeout=900)
    assert done.returncode == 0, (f"KERAS_BACKEND={backend}:\n{done.stdout[-8000:]}\n"
                                  f"{done.stderr[-3000:]}")
    assert " passed" in done.stdout

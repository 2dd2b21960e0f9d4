"""The Keras adapter tests: every module here must pass on each Keras backend.

They get the ``keras_backends`` marker, which tox uses to rerun them under the backends other
than TensorFlow (``pytest -m keras_backends --keras-backend torch``; see tests/conftest.py for
how the session's backend is chosen). Keras tests that are not meant for every backend live
elsewhere: the TensorFlow-only MirroredStrategy test in tests/distributed/, the comparison
command in tests/compare/.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

if importlib.util.find_spec("keras") is None:  # the folder needs Keras
    collect_ignore_glob = ["test_*.py"]


@pytest.hookimpl(tryfirst=True)  # before -m keras_backends selects by it
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.keras_backends)

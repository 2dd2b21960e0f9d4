"""Scripts that run ``regplug tune`` in a child process (SIGTERM, several processes sharing a
study) with the fake runner of tests/tune/conftest.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

TUNE_CONFTEST = Path(__file__).parents[1] / "tune" / "conftest.py"

_PRELUDE = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("tune_fake", {conftest!r})
fake = sys.modules["tune_fake"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fake)
from regplug.experiment import frameworks
runner = fake.FakeRunner()
original = runner.train_strategy
def slow(*args, **kwargs):
    time.sleep({seconds!r})
    return original(*args, **kwargs)
runner.train_strategy = slow
frameworks.register_runner("torch", lambda: runner)
"""


def fake_runner_script(body: str, *, seconds_per_training: float) -> str:
    """A script that registers the conftest's ``FakeRunner`` as ``torch``, each training
    taking ``seconds_per_training`` (so the parent can act between trials), then runs
    ``body`` (which may use ``sys``)."""
    prelude = _PRELUDE.format(conftest=str(TUNE_CONFTEST), seconds=seconds_per_training)
    return prelude + textwrap.dedent(body)

"""Shared fixtures and the Keras backend of the session.

The tests import the *installed* regplug (pytest runs in importlib mode). Each folder's own
conftest.py holds what only that folder needs; the helper modules the tests import by plain
name (``_torch_models``, ``_keras_models``, ...) are in tests/helpers/, on the pythonpath.

Keras fixes its backend when it is first imported, so one pytest session runs one backend:
``--keras-backend NAME``, else ``$KERAS_BACKEND``, else TensorFlow. ``pytest_configure`` below
sets ``KERAS_BACKEND`` before any test module (or anything this file imports) imports Keras.
The tests that must pass on every backend carry the ``keras_backends`` marker
(tests/keras/conftest.py applies it); tox reruns them with
``pytest -m keras_backends --keras-backend torch`` and ``... jax``. A backend that is not
installed skips them (reported as skipped, not deselected).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# One OpenMP thread unless the caller chose otherwise, set before anything imports torch:
# with TensorFlow and PyTorch in one process on a small machine their thread pools spin
# against each other, and PyTorch's CPU ops ran 50x slower (a 60-step MLP test: 0.2 s
# alone, 15 s beside the Keras tests). Subprocesses (the DDP ranks) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import regplug

try:  # property-based tests: the "ci" profile (tox) draws the same examples on every run, so
    # a result never depends on the draw; a plain pytest run explores new ones each time
    from hypothesis import settings as _hypothesis_settings
except ImportError:
    pass
else:
    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DEFAULT_KERAS_BACKEND = "tensorflow"
KERAS_TESTS = Path(__file__).parent / "keras"  # the modules marked keras_backends
_BACKEND = pytest.StashKey[tuple[str, bool]]()  # (requested backend, installed?)


def pytest_addoption(parser):
    parser.addoption(
        "--keras-backend", metavar="NAME", default=None,
        help="Keras backend of this session: tensorflow, torch or jax (default: "
             "$KERAS_BACKEND, else tensorflow). Tests marked keras_backends are skipped "
             "when that backend is not installed.")


def pytest_configure(config):
    requested = (config.getoption("keras_backend") or os.environ.get("KERAS_BACKEND")
                 or DEFAULT_KERAS_BACKEND)
    installed = importlib.util.find_spec(requested) is not None
    if "keras" in sys.modules:  # too late to choose: Keras has fixed its backend
        current = sys.modules["keras"].backend.backend()
        if current != requested:
            raise pytest.UsageError(f"Keras was imported with backend {current!r} before "
                                    f"tests/conftest.py could select {requested!r}")
    if installed:
        os.environ["KERAS_BACKEND"] = requested
    else:
        # Keras must still import (test modules import it at collection); the marked tests
        # are skipped below, the others run on the default backend.
        os.environ["KERAS_BACKEND"] = DEFAULT_KERAS_BACKEND
    config.stash[_BACKEND] = (requested, installed)


def pytest_report_header(config):
    requested, installed = config.stash[_BACKEND]
    if installed:
        return f"keras backend: {requested}"
    return (f"keras backend: {requested} requested but not installed: tests marked "
            f"keras_backends are skipped, the others run on {DEFAULT_KERAS_BACKEND}")


def pytest_runtest_setup(item):
    requested, installed = item.config.stash[_BACKEND]
    if not installed and item.get_closest_marker("keras_backends") is not None:
        pytest.skip(f"Keras backend {requested!r}: {requested} is not installed")


def pytest_sessionfinish(session, exitstatus):
    """A backend rerun (``--keras-backend``) that selects no test is a failure (exit code 5
    stays: the marked tests went missing), unless the caller narrowed it away from them
    with ``-k`` (``tox -e py -- -k manager``) or with paths outside tests/keras/
    (``pytest -m keras_backends --keras-backend jax tests/core``)."""
    config = session.config
    backend = config.getoption("keras_backend")
    if exitstatus != pytest.ExitCode.NO_TESTS_COLLECTED or not backend:
        return
    here = config.invocation_params.dir
    keras_tests = KERAS_TESTS.resolve()

    def covers_keras_tests(arg: str) -> bool:
        path = (here / arg.split("::")[0]).resolve()
        return path == keras_tests or path in keras_tests.parents or keras_tests in path.parents

    if config.getoption("keyword") or not any(covers_keras_tests(a) for a in config.args):
        session.exitstatus = pytest.ExitCode.OK
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"no test for Keras backend {backend} among the selected "
                                "ones: nothing to rerun")


class Recorder(regplug.Plugin):
    """Records every hook call as (hook, epoch, step) tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def _log(self, hook: str, run: regplug.Run) -> None:
        self.events.append((hook, run.epoch, run.step))

    @regplug.hookimpl
    def on_train_begin(self, run):
        self._log("train_begin", run)

    @regplug.hookimpl
    def on_epoch_begin(self, run, epoch):
        self._log("epoch_begin", run)

    @regplug.hookimpl
    def on_loss(self, run, loss):
        self._log("loss", run)

    @regplug.hookimpl
    def on_before_step(self, run, step):
        self._log("before_step", run)

    @regplug.hookimpl
    def on_step(self, run, step):
        self._log("step", run)

    @regplug.hookimpl
    def on_epoch_end(self, run, epoch, logs):
        self._log("epoch_end", run)

    @regplug.hookimpl
    def on_train_end(self, run):
        self._log("train_end", run)

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()

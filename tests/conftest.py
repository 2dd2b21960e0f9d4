"""Shared fixtures. The tests import the *installed* regplug (pytest runs in importlib mode)."""

from __future__ import annotations

import pytest

import regplug


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

"""A fake framework runner for the ``regplug tune`` tests: it trains nothing, but drives the
strategy's plugins through regplug's own epoch clock (:class:`regplug.testing.NumpyLoop`),
so pruning and early stopping act as in a real run, and its validation curve is a known
function of the searched values — the tests can say which setting must win.

Registered under the name ``torch`` (``--framework`` offers torch and keras), replacing the
real runner for the test only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from regplug.experiment import frameworks
from regplug.experiment.training import TrainOutcome, WeightArray
from regplug.testing import NumpyLoop

#: The fake's best L2 strength and dropout rate (where its validation cross-entropy is least).
BEST_L2 = 1e-3
BEST_DROPOUT = 0.3


def l2_of(strategy) -> float | None:
    for spec in strategy.plugins:
        if spec["name"] == "l2":
            return float(spec["l2"])
    return None


def floor_of(strategy) -> float:
    """The validation cross-entropy the fake converges to under ``strategy``."""
    value = 0.2
    l2 = l2_of(strategy)
    if l2 is not None:
        value += 0.1 * (math.log10(l2) - math.log10(BEST_L2)) ** 2
    if strategy.dropout is not None:
        value += (strategy.dropout - BEST_DROPOUT) ** 2
    return value


@dataclass
class FakeRunner:
    """Epoch ``e`` (from 0) has ``val_cross_entropy = floor + 1 / (e + 1)``.

    :param clock: a list holding the fake time; each training advances it by ``seconds``.
    :param fail_above: strategies with an L2 strength above this raise ``ValueError``.
    :param rise_after: from this epoch on the curve rises by 0.1 an epoch (overfitting), so
        early stopping has a best epoch to restore.

    The test accuracy rises with the L2 strength, so a search that selected on it would pick
    the strongest setting.
    """

    name: str = "torch"
    clock: list[float] = field(default_factory=lambda: [0.0])
    seconds: float = 1.0
    fail_above: float | None = None
    rise_after: int | None = None
    calls: list[tuple[str, dict]] = field(default_factory=list)

    best_l2 = BEST_L2
    best_dropout = BEST_DROPOUT
    floor_of = staticmethod(floor_of)

    def describe(self) -> str:
        return "fake 1.0"

    def train_strategy(self, splits, strategy, plugins, model_choice, settings, on_epoch=None):
        self.calls.append((strategy.name, {"l2": l2_of(strategy), "dropout": strategy.dropout,
                                           "plugins": [repr(p) for p in plugins]}))
        l2 = l2_of(strategy)
        if self.fail_above is not None and l2 is not None and l2 > self.fail_above:
            raise ValueError(f"fake: l2 {l2} diverged")
        loop = NumpyLoop({"w": np.zeros(1)}, plugins)
        history: dict[str, list[float]] = {}
        floor = floor_of(strategy)
        try:
            for epoch in range(settings.epochs):
                ce = floor + 1.0 / (epoch + 1)
                if self.rise_after is not None and epoch > self.rise_after:
                    ce = floor + 1.0 / (self.rise_after + 1) + 0.1 * (epoch - self.rise_after)
                logs = {"loss": ce, "accuracy": 1 - ce / 3, "cross_entropy": ce,
                        "val_loss": ce + 1000 * (l2 or 0.0), "val_accuracy": 1 - ce / 3,
                        "val_cross_entropy": ce}
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                stop = loop.epoch_end(logs)
                if on_epoch is not None:
                    on_epoch(epoch, logs)
                if stop:
                    break
        finally:
            loop.close()
        self.clock[0] += self.seconds
        acc_test = min(1.0, 0.5 + 5 * (l2 or 0.0))
        return TrainOutcome(history=history, acc_train=0.99, acc_test=acc_test,
                            weights=[WeightArray("w", "weight", "Dense", 1, np.ones((2, 2)))],
                            steps=len(history["loss"]), seconds=0.01,
                            stop_reason="; ".join(map(str, loop.run.stop_requests)) or None)

    def mc_dropout(self, toy, *, seed=0):
        raise NotImplementedError


@pytest.fixture
def fake_runner(monkeypatch):
    """A :class:`FakeRunner` registered as ``torch`` for this test only."""
    monkeypatch.setattr(frameworks, "_registered", dict(frameworks._registered))
    monkeypatch.setattr(frameworks, "_loaded", dict(frameworks._loaded))
    runner = FakeRunner()
    frameworks.register_runner("torch", lambda: runner)
    return runner

"""What the fine-tuning task's runner tests share: a plugin that records the weights a
model starts training with, and training one strategy of the task."""

from __future__ import annotations

from typing import Any

import numpy as np

import regplug
from regplug.experiment.finetune import FINETUNE_STRATEGIES, FinetuneSplits
from regplug.experiment.frameworks import TrainSettings, get_runner
from regplug.experiment.models import BUILTIN_MODELS
from regplug.experiment.training import TrainOutcome, train_strategy


class FirstWeights(regplug.Plugin):
    """Keeps a copy of every parameter when training begins, by regplug name."""

    def __init__(self) -> None:
        self.first: dict[str, np.ndarray] = {}

    @regplug.hookimpl
    def on_train_begin(self, run: Any) -> None:
        self.first = {h.name: np.array(a, copy=True)
                      for h, a in zip(run.params, run.ops.to_numpy(run.params))}


def train(framework: str, splits: FinetuneSplits, name: str, *, epochs: int = 1,
          seed: int = 0) -> tuple[TrainOutcome, dict[str, np.ndarray]]:
    """Train strategy ``name`` of the task: the outcome and the weights it started from."""
    first = FirstWeights()
    outcome, _ = train_strategy(get_runner(framework), FINETUNE_STRATEGIES[name], splits,
                                BUILTIN_MODELS["mlp"],
                                TrainSettings(epochs=epochs, batch_size=25, seed=seed),
                                extra=[first])
    return outcome, first.first


def backbone(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in weights.items() if not k.startswith("head.")}


def head(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in weights.items() if k.startswith("head.")}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

"""OptunaPruning in Keras ``fit`` (every backend): the documented objective, a pruned fit that
stops after the pruned epoch, lets EarlyStopping restore its best weights, and leaves a model
that trains as plain Keras."""

from __future__ import annotations

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from _keras_models import (
    assert_same_weights,
    data,
    fit,
    mlp,
    plain_twin,
    regplug_leftovers,
    sgd,
    weights,
)

from regplug.adapters.keras import Regularize, detach
from regplug.plugins import L2, EarlyStopping, OptunaPruning

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DOC = Path(__file__).resolve().parents[2] / "docs" / "tuning-in-your-loop.md"
X, Y = data(64)
X_VAL, Y_VAL = data(32, seed=1)
PRUNED = optuna.trial.TrialState.PRUNED


def prune_at(step: int) -> optuna.pruners.BasePruner:
    """Optuna's ThresholdPruner pruning every trial at ``step``: every value is above
    ``upper=-inf``, and none is judged during the ``step`` warm-up steps."""
    return optuna.pruners.ThresholdPruner(upper=-math.inf, n_warmup_steps=step)


class ScriptedValLoss(keras.callbacks.Callback):
    """Sets each epoch's ``val_loss`` (listed before Regularize, which reads the same logs)
    and keeps the weights at each epoch's end."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = losses
        self.snapshots: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.losses[epoch]
        self.snapshots.append(weights(self.model))


def test_a_pruned_fit_stops_after_that_epoch_restores_early_stoppings_best_and_leaves_keras():
    trial = optuna.create_study(pruner=prune_at(2)).ask()
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    scripted = ScriptedValLoss([0.5, 0.3, 0.6, 0.7, 0.8, 0.9])  # best: epoch 1
    stopper = EarlyStopping("val_loss", patience=10)
    pruning = OptunaPruning(trial, monitor="val_loss")
    reg = Regularize([L2(0.05), stopper, pruning])
    history = fit(model, X, Y, epochs=6, callbacks=[scripted, reg])
    assert len(history.history["loss"]) == 3 and len(scripted.snapshots) == 3
    assert (pruning.pruned_epoch, stopper.stop_reason) == (2, None)
    assert [r.source for r in reg.stop_requests] == ["optuna_pruning"]
    assert trial.study.trials[0].intermediate_values == {0: 0.5, 1: 0.3, 2: 0.6}
    with pytest.raises(optuna.TrialPruned, match=r"epoch 3 \(step 2\): val_loss = 0.6$"):
        pruning.raise_if_pruned()
    # EarlyStopping listed with it restored epoch 1's weights, not the last epoch's
    assert stopper.restored_epoch == 1
    for now, best in zip(weights(model), scripted.snapshots[1]):
        np.testing.assert_array_equal(now, best)
    assert any(not np.array_equal(a, b)
               for a, b in zip(scripted.snapshots[2], scripted.snapshots[1]))
    # Nothing of regplug is left in the train step, and a later fit is Keras' own.
    assert regplug_leftovers(model) == []
    assert detach(model) is False
    twin = plain_twin(model)
    again = fit(model, X, Y, epochs=1)
    fit(twin, X, Y, epochs=1)
    assert sorted(again.history) == ["loss"]  # no l2_penalty, no stop
    assert_same_weights(twin, model)


def test_the_documented_objective_runs_a_study_and_is_pruned_at_the_pruners_epoch(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# Keras fit\n")]
    namespace: dict[str, object] = {"__name__": "__doc__"}
    exec(compile(code.replace("n_trials=20", "n_trials=2"), str(DOC), "exec"), namespace)
    states = {t.state for t in namespace["study"].trials}
    assert len(namespace["study"].trials) == 2
    assert states <= {optuna.trial.TrialState.COMPLETE, PRUNED}
    study = optuna.create_study(pruner=prune_at(2))
    study.optimize(namespace["objective"], n_trials=1)
    (frozen,) = study.trials
    assert frozen.state == PRUNED and sorted(frozen.intermediate_values) == [0, 1, 2]

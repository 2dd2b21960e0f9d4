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


def test_the_documented_search_prefers_the_strength_the_penalty_free_error_prefers(
        tmp_path, monkeypatch):
    """The documented objective returns, and its pruning reports, a validation error the
    penalty does not enter: the study's best trial is the one whose model has the lowest
    mean squared error on the validation rows, recomputed here from its predictions. (With
    Keras' ``val_loss``, which includes ``l2·Σθ²``, the weakest L2 would win.)"""
    monkeypatch.chdir(tmp_path)
    models: list[keras.Model] = []
    sequential = keras.Sequential

    def recorded(*args: object, **kwargs: object) -> keras.Model:
        models.append(sequential(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(keras, "Sequential", recorded)  # the doc's objective builds with it
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# Keras fit\n")]
    search = "study.optimize(objective, n_trials=20)"
    assert search in code
    strengths = (1e-5, 1e-1, 1e-3)  # the first two complete (MedianPruner's start-up trials)
    code = code.replace(search, "for value in STRENGTHS:\n    study.enqueue_trial({'l2': value})\n"
                                "study.optimize(objective, n_trials=len(STRENGTHS))")
    keras.utils.set_random_seed(0)
    namespace: dict[str, object] = {"__name__": "__doc__", "STRENGTHS": strengths}
    exec(compile(code, str(DOC), "exec"), namespace)
    study = namespace["study"]
    assert [t.params["l2"] for t in study.trials] == pytest.approx(list(strengths))
    assert len(models) == len(strengths)
    x_val, y_val = namespace["x_val"], namespace["y_val"]
    # each model as fit returned it: the restored epoch's weights, no regplug patch left
    errors = [float(np.mean((model.predict(x_val, verbose=0) - y_val) ** 2))
              for model in models]
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) >= 2
    for trial in completed:
        # the objective is that error, and the pruner was shown the same numbers
        assert trial.value == pytest.approx(errors[trial.number], rel=1e-4)
        assert min(trial.intermediate_values.values()) == pytest.approx(trial.value)
    assert study.best_trial.number == int(np.argmin(errors)), (errors, study.best_params)
    # the data make the choice matter: the strongest L2 beats the weakest without penalty
    assert errors[1] < errors[0]

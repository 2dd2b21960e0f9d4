"""An objective that forgets ``OptunaPruning.raise_if_pruned()`` cannot go unnoticed: the
trial carries a flag in the study from the epoch it was pruned, and a warning names the
trial when the plugin is done with without the call."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import optuna
import pytest

from regplug.errors import RegplugWarning
from regplug.plugins import OptunaPruning
from regplug.plugins.pruning import PRUNED_FLAG
from regplug.testing import NumpyLoop

optuna.logging.set_verbosity(optuna.logging.ERROR)


def objective(*, call_raise: bool):
    def run(trial: optuna.trial.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        pruning = OptunaPruning(trial, monitor="val_loss")
        loop = NumpyLoop({"w": np.ones(1)}, [pruning])
        value = 0.0
        for epoch in range(6):
            value = x + 1.0 / (epoch + 1)
            if loop.epoch_end({"val_loss": value}):
                break
        loop.close()
        if call_raise:
            pruning.raise_if_pruned()
        return value

    return run


def study() -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=2))


def test_a_forgotten_raise_if_pruned_warns_naming_the_trial_and_flags_it_in_the_study():
    forgetful = study()
    gc.collect()  # earlier tests' garbage is not this test's

    def search() -> None:
        forgetful.optimize(objective(call_raise=False), n_trials=12)
        gc.collect()

    with pytest.warns(RegplugWarning, match=r"trial \d+ was pruned at epoch \d+ but "
                                            r"raise_if_pruned\(\) was never called") as caught:
        search()
    flagged = [t for t in forgetful.trials if PRUNED_FLAG in t.user_attrs]
    assert flagged and all(t.state.name == "COMPLETE" for t in flagged)  # what went wrong
    warned = [w for w in caught if issubclass(w.category, RegplugWarning)]
    assert len(warned) == len(flagged)
    assert {t.user_attrs[PRUNED_FLAG] for t in flagged} <= set(range(6))


def test_an_objective_that_raises_gets_no_warning():
    careful = study()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegplugWarning)
        careful.optimize(objective(call_raise=True), n_trials=12)
        gc.collect()
    pruned = [t for t in careful.trials if t.state.name == "PRUNED"]
    assert pruned and all(PRUNED_FLAG in t.user_attrs for t in pruned)
    assert not any(PRUNED_FLAG in t.user_attrs for t in careful.trials
                   if t.state.name == "COMPLETE")

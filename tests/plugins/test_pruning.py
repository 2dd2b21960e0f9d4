"""OptunaPruning without a framework: reports, the stop vote, non-finite values, resumed runs,
checkpoints and bad input — against a stand-in trial and against real Optuna studies."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import regplug
from regplug.builtins import BUILTIN_PLUGINS
from regplug.clock import EpochClock, Wording, is_stateful
from regplug.manager import PluginManager
from regplug.plugins import EarlyStopping, OptunaPruning
from regplug.run import LocalWorld
from regplug.testing import NumpyLoop, numpy_run

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


class FakeTrial:
    """Records what the plugin asks; says "prune" from step ``prune_at`` on."""

    def __init__(self, prune_at: int | None = None, number: int = 5) -> None:
        self.prune_at, self.number = prune_at, number
        self.reports: list[tuple[float, int]] = []
        self.asked = 0

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        self.asked += 1
        return self.prune_at is not None and self.reports[-1][1] >= self.prune_at


def prune_at(step: int) -> optuna.pruners.BasePruner:
    """Optuna's ThresholdPruner pruning every trial at ``step``: every value is above
    ``upper=-inf``, and none is judged during the ``step`` warm-up steps."""
    return optuna.pruners.ThresholdPruner(upper=-math.inf, n_warmup_steps=step)


def feed(plugins, values, *, key="val_loss", first_epoch=0):
    """One epoch per value through NumpyLoop; returns (epochs run, loop), loop closed."""
    loop = NumpyLoop({"w": np.zeros((1, 1))}, plugins)
    loop.run.epoch = first_epoch
    ran = len(values)
    for i, value in enumerate(values):
        loop.params["w"][...] = first_epoch + i  # the weight tells the epoch it comes from
        if loop.epoch_end({key: value, "loss": 0.1}):
            ran = i + 1
            break
    loop.close()
    return ran, loop


# -- the stop vote ---------------------------------------------------------------------------
def test_reports_every_epoch_and_stops_after_the_epoch_the_trial_is_pruned_at():
    trial = FakeTrial(prune_at=2, number=5)
    pruning = OptunaPruning(trial, monitor="val_loss")
    ran, loop = feed([pruning], [0.9, 0.8, 0.7, 0.6, 0.5])
    assert ran == 3
    assert trial.reports == [(0.9, 0), (0.8, 1), (0.7, 2)]
    assert trial.asked == 3
    assert (pruning.pruned, pruning.pruned_epoch) == (True, 2)
    assert pruning.reported == {0: 0.9, 1: 0.8, 2: 0.7}
    assert pruning.reason == "Optuna pruned trial 5 at epoch 3 (step 2): val_loss = 0.7"
    (request,) = loop.run.stop_requests
    assert (request.source, request.reason, request.epoch) == ("optuna_pruning",
                                                                pruning.reason, 2)


def test_an_unpruned_trial_trains_every_epoch_and_raise_if_pruned_does_nothing():
    trial = FakeTrial(prune_at=None)
    pruning = OptunaPruning(trial, "val_loss")  # monitor positionally
    ran, loop = feed([pruning], [0.9, 0.8, 0.7])
    assert ran == 3 and not loop.run.should_stop
    assert (pruning.pruned, pruning.pruned_epoch, pruning.reason) == (False, None, None)
    pruning.raise_if_pruned()


def test_raise_if_pruned_raises_optunas_trial_pruned_with_the_reason():
    pruning = OptunaPruning(FakeTrial(prune_at=0, number=11), monitor="val_loss")
    feed([pruning], [0.4])
    with pytest.raises(optuna.TrialPruned, match=r"^Optuna pruned trial 11 at epoch 1 \(step "
                                                 r"0\): val_loss = 0.4$"):
        pruning.raise_if_pruned()


def test_early_stopping_listed_with_it_still_restores_its_best_weights_when_pruned():
    stopper = EarlyStopping("val_loss", patience=10)
    pruning = OptunaPruning(FakeTrial(prune_at=3), monitor="val_loss")
    ran, loop = feed([stopper, pruning], [0.9, 0.5, 0.7, 0.8, 0.95])
    assert ran == 4 and pruning.pruned_epoch == 3
    assert stopper.stop_reason is None  # the pruner stopped the run, not patience
    assert stopper.restored_epoch == 1
    assert loop.params["w"][0, 0] == 1.0  # epoch 1's weights are back


# -- real Optuna studies ---------------------------------------------------------------------
def objective_for(values_per_trial, pruning_seen):
    """An objective as the docs write it: train (here: feed values), then raise_if_pruned."""

    def objective(trial):
        pruning = OptunaPruning(trial, monitor="val_loss")
        pruning_seen.append(pruning)
        ran, _ = feed([pruning], values_per_trial[trial.number])
        pruning.raise_if_pruned()
        return values_per_trial[trial.number][ran - 1]

    return objective


def test_a_study_with_a_pruner_at_step_2_prunes_at_epoch_2_and_stores_what_was_reported():
    study = optuna.create_study(pruner=prune_at(2))
    seen: list[OptunaPruning] = []
    study.optimize(objective_for({0: [0.9, 0.8, 0.7, 0.6, 0.5]}, seen), n_trials=1)
    (frozen,) = study.trials
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.intermediate_values == {0: 0.9, 1: 0.8, 2: 0.7}
    assert seen[0].reported == frozen.intermediate_values
    assert seen[0].reason == "Optuna pruned trial 0 at epoch 3 (step 2): val_loss = 0.7"


def _optunas_own_loop(study, values):
    """Optuna's documented pattern (report, should_prune, raise) on the same values:
    the reference for the step a pruner prunes at."""
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, values[-1])
    return None


def test_median_pruner_prunes_at_the_epoch_optunas_own_loop_prunes_at():
    good = [1.0, 0.8, 0.6, 0.5, 0.4, 0.35]
    bad = [1.1, 0.95, 0.9, 0.9, 0.9, 0.9]  # worse than the median from step 0 on
    pruner = dict(n_startup_trials=1, n_warmup_steps=2)
    reference = optuna.create_study(pruner=optuna.pruners.MedianPruner(**pruner))
    _optunas_own_loop(reference, good)
    expected = _optunas_own_loop(reference, bad)
    assert expected == 2  # the warm-up holds it to step 2

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(**pruner))
    seen: list[OptunaPruning] = []
    study.optimize(objective_for({0: good, 1: bad}, seen), n_trials=2)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert seen[1].pruned_epoch == expected
    assert study.trials[1].intermediate_values == dict(enumerate(bad[:expected + 1]))
    assert [t.intermediate_values for t in study.trials] == [
        t.intermediate_values for t in reference.trials]


def test_a_maximized_metric_is_pruned_when_it_falls_below_the_median():
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    seen: list[OptunaPruning] = []

    def objective(trial):
        values = [[0.5, 0.7, 0.9], [0.6, 0.65, 0.8]][trial.number]
        pruning = OptunaPruning(trial, monitor="val_accuracy")
        seen.append(pruning)
        feed([pruning], values, key="val_accuracy")
        pruning.raise_if_pruned()
        return values[-1]

    study.optimize(objective, n_trials=2)
    # trial 1 leads at step 0 (0.6 > 0.5), falls behind at step 1 (0.65 < 0.7)
    assert seen[1].pruned_epoch == 1
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED


# -- non-finite values -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_prunes_the_trial_even_where_the_median_pruner_would_not(bad):
    pruner = dict(n_startup_trials=1, n_warmup_steps=0)
    values = [0.9, 0.8, bad, 0.7]
    reference = optuna.create_study(pruner=optuna.pruners.MedianPruner(**pruner))
    _optunas_own_loop(reference, [1.0, 1.0, 1.0, 1.0])
    # Optuna's MedianPruner takes the best value with nanmin: it keeps this trial going.
    assert _optunas_own_loop(reference, values) is None

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(**pruner))
    seen: list[OptunaPruning] = []
    study.optimize(objective_for({0: [1.0] * 4, 1: values}, seen), n_trials=2)
    assert seen[1].pruned_epoch == 2
    assert seen[1].reason == (f"pruned trial 1 at epoch 3 (step 2): val_loss is {bad}, a "
                              "non-finite value (pruned without asking the pruner)")
    frozen = study.trials[1]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    stored = frozen.intermediate_values[2]  # reported as it is
    assert (math.isnan(stored) if math.isnan(bad) else stored == bad)


def test_a_non_finite_value_is_judged_without_asking_the_pruner():
    trial = FakeTrial(prune_at=None)
    pruning = OptunaPruning(trial, monitor="val_loss")
    ran, _ = feed([pruning], [0.5, math.nan, 0.4])
    assert ran == 2 and trial.asked == 1
    assert [step for _, step in trial.reports] == [0, 1]


# -- resumed runs and later fits -------------------------------------------------------------
def test_a_resumed_run_does_not_report_an_epoch_twice_but_still_asks_the_pruner():
    study = optuna.create_study(pruner=prune_at(3))
    trial = study.ask()
    first = OptunaPruning(trial, monitor="val_loss")
    feed([first], [0.9, 0.8])
    state = json.loads(json.dumps(first.state_dict()))  # a JSON checkpoint: str keys
    resumed = OptunaPruning(trial, monitor="val_loss")
    resumed.load_state_dict(state)
    assert resumed.reported == {0: 0.9, 1: 0.8}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "already reported" warning would fail here
        ran, _ = feed([resumed], [0.85, 0.7, 0.6, 0.5], first_epoch=1)  # epoch 1 again
    assert ran == 3 and resumed.pruned_epoch == 3
    frozen = study.trials[0]
    assert frozen.intermediate_values == {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}  # 1: the first value
    assert resumed.reported == frozen.intermediate_values
    with pytest.raises(optuna.TrialPruned):  # as an objective ends (else a warning at exit)
        resumed.raise_if_pruned()


def test_optuna_itself_warns_and_keeps_the_first_value_of_a_step_reported_twice():
    """Why the plugin skips epochs it reported: Optuna would warn and ignore the value."""
    trial = optuna.create_study().ask()
    trial.report(0.9, 1)
    with pytest.warns(UserWarning, match="already reported"):
        trial.report(0.5, 1)


def test_a_pruned_plugin_keeps_voting_to_stop_without_asking_the_trial_again():
    trial = FakeTrial(prune_at=1)
    pruning = OptunaPruning(trial, monitor="val_loss")
    feed([pruning], [0.9, 0.8])
    assert (trial.asked, len(trial.reports)) == (2, 2)
    ran, loop = feed([pruning], [0.7, 0.6], first_epoch=2)  # a later fit with the same plugin
    assert ran == 1 and loop.run.stop_requests[0].reason == pruning.reason
    assert (trial.asked, len(trial.reports)) == (2, 2)


def test_state_dict_round_trips_and_refuses_another_monitor():
    pruning = OptunaPruning(FakeTrial(prune_at=1, number=3), monitor="val_loss")
    feed([pruning], [0.9, 0.8])
    state = pruning.state_dict()
    assert state == {"monitor": "val_loss", "pruned": True, "pruned_epoch": 1,
                     "reason": "Optuna pruned trial 3 at epoch 2 (step 1): val_loss = 0.8",
                     "reported": {0: 0.9, 1: 0.8}}
    twin = OptunaPruning(FakeTrial(), monitor="val_loss")
    twin.load_state_dict(json.loads(json.dumps(state)))
    assert twin.state_dict() == state
    other = OptunaPruning(FakeTrial(), monitor="val_accuracy")
    with pytest.raises(ValueError, match="monitor='val_loss', this plugin has "
                                         "monitor='val_accuracy'"):
        other.load_state_dict(state)


# -- distributed: the trial on rank 0, None elsewhere ----------------------------------------
class TwoRanks(LocalWorld):
    """This process as rank ``rank`` of 2; ``others_vote`` is what the other rank votes."""

    size = 2

    def __init__(self, rank: int, others_vote: bool = False) -> None:
        self.rank, self.others_vote = rank, others_vote

    def any(self, flag: bool) -> bool:
        return bool(flag) or self.others_vote


def _clock(plugins, world) -> EpochClock:
    run = numpy_run({"w": np.zeros(1)})
    run.world = world
    return EpochClock(run, PluginManager(plugins), Wording(adapter="test"))


def test_none_on_a_rank_above_0_reports_nothing_and_follows_the_collective_vote():
    pruning = OptunaPruning(None, monitor="val_loss")
    clock = _clock([pruning], TwoRanks(rank=1, others_vote=True))
    clock.train_begin()
    assert clock.epoch_end({"val_loss": 0.5}) is True
    assert [r.reason for r in clock.run.stop_requests] == ["another process voted to stop"]
    assert not pruning.pruned and pruning.reported == {}
    pruning.raise_if_pruned()  # only rank 0 knows


@pytest.mark.parametrize("world", [LocalWorld(), TwoRanks(rank=0)], ids=["single", "rank 0"])
def test_none_on_rank_0_is_refused_when_training_begins(world):
    clock = _clock([OptunaPruning(None, monitor="val_loss")], world)
    with pytest.raises(regplug.UsageError, match=r"^optuna_pruning: trial=None, but this "
                                                 r"(run is not distributed|process is rank 0 "
                                                 r"of 2): the process of world rank 0 must "
                                                 r"hold the Optuna trial"):
        clock.train_begin()
    assert not clock.active


# -- input and wiring ------------------------------------------------------------------------
def test_a_missing_monitor_is_warned_with_the_standard_message_and_nothing_is_reported():
    trial = FakeTrial(prune_at=0)
    pruning = OptunaPruning(trial, monitor="val_los")
    with pytest.warns(regplug.RegplugWarning,
                      match=r"optuna_pruning: monitor 'val_los' is not in the logs of this "
                            r"epoch.*Available keys: loss, val_loss\. Did you mean 'val_loss'"):
        ran, _ = feed([pruning], [0.5, 0.4])
    assert ran == 2 and trial.reports == [] and not pruning.pruned


@pytest.mark.parametrize("monitor", ["", None, 3, ("val_loss",)])
def test_monitor_must_be_a_non_empty_log_key(monitor):
    with pytest.raises(TypeError, match=r"^OptunaPruning: argument 'monitor' must be a "
                                        r"non-empty log key"):
        OptunaPruning(FakeTrial(), monitor=monitor)


def test_monitor_is_required():
    with pytest.raises(TypeError, match="monitor"):
        OptunaPruning(FakeTrial())  # type: ignore[call-arg]


@pytest.mark.parametrize("trial", [object(), optuna.create_study(), "trial"])
def test_trial_must_have_report_and_should_prune(trial):
    with pytest.raises(TypeError, match=r"^OptunaPruning: argument 'trial' must be an "
                                        r"optuna.trial.Trial .* got (object|Study|str)$"):
        OptunaPruning(trial, monitor="val_loss")


def test_a_multi_objective_trial_is_refused_at_construction():
    trial = optuna.create_study(directions=["minimize", "maximize"]).ask()
    with pytest.raises(ValueError, match="multi-objective study \\(2 directions\\)"):
        OptunaPruning(trial, monitor="val_loss")


def test_it_is_per_run_state_and_not_a_config_built_plugin():
    pruning = OptunaPruning(FakeTrial(), monitor="val_loss")
    assert is_stateful(pruning)
    assert "optuna_pruning" not in BUILTIN_PLUGINS
    assert "OptunaPruning" in regplug.plugins.__all__
    assert repr(pruning) == "OptunaPruning(<trial 5>, monitor='val_loss')"
    first = NumpyLoop({"w": np.zeros(1)}, [pruning])
    with pytest.raises(regplug.UsageError, match="already in use by another run"):
        NumpyLoop({"w": np.zeros(1)}, [pruning])
    first.close()


def test_regplug_plugins_imports_without_optuna(tmp_path):
    # cwd: not the checkout, whose regplug/ (without plugins/) would shadow the installed
    # package for `python -c` (sys.path[0] is the current folder)
    def run(code):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("import sys; sys.modules['optuna'] = None\n"  # import optuna now fails
               "import regplug.plugins as p\n"
               "x = p.OptunaPruning(None, monitor='val_loss')\n"
               "x.raise_if_pruned()\n"
               "print(sorted(m for m, mod in sys.modules.items()\n"
               "             if m.startswith('optuna') and mod is not None))") == "[]"
    # ... and importing it does not import Optuna where it is installed
    assert run("import sys, regplug.plugins; print('optuna' in sys.modules)") == "False"

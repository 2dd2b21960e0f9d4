"""The search itself, with a fake runner that trains nothing (tests/tune/conftest.py): the
objective and its direction, the round-robin schedule and the timeout, the grid, pruning,
failed trials, and the test rows kept out of the selection."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from regplug import cli
from regplug.experiment.datasets import Splits
from regplug.experiment.frameworks import TrainSettings
from regplug.experiment.models import BUILTIN_MODELS
from regplug.experiment.strategies import BUILTIN_STRATEGIES, Strategy
from regplug.ranges import grid_values
from regplug.tune.search import Objective, Search, SearchError, round_robin
from regplug.tune.strategy_space import strategy_space


def tiny_splits() -> Splits:
    x = np.zeros((4, 2), np.float32)
    y = np.arange(4) % 2
    return Splits("tiny", x, y, x, y, x, y, 2)


def make_search(runner, names=("l2",), *, objective="val_cross_entropy", sampler="random",
                pruner="none", epochs=5, strategies=None, **kwargs) -> Search:
    chosen = strategies or [BUILTIN_STRATEGIES[n] for n in names]
    return Search(spaces=[strategy_space(s) for s in chosen], runner=runner,
                  splits=tiny_splits(), model=BUILTIN_MODELS["mlp"],
                  settings=TrainSettings(epochs=epochs), objective=Objective(objective),
                  sampler=sampler, pruner=pruner, **kwargs)


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def trials_csv(folder) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# -- the objective ------------------------------------------------------------------------------

def test_the_objective_is_the_metric_at_the_epoch_whose_weights_the_model_keeps():
    history = {"val_cross_entropy": [0.9, 0.3, 0.5], "val_accuracy": [0.5, 0.9, 0.8]}
    assert Objective("val_cross_entropy").value(history, restored=None) == 0.5
    assert Objective("val_cross_entropy").value(history, restored=1) == 0.3
    assert Objective("val_accuracy").value(history, restored=None) == 0.8


@pytest.mark.parametrize("metric, direction, pick", [("val_cross_entropy", "minimize", min),
                                                     ("val_accuracy", "maximize", max)])
def test_the_best_trial_is_the_least_cross_entropy_or_the_greatest_accuracy(
        fake_runner, metric, direction, pick):
    search = make_search(fake_runner, objective=metric, seed=3)
    assert search.studies["l2"].study.direction.name.lower() == direction
    search.run(trials=12)
    records = search.records()["l2"]
    values = [r.value for r in records if r.state == "COMPLETE"]
    best = search.best("l2")
    assert len(values) == 12 and best.value == pick(values)
    # the fake's curve: the least cross-entropy is the greatest accuracy, at the same trial
    assert best.params["l2.l2"] == min(
        (r for r in records), key=lambda r: abs(math.log10(r.params["l2.l2"]) + 3)
    ).params["l2.l2"]


def test_the_epoch_early_stopping_restored_gives_the_objective(fake_runner):
    # the curve falls to epoch 2, then rises; EarlyStopping (restore_best_weights) puts the
    # weights of epoch 2 back, whether or not its patience ended the training early
    fake_runner.rise_after = 2
    search = make_search(fake_runner, names=("early_stopping",), epochs=8, seed=0)
    search.run(trials=4)
    records = search.records()["early_stopping"]
    assert len(records) == 4
    for record in records:
        assert record.value == pytest.approx(0.2 + 1 / 3), record  # epoch 2's value
        patience = record.params["early_stopping.patience"]
        assert record.epochs == min(8, 3 + patience)
    last_epoch_values = [0.2 + 1 / 3 + 0.1 * (r.epochs - 3) for r in records]
    assert all(r.value < v for r, v in zip(records, last_epoch_values))


def test_the_test_rows_take_no_part_in_the_selection(fake_runner):
    # the fake's test accuracy grows with the strength: a search selecting on it would pick
    # the strongest; selected on validation, the best is near the fake's optimum 1e-3
    search = make_search(fake_runner, seed=1)
    search.run(trials=15)
    records = search.records()["l2"]
    best = search.best("l2")
    strongest = max(r.params["l2.l2"] for r in records)
    assert best.params["l2.l2"] < strongest
    calls_before = len(fake_runner.calls)
    search.measure_best(best)
    assert len(fake_runner.calls) == calls_before + 1  # trained once more, for the test rows
    assert best.acc_test == pytest.approx(min(1.0, 0.5 + 5 * best.params["l2.l2"]))
    assert best.refit_value == best.value
    assert "OptunaPruning" not in "".join(fake_runner.calls[-1][1]["plugins"])


# -- round-robin and timeout ---------------------------------------------------------------------

def test_round_robin_gives_every_name_a_turn_before_anyone_gets_a_second():
    order: list[str] = []
    result = round_robin(["a", "b", "c"], trials=2, run_one=order.append)
    assert order == ["a", "b", "c", "a", "b", "c"]
    assert result.ran == {"a": 2, "b": 2, "c": 2} and not result.timed_out


def test_a_timeout_leaves_every_strategy_within_one_trial_of_the_others():
    now = [0.0]

    def run_one(name: str) -> None:
        now[0] += 1.0  # every trial takes a second

    result = round_robin(["a", "b", "c"], trials=100, run_one=run_one, timeout=4.5,
                         clock=lambda: now[0])
    assert result.timed_out
    assert result.ran == {"a": 2, "b": 2, "c": 1}  # started at t = 0..4; none at 5 >= 4.5
    # run one strategy after the other instead and the last would get nothing:
    now[0] = 0.0
    sequential = {n: round_robin([n], trials=100, run_one=run_one, timeout=4.5 - now[0],
                                 clock=lambda: now[0]).ran[n] for n in ("a", "b", "c")}
    assert sequential["c"] == 0


def test_an_exhausted_name_takes_no_more_and_is_named():
    order: list[str] = []
    result = round_robin(["a", "b"], trials=5, run_one=order.append,
                         exhausted=lambda name: name == "a" and order.count("a") >= 2)
    assert result.ran == {"a": 2, "b": 5} and result.exhausted == ["a"]


def test_the_search_takes_turns_between_strategies_with_a_fake_clock(fake_runner):
    search = make_search(fake_runner, names=("l2", "dropout", "early_stopping"))
    result = search.run(trials=50, timeout=5.5, clock=lambda: fake_runner.clock[0])
    assert result.timed_out and result.ran == {"l2": 2, "dropout": 2, "early_stopping": 2}
    assert [c[0] for c in fake_runner.calls] == ["l2", "dropout", "early_stopping"] * 2


def test_the_command_timeout_stops_starting_trials_and_says_so(fake_runner, capsys, monkeypatch):
    import time

    original = fake_runner.train_strategy

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return original(*args, **kwargs)

    fake_runner.train_strategy = slow
    code, out, _ = tune(capsys, "--strategies", "l2,dropout", "--trials", "500",
                        "--timeout", "0.4", "--epochs", "2", "--pruner", "none")
    assert code == 0
    ran = [line.split()[0] for line in out.splitlines() if " #" in line]
    assert 2 <= len(ran) < 1000
    assert abs(ran.count("l2") - ran.count("dropout")) <= 1
    assert "--timeout reached" in out


# -- grid ---------------------------------------------------------------------------------------

def test_the_grid_runs_each_setting_once_and_no_trial_beyond_it(fake_runner, capsys, tmp_path):
    from regplug.plugins import L2

    code, out, _ = tune(capsys, "--strategies", "l2", "--sampler", "grid", "--grid-points",
                        "4", "--trials", "10", "--epochs", "2", "--out", str(tmp_path / "o"))
    assert code == 0
    rows = trials_csv(tmp_path / "o")
    assert len(rows) == 4
    assert sorted(float(r["l2.l2"]) for r in rows) == grid_values(L2.tunable["l2"], 4)
    assert "grid: l2 has 4 setting(s)" in out and "--trials 10 runs at most 4" in out
    assert "l2: the grid was run through before --trials" in out


# -- pruning and failures ------------------------------------------------------------------------

def test_median_pruning_stops_bad_trials_early_through_the_plugin_clock(fake_runner):
    search = make_search(fake_runner, pruner="median", epochs=8, seed=0)
    search.run(trials=20)
    records = search.records()["l2"]
    pruned = [r for r in records if r.state == "PRUNED"]
    assert pruned, [r.state for r in records]
    for record in pruned:
        assert record.epochs < 8 and record.pruned_epoch == record.epochs - 1
        # the value of a pruned trial is its last reported one: the fake's curve at that epoch
        floor = fake_runner.floor_of(Strategy("x", ({"name": "l2", "l2": record.params["l2.l2"]},)))
        assert record.value == pytest.approx(floor + 1 / record.epochs)
    complete = [r for r in records if r.state == "COMPLETE"]
    assert all(r.epochs == 8 for r in complete)
    # pruned trials are worse at their epoch than the median of the earlier ones
    assert min(r.value for r in complete) < min(r.value for r in pruned)


def pruned_epochs(fake_runner, pruner, **kwargs) -> list[int]:
    """The epochs (from 0) at which a 20-trial search of 8 epochs pruned its trials."""
    search = make_search(fake_runner, pruner=pruner, epochs=8, seed=0, **kwargs)
    search.run(trials=20)
    records = search.records()["l2"]
    assert all(r.epochs == r.pruned_epoch + 1 for r in records if r.state == "PRUNED")
    return [r.pruned_epoch for r in records if r.state == "PRUNED"]


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_no_trial_is_pruned_within_the_warmup_epochs(fake_runner, pruner):
    assert min(pruned_epochs(fake_runner, pruner)) < 3  # without a warm-up: earlier
    warmed = pruned_epochs(fake_runner, pruner, warmup_epochs=3)
    assert warmed, "the pruner still acts after the warm-up"
    assert min(warmed) == 3


def test_a_warmup_that_leaves_no_epoch_to_prune_in_is_refused(fake_runner):
    with pytest.raises(SearchError, match=r"--warmup-epochs 8: must be from 0 to --epochs - 1 \(7\)"):
        make_search(fake_runner, pruner="median", epochs=8, warmup_epochs=8)


def test_a_failing_trial_is_recorded_and_the_study_goes_on(fake_runner, capsys, tmp_path):
    fake_runner.fail_above = 1e-2
    code, out, _ = tune(capsys, "--strategies", "l2", "--sampler", "grid", "--grid-points",
                        "5", "--epochs", "2", "--pruner", "none", "--out", str(tmp_path / "o"))
    assert code == 0
    rows = trials_csv(tmp_path / "o")
    states = [r["state"] for r in sorted(rows, key=lambda r: float(r["l2.l2"]))]
    assert states == ["COMPLETE"] * 4 + ["FAIL"]  # only 0.1 is above 1e-2 on this grid
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(failed) == 1 and float(failed[0]["l2.l2"]) == 0.1
    assert failed[0]["error"] == "ValueError: fake: l2 0.1 diverged"
    assert failed[0]["val_cross_entropy"] == ""
    assert "failed: ValueError: fake: l2 0.1 diverged" in out

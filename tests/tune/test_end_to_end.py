"""``regplug tune`` training for real on digits, with tiny budgets: torch (and Keras, slow)."""

from __future__ import annotations

import csv
import json

import pytest

from regplug import cli


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(folder) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_torch_search_and_compare_on_its_best_toml_agree(capsys, tmp_path):
    out = tmp_path / "tune-out"
    code, printed, err = tune(capsys, "--strategies", "l2,dropout", "--epochs", "3",
                              "--trials", "3", "--out", str(out))
    assert code == 0, err
    rows = rows_of(out)
    assert [(r["strategy"], r["state"], r["epochs"]) for r in rows] == (
        [("l2", "COMPLETE", "3")] * 3 + [("dropout", "COMPLETE", "3")] * 3)
    assert all(0.0 < float(r["val_cross_entropy"]) < 3.0 for r in rows)
    results = json.loads((out / "results.json").read_text())
    best = results["strategies"]["l2"]["best"]
    assert best["refit_value"] == pytest.approx(best["value"], rel=1e-6)  # torch on CPU:
    # retraining the best setting reproduces its trial

    # regplug compare on best.toml trains the same models: the same test accuracies as the
    # ones tune measured once after selection
    code, compared, err = capsys_run(capsys, "compare", "--preset", "notebook",
                                     "--config", str(out / "best.toml"),
                                     "--framework", "torch", "--epochs", "3", "-q")
    assert code == 0, err
    table = {line.split()[1]: line.split() for line in compared.splitlines()
             if line.startswith("torch ")}
    for name in ("l2", "dropout"):
        measured = results["strategies"][name]["best"]["test_accuracy"]
        assert float(table[f"{name}_tuned"][3]) == pytest.approx(measured, abs=1e-4)
    assert "measured once after selection" in printed


def capsys_run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_median_pruning_stops_trials_early_in_a_real_torch_search(capsys, tmp_path):
    out = tmp_path / "o"
    code, printed, err = tune(capsys, "--strategies", "l2", "--pruner", "median",
                              "--trials", "12", "--epochs", "6", "--out", str(out))
    assert code == 0, err
    rows = rows_of(out)
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert pruned, [(r["state"], r["l2.l2"]) for r in rows]
    for row in pruned:
        # a prune at the last epoch would save nothing: such a trial is complete (below)
        assert 1 <= int(row["epochs"]) < 6
        assert int(row["pruned_at_epoch"]) == int(row["epochs"]), (rows, printed)
        assert f"#{row['number']}" in printed
    assert "pruned at epoch" in printed
    summary = printed[printed.index("summary"):]
    run = sum(int(r["epochs"]) for r in rows)
    assert f"{run} of {6 * len(rows)}" in summary and run < 6 * len(rows)


@pytest.mark.parametrize("refuse_from", [0, 2])
def test_a_trial_pruned_at_epoch_k_from_0_ran_k_plus_1_epochs_in_torch(capsys, tmp_path,
                                                                      monkeypatch, refuse_from):
    """The real torch loop stops right after the epoch whose report the pruner refused, and
    trials.csv, results.json and the printed line say so, counting from 1: pruned_at_epoch
    k + 1, epochs k + 1, "pruned at epoch k + 1". Optuna's ThresholdPruner with upper=0 refuses every cross-entropy from step
    ``refuse_from`` on, so the epoch is known without depending on other trials' numbers (as
    MedianPruner's decisions do); refuse_from 0 is a prune at the very first report."""
    optuna = pytest.importorskip("optuna")
    from regplug.tune import search

    monkeypatch.setattr(search, "make_pruner", lambda kind, *, epochs, warmup=0:
                        optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=refuse_from))
    out = tmp_path / "o"
    code, printed, err = tune(capsys, "--strategies", "l2", "--trials", "2", "--epochs", "4",
                              "--out", str(out))
    assert code == 0, err
    rows = rows_of(out)
    assert [(r["state"], r["pruned_at_epoch"], r["epochs"]) for r in rows] == (
        [("PRUNED", str(refuse_from + 1), str(refuse_from + 1))] * 2)
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert [(t["pruned_at_epoch"], t["epochs"]) for t in trials] == (
        [(refuse_from + 1, refuse_from + 1)] * 2)
    for row in rows:
        line = next(l for l in printed.splitlines() if f"#{row['number']:<4} " in l)
        assert f"pruned at epoch {refuse_from + 1} (val_cross_entropy" in line
    assert f"{2 * (refuse_from + 1)} of 8" in printed[printed.index("summary"):]


def test_a_trial_the_pruner_refuses_only_at_its_last_epoch_is_complete(capsys, tmp_path,
                                                                    monkeypatch):
    """Pruning at the last epoch saves nothing; the trial ran every epoch, so it counts as
    complete, with its value (a PRUNED record would drop a finished trial from the best)."""
    optuna = pytest.importorskip("optuna")
    from regplug.tune import search

    monkeypatch.setattr(search, "make_pruner", lambda kind, *, epochs, warmup=0:
                        optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=epochs - 1))
    out = tmp_path / "o"
    code, printed, err = tune(capsys, "--strategies", "l2", "--trials", "2", "--epochs", "4",
                              "--out", str(out))
    assert code == 0, err
    rows = rows_of(out)
    assert [(r["state"], r["pruned_at_epoch"], r["epochs"]) for r in rows] == (
        [("COMPLETE", "", "4")] * 2)
    assert all(float(r["val_cross_entropy"]) > 0 for r in rows)
    assert "pruned at epoch" not in printed


@pytest.mark.slow
def test_keras_search_writes_a_best_toml_compare_reads(capsys, tmp_path):
    pytest.importorskip("keras")
    out = tmp_path / "o"
    code, printed, err = tune(capsys, "--framework", "keras", "--strategies", "l2",
                              "--epochs", "2", "--trials", "2", "--pruner", "none",
                              "--out", str(out))
    assert code == 0, err
    assert "framework:  keras" in printed
    rows = rows_of(out)
    assert [(r["state"], r["epochs"]) for r in rows] == [("COMPLETE", "2")] * 2
    from regplug.experiment.strategies import load_strategies

    tuned = load_strategies(out / "best.toml")["l2_tuned"]
    best = min(rows, key=lambda r: float(r["val_cross_entropy"]))
    assert tuned.plugins == ({"name": "l2", "l2": float(best["l2.l2"])},)

"""The doctor's verdicts on the scenario suite: right on at least 9 in 10 runs per framework,
and on the overfitting scenarios its fix narrows pct_diff beyond seed noise where the gap is
memorized noise (docs/doctor.md, "How we know the verdicts are right")."""

from __future__ import annotations

import math

import pytest
from confusion import confusion_table, run_suite
from scenarios import SCENARIOS

from regplug.doctor.cli import Budget, run_doctor

SEEDS = (0, 1)
BY_NAME = {s.name: s for s in SCENARIOS}


def _check(framework: str) -> None:
    rows = run_suite(framework, SEEDS)
    table = confusion_table(rows)
    print(table)
    wrong = [r for r in rows if r[2] != r[3]]
    assert len(rows) == len(SCENARIOS) * len(SEEDS)
    assert len(wrong) <= math.floor(len(rows) / 10), table  # right on >= 9 in 10
    # every scenario right on at least one seed: no verdict is right only by the others
    for scenario in SCENARIOS:
        assert any(r[0] == scenario.name and r[2] == r[3] for r in rows), (scenario.name, table)


def test_torch_verdicts():
    _check("torch")


@pytest.mark.slow
def test_keras_verdicts():
    _check("keras")


def _fix(framework: str, name: str, *, budget: int, seeds: int = 3):
    return run_doctor(framework=framework, seed=0, budget=Budget(trainings=budget),
                      seeds=seeds, **BY_NAME[name].kwargs)


def test_torch_label_noise_fix_beats_seed_noise():
    result = _fix("torch", "label_noise", budget=12)
    assert result.diagnosis.verdict == "overfitting"
    assert result.search is not None and result.search.best is not None
    s = result.seeds
    assert s is not None and len(s.seeds) == 3
    assert s.mean_diff < 0 and s.p < 0.05 and s.beats_noise, result.text()


def test_torch_tiny_data_fix_lowers_validation_loss_not_the_gap():
    """Clean tiny data: the tuned setting lowers the validation cross-entropy below none's,
    but training accuracy stays 1 and the accuracy gap is the data's: the seed test says
    so rather than claim a cure (docs/doctor.md)."""
    result = _fix("torch", "tiny_data", budget=12)
    assert result.diagnosis.verdict == "overfitting"
    assert result.search is not None and result.search.best is not None
    assert result.search.best.value <= result.history["val_cross_entropy"][-1]
    s = result.seeds
    assert s is not None
    if not s.beats_noise:
        assert any("not narrow the gap beyond seed noise" in n for n in result.notes)


@pytest.mark.slow
def test_keras_label_noise_fix_beats_seed_noise():
    result = _fix("keras", "label_noise", budget=12)
    assert result.diagnosis.verdict == "overfitting"
    s = result.seeds
    assert s is not None and s.mean_diff < 0 and s.beats_noise, result.text()


@pytest.mark.slow
def test_torch_tiny_data_shows_more_rows_are_the_cure():
    """Clean tiny data: no regularizer raises test accuracy beyond seed noise, so the doctor
    trains none on half the rows (step (e)) and shows the cure with numbers: the test
    accuracy still climbs with rows (30 → 60: about +0.15 against a seed noise of 0.04)."""
    result = _fix("torch", "tiny_data", budget=12)
    s = result.seeds
    assert s is not None and not s.raises_test_accuracy, result.text()
    c = result.curve
    assert c is not None and c.half_rows == 30 and c.rows == 60
    assert c.climbing and "more rows (or augmentation) is the cure" in result.text()


@pytest.mark.slow
def test_torch_label_noise_fix_raises_test_accuracy_too():
    """Label noise: the fix's narrower gap is a real gain on the test rows, not only a lower
    training accuracy (the paired test on test accuracy)."""
    result = _fix("torch", "label_noise", budget=12)
    s = result.seeds
    assert s is not None and s.raises_test_accuracy and result.curve is None, result.text()

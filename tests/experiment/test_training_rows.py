"""``--train-rows`` and ``--label-noise``: fewer training rows, a share of their labels
replaced at random; validation and test rows untouched; the same rows and labels in every
framework for a seed, other ones for another seed; mistakes refused in one line before any
training."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug import cli
from regplug.compare.comparison import run_compare
from regplug.experiment import frameworks
from regplug.experiment.datasets import (
    LABEL_NOISE_STREAM,
    Splits,
    load_splits,
    restrict_training,
    split_validation,
    splits_per_seed,
)
from regplug.experiment.frameworks import TrainSettings
from regplug.experiment.loaders import Dataset
from regplug.experiment.models import BUILTIN_MODELS
from regplug.experiment.strategies import BUILTIN_STRATEGIES
from regplug.experiment.training import TrainOutcome, WeightArray


def toy(rows: int = 200, classes: int = 10) -> Splits:
    rng = np.random.default_rng(5)
    data = Dataset("toy", rng.normal(size=(rows, 4)).astype(np.float32),
                   np.arange(rows) % classes, rng.normal(size=(30, 4)).astype(np.float32),
                   np.arange(30) % classes)
    return split_validation(data, seed=3)


@settings(max_examples=60, deadline=None)
@given(noise=st.floats(0.0, 0.99), rows=st.integers(10, 170), seed=st.integers(0, 2**32 - 1),
       classes=st.integers(2, 10))
def test_exactly_the_fraction_of_training_labels_changes_each_to_another_class(
        noise, rows, seed, classes):
    clean = toy(classes=classes)
    noisy = restrict_training(clean, train_rows=rows, label_noise=noise, seed=seed)
    assert len(noisy.x_train) == len(noisy.y_train) == rows
    np.testing.assert_array_equal(noisy.x_train, clean.x_train[:rows])  # the first rows
    changed = noisy.y_train != clean.y_train[:rows]
    assert int(changed.sum()) == round(noise * rows) == noisy.noisy_rows
    assert noisy.y_train.min() >= 0 and noisy.y_train.max() < classes
    assert noisy.y_train.dtype == clean.y_train.dtype
    for part in ("x_val", "y_val", "x_test", "y_test"):  # untouched, the very arrays
        assert getattr(noisy, part) is getattr(clean, part)
    assert clean.y_train is not noisy.y_train  # the clean split's labels were not written


def test_the_replacing_classes_are_uniform_over_the_other_classes():
    clean = toy(rows=6000, classes=4)
    noisy = restrict_training(clean, label_noise=0.5, seed=0)
    changed = noisy.y_train != clean.y_train
    shifts = (noisy.y_train[changed] - clean.y_train[changed]) % 4
    counts = np.bincount(shifts, minlength=4)
    assert counts[0] == 0
    assert all(abs(c / changed.sum() - 1 / 3) < 0.03 for c in counts[1:]), counts


def test_the_noise_is_documented_rng_of_the_seed_alone():
    clean = toy()
    noisy = restrict_training(clean, label_noise=0.3, seed=7)
    rng = np.random.default_rng([7, LABEL_NOISE_STREAM])
    rows = rng.choice(len(clean.y_train), size=noisy.noisy_rows, replace=False)
    assert set(np.flatnonzero(noisy.y_train != clean.y_train)) == set(rows.tolist())


def test_without_the_options_the_split_is_the_very_same():
    clean = toy()
    assert restrict_training(clean, seed=1) is clean
    assert clean.describe() == "toy: 170 train / 30 validation / 30 test rows, 4 features, " \
                               "10 classes"


def test_digits_per_seed_same_for_a_seed_other_for_another():
    pytest.importorskip("sklearn")
    split = splits_per_seed("digits", train_rows=500, label_noise=0.3)
    first, again, other = split(0), split(0), split(1)
    clean = load_splits("digits", seed=0)
    assert first.describe() == ("digits: 500 of 1069 train (30 % labels replaced: 150 rows) / "
                                "189 validation / 539 test rows, 64 features, 10 classes")
    np.testing.assert_array_equal(first.y_train, again.y_train)
    np.testing.assert_array_equal(first.x_train, clean.x_train[:500])
    np.testing.assert_array_equal(first.y_val, clean.y_val)
    np.testing.assert_array_equal(first.y_test, clean.y_test)
    wrong_0 = set(np.flatnonzero(first.y_train != clean.y_train[:500]).tolist())
    clean_1 = load_splits("digits", seed=1)
    wrong_1 = set(np.flatnonzero(other.y_train != clean_1.y_train[:500]).tolist())
    assert len(wrong_0) == len(wrong_1) == 150 and wrong_0 != wrong_1


@dataclass
class RecordingRunner:
    """Trains nothing; records the rows and labels each run was given."""

    name: str
    seen: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.name} fake"

    def train_strategy(self, splits, strategy, plugins, model_choice, settings, on_epoch=None):
        self.seen[(strategy.name, settings.seed)] = [
            splits.x_train, splits.y_train, splits.y_val, splits.y_test]
        history = {key: [0.5] for key in ("loss", "val_loss", "cross_entropy",
                                          "val_cross_entropy", "accuracy", "val_accuracy")}
        return TrainOutcome(history=history, acc_train=0.9, acc_test=0.8,
                            weights=[WeightArray("w", "weight", "Dense", 1, np.ones((2, 2)))],
                            steps=1, seconds=0.0)

    def mc_dropout(self, toy, *, seed=0):
        raise NotImplementedError


def test_every_framework_trains_a_seed_on_the_same_rows_and_labels(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(frameworks, "_registered", dict(frameworks._registered))
    monkeypatch.setattr(frameworks, "_loaded", dict(frameworks._loaded))
    runners = {name: RecordingRunner(name) for name in ("torch", "keras")}
    for name, runner in runners.items():
        frameworks.register_runner(name, lambda runner=runner: runner)
    split = splits_per_seed("digits", train_rows=300, label_noise=0.3)
    run_compare(frameworks=("torch", "keras"),
                strategies=[BUILTIN_STRATEGIES["none"], BUILTIN_STRATEGIES["l2"]],
                splits=split(4), model=BUILTIN_MODELS["mlp"],
                settings=TrainSettings(epochs=1, seed=4), seeds=3, splits_for=split)
    torch, keras = runners["torch"].seen, runners["keras"].seen
    assert set(torch) == set(keras) == {(s, seed) for s in ("none", "l2") for seed in (4, 5, 6)}
    for key in torch:
        for mine, theirs in zip(torch[key], keras[key], strict=True):
            np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_array_equal(torch[key][1], torch[("none", key[1])][1])  # paired
        assert len(torch[key][0]) == 300
    assert not np.array_equal(torch[("none", 4)][1], torch[("none", 5)][1])


# -- mistakes: one line naming the option and its range ------------------------------------

@pytest.fixture
def no_runner(monkeypatch):
    """Fail the test if a framework's runner is asked for (refusals come before that)."""
    def refuse(name):
        raise AssertionError(f"runner {name!r} loaded before the refusal")
    monkeypatch.setattr(frameworks, "get_runner", refuse)


def one_line_error(capsys, argv: list[str]) -> str:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's refusals exit
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(("regplug: error: ", f"regplug {argv[0]}: error: ")), lines
    return lines[0]


@pytest.mark.parametrize("command", ["compare", "tune"])
@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "nan", "lots"])
def test_a_label_noise_outside_0_to_1_is_refused(capsys, command, value, no_runner):
    if command == "tune":
        pytest.importorskip("optuna")
    line = one_line_error(capsys, [command, "--strategies", "l2", "--label-noise", value])
    assert "argument --label-noise" in line
    assert ("0 <= F < 1" in line) if value != "lots" else ("invalid number: 'lots'" in line)


@pytest.mark.parametrize("command", ["compare", "tune"])
@pytest.mark.parametrize("value, fragment", [
    ("0", "argument --train-rows: must be at least 1, got 0"),
    ("5", "--train-rows 5: must be from 10 (the classes) to 1069 (the training rows of "
          "'digits' left after the validation split)"),
    ("1070", "--train-rows 1070: must be from 10 (the classes) to 1069"),
])
def test_train_rows_beyond_the_data_or_below_the_classes_is_refused(
        capsys, command, value, fragment, no_runner):
    pytest.importorskip("sklearn")
    if command == "tune":
        pytest.importorskip("optuna")
    preset = ["--preset", "notebook"] if command == "compare" else []  # digits, as tune
    line = one_line_error(capsys, [command, *preset, "--strategies", "l2", "--train-rows",
                                   value])
    assert fragment in line, line


def test_compare_prints_and_records_the_rows_and_the_noise(monkeypatch, capsys):
    pytest.importorskip("sklearn")
    from regplug.compare.comparison import run_settings

    monkeypatch.setattr(frameworks, "_registered", dict(frameworks._registered))
    monkeypatch.setattr(frameworks, "_loaded", dict(frameworks._loaded))
    runner = RecordingRunner("torch")
    frameworks.register_runner("torch", lambda: runner)
    code = cli.main(["compare", "--preset", "notebook", "--framework", "torch", "--strategies",
                     "none,l2", "--epochs",
                     "1", "--seeds", "3", "--train-rows", "400", "--label-noise", "0.3", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    described = ("digits: 400 of 1069 train (30 % labels replaced: 120 rows) / 189 validation / "
                 "539 test rows, 64 features, 10 classes")
    assert f"data:       {described}\n            (per seed: the test rows and the validation " \
           "split, the noisy rows and labels)" in out
    assert all(len(seen[0]) == 400 for seen in runner.seen.values())
    splits = load_splits("digits", seed=0, train_rows=400, label_noise=0.3)
    info = run_settings({"torch": runner}, [BUILTIN_STRATEGIES["none"]], splits,
                        BUILTIN_MODELS["mlp"], TrainSettings(), "regplug compare")
    assert info["data"] == described
    assert info["train_rows"] == 400 and info["train_label_noise"] == 0.3
    clean = run_settings({"torch": runner}, [BUILTIN_STRATEGIES["none"]],
                         load_splits("digits", seed=0), BUILTIN_MODELS["mlp"], TrainSettings(),
                         "regplug compare")
    assert clean["train_rows"] is None and clean["train_label_noise"] == 0.0

"""``regplug tune --train-rows N --label-noise F``: every trial trains on the same noisy
rows, the outputs say so, and a shared study refuses a run with other rows or noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regplug import cli
from regplug.experiment.datasets import load_splits

pytest.importorskip("optuna")
pytest.importorskip("sklearn")


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_trial_trains_on_the_noisy_rows_and_the_outputs_say_so(
        tmp_path, fake_runner, capsys, monkeypatch):
    seen = []
    train = fake_runner.train_strategy

    def recording(splits, *args, **kwargs):
        seen.append(splits)
        return train(splits, *args, **kwargs)

    monkeypatch.setattr(fake_runner, "train_strategy", recording)
    out = tmp_path / "out"
    code, printed, err = tune(capsys, "--strategies", "l2", "--trials", "2", "--epochs", "2",
                              "--seed", "3", "--train-rows", "200", "--label-noise", "0.25",
                              "--out", str(out))
    assert code == 0, err
    described = ("digits: 200 of 1069 train (25 % labels replaced: 50 rows) / 189 validation / "
                 "539 test rows, 64 features, 10 classes")
    assert f"data:       {described}" in printed
    clean = load_splits("digits", seed=3)
    noisy = load_splits("digits", seed=3, train_rows=200, label_noise=0.25)
    assert len(seen) == 3  # two trials and the best one measured on the test rows
    for splits in seen:
        np.testing.assert_array_equal(splits.x_train, clean.x_train[:200])
        np.testing.assert_array_equal(splits.y_train, noisy.y_train)
        np.testing.assert_array_equal(splits.y_val, clean.y_val)
        np.testing.assert_array_equal(splits.y_test, clean.y_test)
    assert int((seen[0].y_train != clean.y_train[:200]).sum()) == 50
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["data"] == described
    assert described in (out / "report.html").read_text()


@pytest.mark.parametrize("first, then, was, now", [
    (["--label-noise", "0.2"], ["--label-noise", "0.3"], "--label-noise 0.2", "--label-noise 0.3"),
    (["--label-noise", "0.2"], [], "--label-noise 0.2", "--label-noise 0.0"),
    ([], ["--label-noise", "0.2"], "--label-noise 0.0", "--label-noise 0.2"),
    (["--train-rows", "300"], ["--train-rows", "400"], "--train-rows 300", "--train-rows 400"),
    ([], ["--train-rows", "300"], "--train-rows all", "--train-rows 300"),
])
def test_a_shared_study_refuses_other_training_rows_or_noise(
        tmp_path, fake_runner, capsys, first, then, was, now):
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    base = ["--strategies", "l2", "--trials", "1", "--epochs", "2", "--storage", url]
    assert tune(capsys, *base, *first)[0] == 0
    assert tune(capsys, *base, *first)[0] == 0  # the same settings join the study
    calls = len(fake_runner.calls)
    code, _, err = tune(capsys, *base, *then)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    there, here = err.split(", this run has ")
    assert was in there and now in here, err
    assert len(fake_runner.calls) == calls  # refused before any training

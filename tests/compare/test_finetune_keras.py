"""`regplug compare --task finetune --framework keras`: one pretraining per seed, every
strategy but scratch starting from it with a fresh head, each strategy's plugins in fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")

from _compare_cli import run_cli
from _finetune import backbone, head, same, train

from regplug.experiment.finetune import load_finetune_splits


def test_every_strategy_but_scratch_starts_from_the_seeds_one_pretraining():
    splits = load_finetune_splits(None, seed=1, shots=5)
    _, scratch_first = train("keras", splits, "scratch", seed=1)
    assert not splits.cache
    tuned, tuned_first = train("keras", splits, "finetune", seed=1)
    _, frozen_first = train("keras", splits, "freeze", seed=1)
    assert list(splits.cache) == [("keras", "mlp", None, False, 1)]  # pretrained once
    assert sorted(tuned_first) == ["head.bias", "head.kernel", "layers.0.bias",
                                   "layers.0.kernel", "layers.1.bias", "layers.1.kernel"]
    assert same(backbone(tuned_first), backbone(frozen_first))
    assert same(head(tuned_first), head(scratch_first))  # fresh, as scratch's
    assert not np.array_equal(tuned_first["layers.0.kernel"], scratch_first["layers.0.kernel"])
    again, again_first = train("keras", load_finetune_splits(None, seed=1, shots=5), "finetune",
                               seed=1)
    assert same(again_first, tuned_first) and again.acc_test == tuned.acc_test


def test_freeze_keeps_the_pretrained_backbone_in_fit():
    frozen, first = train("keras", load_finetune_splits(None, seed=0, shots=5), "freeze",
                          epochs=3)
    final = {w.name: w.array for w in frozen.weights}
    assert same(backbone(final), backbone(first))
    assert not np.array_equal(final["head.kernel"], first["head.kernel"])


def test_the_command_runs_the_task_in_keras(tmp_path, capsys):
    out_dir = tmp_path / "run"
    names = ["scratch", "finetune", "gradual_unfreeze", "llrd", "l2sp", "ema", "l2"]
    code, _, err = run_cli(capsys, "--task", "finetune", "--framework", "keras", "--data",
                           "digits", "--shots", "5", "--epochs", "2", "--seeds", "1", "-q",
                           "--strategies", ",".join(names), "--out", str(out_dir))
    assert code == 0, err
    payload = json.loads((out_dir / "results.json").read_text())
    assert [r["strategy"] for r in payload["results"]] == names
    assert {r["framework"] for r in payload["results"]} == {"keras"}
    assert all(r["epochs"] == 2 for r in payload["results"])

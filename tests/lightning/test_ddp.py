"""Regularize under Lightning's DDP (2 CPU processes, gloo): stop votes are collective."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.mark.slow
def test_a_stop_vote_on_one_rank_stops_both_ranks_at_the_same_epoch(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HELPERS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(HELPERS / "_lightning_ddp.py"), str(tmp_path)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          check=False)  # cwd: never the checkout, whose regplug/ is partial
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["epoch"] for r in ranks] == [2, 2]  # both stopped after epoch index 1
    assert "another process voted to stop" in ranks[0]["stops"][0]
    assert "test vote on rank 1" in ranks[1]["stops"][0]
    assert ranks[0]["history"] == ranks[1]["history"]  # logs averaged over the ranks
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name

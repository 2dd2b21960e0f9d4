"""OptunaPruning on two gloo processes: rank 0 holds the trial, rank 1 ``OptunaPruning(None)``;
the trial hears the mean metric and both ranks leave training after the pruned epoch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("optuna")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch was built without distributed gloo support", allow_module_level=True)

from _torch_pruning_ddp import PRUNE_AT, VAL_LOSSES, launch  # noqa: E402 (after the skips)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    outcome = launch(tmp_path_factory.mktemp("pruning-ddp"))
    assert outcome.returncodes == [0, 0], outcome.describe()
    return dict(enumerate(outcome.results))


@pytest.mark.slow
def test_both_ranks_stop_after_the_epoch_rank_0s_trial_was_pruned_at(job):
    for rank in (0, 1):
        report = job[rank]
        assert report["world"] == ("TorchWorld", rank, 2)
        assert report["should_stop"]
        assert report["epochs_run"] == report["history_epochs"] == PRUNE_AT + 1  # of 6
    (request,) = job[0]["requests"]
    assert request[1:] == ("optuna_pruning", PRUNE_AT)
    assert request[0].startswith(f"Optuna pruned trial 0 at epoch {PRUNE_AT + 1} (step "
                                 f"{PRUNE_AT}): val_loss = ")
    assert job[1]["requests"] == [("another process voted to stop", "rank 1", PRUNE_AT)]


@pytest.mark.slow
def test_rank_0_reports_the_mean_over_the_ranks_and_only_rank_0_raises_trial_pruned(job):
    means = [(a + b) / 2 for a, b in zip(VAL_LOSSES[0], VAL_LOSSES[1])]
    expected = dict(enumerate(means[:PRUNE_AT + 1]))
    first, second = job[0], job[1]
    assert first["intermediate"] == pytest.approx(expected)
    assert first["reported"] == pytest.approx(expected)
    assert first["state"] == "PRUNED"
    assert (first["pruned"], first["pruned_epoch"]) == (True, PRUNE_AT)
    assert first["raised"] == first["requests"][0][0]
    assert (second["pruned"], second["reported"], second["raised"]) == (False, {}, None)

"""PyTorch DDP on two processes (gloo, CPU): collective stop votes and penalties counted once.

The two ranks are real processes started by ``_torch_distributed.launch`` (as ``torchrun``
would start them); they train a ``DistributedDataParallel`` model, each on its half of
every batch, and send back what they saw. A job that hangs is killed after a time limit,
so a missing collective call fails the test instead of stalling the suite.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch was built without distributed gloo support", allow_module_level=True)

from _torch_distributed import CONFIGS, VAL_LOSSES, launch, reference_weights  # noqa: E402 (after the skip)

from regplug.adapters.torch import vote_device  # noqa: E402

RANKS = (0, 1)

# Each launch starts two Pythons that import torch and DDP (several seconds on 2 cores).
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Everything that should succeed, run once on two ranks: {rank: {part: result}}."""
    outcome = launch("main", tmp_path_factory.mktemp("ddp"), timeout=120)
    assert outcome.returncodes == [0, 0], outcome.describe()
    return dict(enumerate(outcome.results))


# -- stop votes --------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("voter, at", [(0, 1), (1, 2)])
def test_a_stop_voted_on_one_rank_stops_both_ranks_at_the_same_epoch(job, voter, at):
    reports = {rank: job[rank]["stop_votes"][voter, at] for rank in RANKS}
    for rank, report in reports.items():
        assert report["world"] == ("TorchWorld", rank, 2)  # picked without being asked
        assert report["should_stop"]
        assert report["epochs_run"] == at + 1  # of 5: both left the loop after epoch `at`
        assert report["history_epochs"] == at + 1
    other = 1 - voter
    assert reports[voter]["requests"] == [
        (f"test vote on rank {voter} at epoch {at}", "vote_on_rank", at)]
    # The rank whose plugins did not vote says why it stopped all the same.
    assert reports[other]["requests"] == [("another process voted to stop", f"rank {other}", at)]


@slow
def test_without_a_vote_every_rank_runs_every_epoch(job):
    for rank in RANKS:
        report = job[rank]["stop_votes"][None, None]
        assert (report["epochs_run"], report["should_stop"], report["requests"]) == (5, False, [])


@slow
def test_early_stopping_decides_on_the_mean_metric_and_restores_the_same_weights_everywhere(job):
    # Rank 0's own val_loss improves until index 6; the mean over the ranks is best at index
    # 3, so both ranks stop at index 5 and both restore epoch 3: the replicas stay identical.
    first, second = job[0]["early_stopping"], job[1]["early_stopping"]
    means = [(a + b) / 2 for a, b in zip(VAL_LOSSES[0], VAL_LOSSES[1])]
    assert first["val_loss"] == second["val_loss"] == pytest.approx(means[:6])
    assert first["epochs_run"] == second["epochs_run"] == 6
    assert first["best_epoch"] == second["best_epoch"] == 3
    assert first["stop_reason"] == second["stop_reason"]
    assert first["stop_reason"].startswith("patience exhausted at epoch 6: val_loss")
    for name, value in first["weights"].items():
        assert torch.equal(value, second["weights"][name]), name


def test_different_log_keys_on_the_ranks_are_refused_on_every_rank(job):
    for rank in RANKS:
        message = job[rank]["mismatched_logs"]
        assert "different log keys on different ranks" in message, message


# -- penalties and updates on a DDP model ------------------------------------------------
@slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_ddp_on_two_ranks_gives_the_weights_of_one_process_on_the_full_batch(job, config,
                                                                              fused):
    # DDP averages the gradients in backward. A fused penalty is added after that, inside
    # optimizer.step(), on every rank alike; an autograd penalty is in every rank's loss
    # and averaged with it. Either way it must count exactly once.
    expected = reference_weights(config, fused=fused)
    for rank in RANKS:
        got = job[rank]["penalties"][config, fused]
        assert list(got) == list(expected)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, rank=rank, name=name: f"rank {rank}, {name}: {m}")


@slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_comparison_would_catch_a_penalty_counted_twice_or_half(job, config):
    got = job[0]["penalties"][config, True]
    for wrong in (2.0, 0.5):
        other = reference_weights(config, scale=wrong)
        worst = max(float(((got[k] - other[k]).abs() / (other[k].abs() + 1e-6)).max())
                    for k in other)
        assert worst > 1e-3, f"{config}: strength x{wrong} is indistinguishable"


# -- failures and devices ----------------------------------------------------------------
@slow
def test_a_plugin_raising_on_one_rank_makes_the_other_fail_instead_of_hanging(tmp_path):
    # Rank 1 raises in on_epoch_end, before the collective vote, and its process exits;
    # rank 0, waiting in the vote's all-reduce, gets an error at once. (A rank that stayed
    # alive without voting would hold the others until the process group's timeout, set
    # far beyond the launcher's limits here: had rank 0 kept waiting, the launcher would
    # have killed it 15 s after rank 1 failed.)
    outcome = launch("plugin_raises_on_one_rank", tmp_path, timeout=90, pg_timeout=600)
    assert not outcome.timed_out and not outcome.killed, f"rank 0 hung:\n{outcome.describe()}"
    assert outcome.returncodes[0] != 0 and outcome.returncodes[1] != 0, outcome.describe()
    assert "RuntimeError: plugin failure on rank 1 at epoch 1" in outcome.logs[1]
    # Rank 0 failed in the vote's all-reduce (gloo: "Connection closed by peer"), not in a
    # plugin of its own.
    assert "all_reduce" in outcome.logs[0] and "plugin failure" not in outcome.logs[0]


@pytest.mark.parametrize("backend, model_device, expected", [
    ("gloo", "cpu", "cpu"),
    ("gloo", "cuda:1", "cpu"),                 # gloo reduces host tensors: no device copy
    ("cpu:gloo,cuda:nccl", "cuda:1", "cpu"),  # a backend per device type: gloo for the host
    ("undefined", "cuda:0", "cpu"),           # init_process_group() without a backend
    ("mpi", "cuda:0", "cpu"),
    ("nccl", "cuda:1", "cuda:1"),             # NCCL reduces CUDA tensors only
])
def test_votes_are_reduced_on_a_device_the_backend_serves(backend, model_device, expected):
    assert vote_device(backend, torch.device(model_device)) == torch.device(expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nccl_votes_on_the_gpu_and_fused_l2_on_a_cuda_ddp_model(tmp_path):
    if not torch.distributed.is_nccl_available():
        pytest.skip("torch was built without NCCL")
    # One rank: NCCL refuses two ranks on one GPU, and a test machine may have only one.
    outcome = launch("nccl", tmp_path, world_size=1, backend="nccl", timeout=180)
    assert outcome.returncodes == [0], outcome.describe()
    result = outcome.results[0]
    assert result["vote_device"] == "cuda:0"  # for a model left on the CPU, too
    assert result["votes"] == [True, False] and result["stop"] is False
    assert result["world"] == "TorchWorld"
    expected = reference_weights("l2", epochs=1, device="cuda")
    for name, value in expected.items():
        torch.testing.assert_close(result["weights"][name], value.cpu(), rtol=1e-5, atol=1e-6)

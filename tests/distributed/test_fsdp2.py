"""FSDP2 (``fully_shard``, DTensor parameters) on two gloo processes on the CPU: the same
weights and logged penalties as one process on the full batches, after 20 steps.

Both ranks run ``tests/helpers/_fsdp2.py`` (launched as ``torchrun`` would); the reference
trains the same model without sharding in the test's own process.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch was built without distributed gloo support", allow_module_level=True)
pytest.importorskip("torch.distributed.fsdp")
if not hasattr(torch.distributed.fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 fully_shard", allow_module_level=True)

from _fsdp2 import (  # noqa: E402 (after the skip)
    CONFIGS,
    HERE,
    STOPPING_LOSSES,
    stopping_plugins,
    train_fsdp2,
)
from _torch_distributed import launch  # noqa: E402
from _torch_models import make_model  # noqa: E402

from regplug.plugins import L2, MaxNorm  # noqa: E402

RANKS = (0, 1)
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    outcome = launch("fsdp2", tmp_path_factory.mktemp("fsdp2"), timeout=150,
                     script=HERE / "_fsdp2.py")
    assert outcome.returncodes == [0, 0], outcome.describe()
    return dict(enumerate(outcome.results))


_references: dict[tuple[str, bool, float], dict] = {}


def reference(config: str, fused: bool, scale: float = 1.0) -> dict:
    key = (config, fused, scale)
    if key not in _references:
        _references[key] = train_fsdp2(make_model(0), CONFIGS[config](scale), fused=fused)
    return _references[key]


def assert_same(got: dict, expected: dict, where: str) -> None:
    assert list(got["weights"]) == list(expected["weights"])
    for name, value in expected["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{where}, {name}: {m}")
    assert set(got["history"]) == set(expected["history"])
    for key, values in expected["history"].items():
        assert got["history"][key] == pytest.approx(values, rel=1e-5, abs=1e-7), (where, key)


@slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fsdp2_on_two_ranks_matches_one_process_after_20_steps(job, config, fused):
    expected = reference(config, fused)
    if config == "l2":
        assert len(expected["history"]["l2_penalty"]) == 5  # logged once per epoch
    for rank in RANKS:
        got = job[rank][config, fused, 0]
        assert got["ops"] == "ShardedTorchOps" and expected["ops"] == "TorchOps"
        assert_same(got, expected, f"rank {rank}")


@slow
def test_max_norm_reduces_row_norms_when_shards_split_the_rows(job):
    expected = reference("max_norm", True)
    for rank in RANKS:
        assert_same(job[rank]["max_norm", True, 1], expected, f"rank {rank}, Shard(1)")


@slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_comparison_would_catch_a_wrong_strength_or_a_penalty_seen_on_one_shard(job,
                                                                                    config):
    got = job[0][config, True, 0]
    other = reference(config, True, scale=2.0)
    worst = max(float((got["weights"][k] - v).abs().max()) for k, v in other["weights"].items())
    assert worst > 1e-4, f"{config}: strength x2 is indistinguishable"


@slow
def test_early_stopping_ema_and_the_checkpoint_on_shards_match_one_process(job):
    expected = train_fsdp2(make_model(0), stopping_plugins(), val_losses=STOPPING_LOSSES,
                           resume=lambda: (make_model(1), stopping_plugins()))
    assert len(expected["history"]["l2_penalty"]) == 3  # stopped after epoch 2 of 5
    for rank in RANKS:
        got = job[rank]["stopping"]
        assert_same(got, expected, f"rank {rank}")  # epoch 1's weights, restored
        _close(got["state"], expected["state"], f"rank {rank}, state_dict")
        # Loaded into another model's shards and written out again: the same checkpoint.
        _close(got["reloaded"], expected["state"], f"rank {rank}, reloaded")


@slow
def test_a_gradient_missing_on_one_rank_neither_crashes_nor_hangs(job):
    # Rank 1 drops 0.weight's gradient every third step (as ZeRO-2 may leave it): its
    # shard is then neither updated nor constrained, while max-norm's row norms (0.weight
    # is sharded along dim 1) are still reduced on both ranks, so the collectives stay in
    # step and the job finishes. Both ranks logged the same penalties, and the dropped
    # updates show: the weights are not those of the run without drops.
    first, second = job[0]["grad_none"], job[1]["grad_none"]
    assert first["history"] == second["history"] and first["history"]
    for name in first["weights"]:
        assert torch.equal(first["weights"][name], second["weights"][name]), name
    undropped = train_fsdp2(make_model(0), [MaxNorm(0.5), L2(0.05)])
    assert not torch.allclose(first["weights"]["0.weight"], undropped["weights"]["0.weight"],
                              atol=1e-4)


# -- every op, next to TorchOps on an unsharded twin --------------------------------------
OPS = ["sum_squares", "sum_abs", "grad_norms", "count_zeros", "add_to_grad_",
       "add_sign_to_grad_", "clone", "scale_", "soft_threshold_", "clip_unit_norms_",
       "clip_whole_norm_", "clip_unit_norms_by_column", "sum_squares_diff",
       "add_diff_to_grad_", "scale_update_", "moving_average_", "copy_into_", "scale_again",
       "copy_from_", "to_numpy", "load_copies_", "copy_from_loaded", "hold", "scale_third",
       "put_back_", "zero_grads_"]


@pytest.fixture(scope="module")
def ops_job(tmp_path_factory):
    outcome = launch("fsdp2_ops", tmp_path_factory.mktemp("fsdp2_ops"), timeout=120,
                     script=HERE / "_fsdp2.py")
    assert outcome.returncodes == [0, 0], outcome.describe()
    return dict(enumerate(outcome.results))


def _close(got, want, where):
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{where}: {m}")
    elif hasattr(want, "shape"):  # numpy
        assert got.shape == want.shape and abs(got - want).max() <= 1e-6, where
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), where
    else:
        assert got == want, where


@slow
@pytest.mark.parametrize("dim", [0, 1], ids=["Shard(0)", "Shard(1)"])
@pytest.mark.parametrize("op", OPS)
def test_each_sharded_op_does_what_torch_ops_do_on_the_full_parameters(ops_job, op, dim):
    # The ops run in this order on both; each result and the full parameters and gradients
    # after it are compared, on both ranks.
    for rank in RANKS:
        got, want = ops_job[rank][dim, op]
        _close(got, want, f"rank {rank}, {op}")


#: The in-place ops, each of which changes the parameters or gradients in this sequence.
CHANGING = ["add_to_grad_", "add_sign_to_grad_", "scale_", "soft_threshold_",
            "clip_unit_norms_", "clip_whole_norm_", "clip_unit_norms_by_column",
            "add_diff_to_grad_", "scale_update_", "copy_from_", "copy_from_loaded",
            "scale_third", "put_back_", "zero_grads_"]


@slow
@pytest.mark.parametrize("dim", [0, 1], ids=["Shard(0)", "Shard(1)"])
def test_the_comparison_is_not_vacuous_each_in_place_op_changed_something(ops_job, dim):
    for op in CHANGING:
        (_, before), _ = ops_job[0][dim, OPS[OPS.index(op) - 1]]
        (_, after), _ = ops_job[0][dim, op]
        assert any(not torch.equal(before[k], after[k]) for k in after), op


@slow
def test_a_rank_without_the_gradient_leaves_its_shard_and_reduces_all_the_same(ops_job):
    # The twin has the gradient, so it clips the whole matrix; rank 1 lacks it, so its
    # columns stay unclipped while rank 0's are clipped with the norms of the whole rows.
    got, want = ops_job[0]["grad_none_clip"]
    assert torch.equal(got, ops_job[1]["grad_none_clip"][0])
    torch.testing.assert_close(got[:, :4], want[:, :4])
    assert not torch.allclose(got[:, 4:], want[:, 4:])


def test_fsdp2_on_a_2d_mesh_is_refused_in_one_line(ops_job):
    for rank in RANKS:
        message = ops_job[rank]["hsdp"]
        assert "\n" not in message and "more than one dimension" in message, message
        assert "'0.weight'" in message

"""The plugins' semantics on the numpy reference backend — no framework involved."""

from __future__ import annotations

import numpy as np
import pytest

import regplug
from regplug import functional as F
from regplug.plugins import L1, L2, DecoupledWeightDecay, ElasticNet, MaxNorm, ProximalL1
from regplug.testing import NumpyLoop

rng = np.random.default_rng(0)


def _params():
    return {"fc.weight": rng.normal(size=(4, 3)), "fc.bias": rng.normal(size=4),
            "bn.gamma": rng.normal(size=4)}


def test_l2_with_sgd_is_weight_decay_of_twice_the_strength():
    params, lam, lr = _params(), 0.05, 0.1
    loop = NumpyLoop(params, [L2(lam)], lr=lr)
    expected = {k: v.copy() for k, v in params.items()}
    for _ in range(20):
        grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
        loop.step(grads)
        expected["fc.weight"] -= lr * (grads["fc.weight"] + 2 * lam * expected["fc.weight"])
        for k in ("fc.bias", "bn.gamma"):
            expected[k] -= lr * grads[k]
    for k in params:
        np.testing.assert_allclose(loop.params[k], expected[k], rtol=1e-12)


def test_penalty_values_follow_keras_conventions():
    w = np.array([[1.0, -2.0], [3.0, 0.0]])
    loop = NumpyLoop({"w": w}, [ElasticNet(l1=0.1, l2=0.01)])
    assert loop.penalty() == pytest.approx(0.1 * 6 + 0.01 * 14)


def test_l1_gradient_is_sign_and_zero_at_zero():
    loop = NumpyLoop({"w": np.array([[2.0, 0.0, -3.0]])}, [L1(0.5)], lr=1.0)
    loop.step({"w": np.zeros((1, 3))})
    assert loop.params["w"].tolist() == [[1.5, 0.0, -2.5]]


def test_soft_threshold_gives_exact_zeros_and_shrinks_the_rest():
    x = np.array([-2.0, -1.0, -0.999, 0.0, 0.5, 1.0, 3.0], dtype=np.float32)
    out = F.soft_threshold(x, 1.0)
    assert out.dtype == np.float32
    assert out.tolist() == [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    assert not np.signbit(out[out == 0]).any()  # no negative zeros


def test_proximal_l1_zeroes_small_weights_after_the_update():
    loop = NumpyLoop({"w": np.array([[0.3, -0.05, 2.0]])}, [ProximalL1(1.0)], lr=0.1)
    loop.step({"w": np.array([[0.0, 0.0, 0.0]])})
    assert loop.params["w"].tolist() == [[pytest.approx(0.2), 0.0, pytest.approx(1.9)]]


def test_max_norm_rescales_only_units_above_the_bound():
    w = np.array([[3.0, 4.0], [0.6, 0.8]])  # unit norms 5 and 1
    loop = NumpyLoop({"w": w.copy()}, [MaxNorm(2.0)])
    loop.step({"w": np.zeros((2, 2))})
    np.testing.assert_allclose(np.linalg.norm(loop.params["w"][0]), 2.0, rtol=1e-6)
    assert loop.params["w"][1].tolist() == [0.6, 0.8]  # untouched, bit for bit


def test_decoupled_decay_shrinks_before_the_update_with_the_current_learning_rate():
    loop = NumpyLoop({"w": np.array([[2.0]])}, [DecoupledWeightDecay(0.5)], lr=0.1)
    loop.step({"w": np.array([[1.0]])})
    # AdamW order: θ·(1 − lr·wd) − lr·g = 2·0.95 − 0.1
    assert loop.params["w"].item() == pytest.approx(1.8)


@pytest.mark.parametrize("plugin", [L2(1.0), L1(1.0), ProximalL1(10.0), MaxNorm(0.01),
                                    DecoupledWeightDecay(1.0)], ids=repr)
def test_default_selection_leaves_biases_and_normalization_untouched(plugin):
    params = _params()
    before = {k: v.copy() for k, v in params.items()}
    loop = NumpyLoop(params, [plugin], lr=0.1)
    loop.step({k: np.zeros_like(v) for k, v in params.items()})
    assert np.array_equal(loop.params["fc.bias"], before["fc.bias"])
    assert np.array_equal(loop.params["bn.gamma"], before["bn.gamma"])
    assert not np.array_equal(loop.params["fc.weight"], before["fc.weight"])


def test_selection_by_kind_and_pattern():
    params = {"enc.weight": np.ones((2, 2)), "enc.bias": np.ones(2), "head.weight": np.ones((2, 2))}
    loop = NumpyLoop(params, [L2(1.0, kinds="all", exclude="head.*")])
    assert [p.name for p in loop.run.parameters(loop.clock.manager.plugins[0].selection)] == \
        ["enc.weight", "enc.bias"]
    assert loop.penalty() == pytest.approx(6.0)


def test_linear_warmup_strength_is_in_force_from_the_step_it_is_due():
    schedule = regplug.LinearWarmup(1.0, warmup_steps=4)
    loop = NumpyLoop({"w": np.array([[1.0]])}, [L2(schedule)], lr=0.1)
    seen = []
    for _ in range(6):
        before = loop.params["w"].item()
        loop.step({"w": np.zeros((1, 1))})
        seen.append(1 - loop.params["w"].item() / before)  # = lr · 2 · l2(step)
    np.testing.assert_allclose(seen, [0.0, 0.05, 0.1, 0.15, 0.2, 0.2], atol=1e-12)


def test_epoch_based_warmup_changes_at_epoch_boundaries():
    schedule = regplug.LinearWarmup(1.0, warmup_epochs=2)
    assert [schedule(step, epoch) for step, epoch in [(0, 0), (99, 0), (100, 1), (5, 2), (9, 7)]] \
        == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_state_dict_round_trip_and_mismatch_detection():
    plugin = L2(0.1, exclude="head.*")
    state = plugin.state_dict()
    L2(0.1, exclude="head.*").load_state_dict(state)  # same config: fine
    with pytest.raises(ValueError, match="checkpoint was written by a plugin configured differently"):
        L2(0.2, exclude="head.*").load_state_dict(state)


def test_one_plugin_object_serves_two_runs_one_after_the_other():
    plugin = L2(0.5)
    first = NumpyLoop({"a": np.ones((1, 1))}, [plugin])
    first.close()
    second = NumpyLoop({"b": np.full((1, 1), 2.0)}, [plugin])
    assert second.penalty() == pytest.approx(2.0)  # sees b, not a
    second.step({"b": np.zeros((1, 1))})
    assert first.params["a"].item() == 1.0

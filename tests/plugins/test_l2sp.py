"""L2SP on the NumPy reference: the penalty, its gradient and the decoupled decay equal the
formulas written by hand; θ₀ is taken at train begin or given, survives a checkpoint and is
never written back; bad input is refused before any weight changes."""

from __future__ import annotations

import numpy as np
import pytest

import regplug
from regplug.plugins import L2, L2SP
from regplug.ranges import tunable_arguments
from regplug.registry import create_plugin
from regplug.testing import NumpyLoop


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"body.weight": rng.normal(size=(4, 3)), "body.bias": rng.normal(size=4),
            "head.weight": rng.normal(size=(2, 4)), "head.bias": rng.normal(size=2)}


def _grads(seed: int) -> dict[str, np.ndarray]:
    return {k: v * 0.3 for k, v in _params(seed).items()}


def test_penalty_is_alpha_half_distance_to_start_plus_beta_half_norm_of_new():
    loop = NumpyLoop(_params(), [L2SP(0.3, 0.02, new="head.*")], lr=0.1)
    start = {k: v.copy() for k, v in loop.params.items()}
    assert loop.penalty() == pytest.approx(0.02 / 2 * np.sum(start["head.weight"] ** 2))
    for step in range(5):
        loop.step(_grads(step + 1))
    expected = (0.3 / 2 * np.sum((loop.params["body.weight"] - start["body.weight"]) ** 2)
                + 0.02 / 2 * np.sum(loop.params["head.weight"] ** 2))
    assert loop.penalty() == pytest.approx(expected, rel=1e-12)


def test_sgd_steps_equal_the_hand_written_gradient_and_biases_are_left_alone():
    alpha, beta, lr = 0.3, 0.02, 0.1
    loop = NumpyLoop(_params(), [L2SP(alpha, beta, new="head.*")], lr=lr)
    mine = {k: v.copy() for k, v in loop.params.items()}
    start = mine["body.weight"].copy()
    for step in range(20):
        g = _grads(step + 1)
        g["body.weight"] = g["body.weight"] + alpha * (mine["body.weight"] - start)
        g["head.weight"] = g["head.weight"] + beta * mine["head.weight"]
        for k in mine:
            mine[k] -= lr * g[k]
        loop.step(_grads(step + 1))
    for k in mine:
        np.testing.assert_array_equal(loop.params[k], mine[k])  # the same formula: bit-equal


def test_anchor_is_never_written_back_and_alpha_half_means_twice_regplug_l2():
    # Anchored at 0 (the start), L2SP(alpha) pulls as L2(alpha / 2): the same numbers.
    zeros = {"w": np.zeros((2, 2))}
    grads = [{"w": np.full((2, 2), float(i + 1))} for i in range(5)]
    a = NumpyLoop(zeros, [L2SP(0.4)], lr=0.1)
    b = NumpyLoop(zeros, [L2(0.2)], lr=0.1)
    for g in grads:
        a.step(g)
        b.step(g)
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-15)
    plugin = a.clock.manager.plugins[0]
    np.testing.assert_array_equal(plugin.anchors()["w"], np.zeros((2, 2)))


def test_decoupled_decays_toward_the_start_with_the_learning_rate():
    alpha, beta, lr = 0.5, 0.2, 0.1
    loop = NumpyLoop(_params(), [L2SP(alpha, beta, new="head.*", decoupled=True)], lr=lr)
    mine = {k: v.copy() for k, v in loop.params.items()}
    start = mine["body.weight"].copy()
    for step in range(10):
        g = _grads(step + 1)
        mine["body.weight"] = mine["body.weight"] - lr * alpha * (mine["body.weight"] - start)
        mine["head.weight"] = mine["head.weight"] * (1 - lr * beta)
        for k in mine:
            mine[k] = mine[k] - lr * g[k]
        loop.step(_grads(step + 1))
        assert loop.penalty() == 0.0  # no penalty in the loss
    for k in mine:
        np.testing.assert_allclose(loop.params[k], mine[k], rtol=1e-13, atol=1e-15)


def test_a_given_reference_anchors_and_its_absent_names_are_new():
    params = _params()
    pretrained = {"body.weight": np.ones((4, 3)), "body.running_mean": np.zeros(4)}
    loop = NumpyLoop(params, [L2SP(0.5, 0.1, reference=pretrained)], lr=0.1)
    expected = (0.5 / 2 * np.sum((params["body.weight"] - 1.0) ** 2)
                + 0.1 / 2 * np.sum(params["head.weight"] ** 2))
    assert loop.penalty() == pytest.approx(expected, rel=1e-12)
    pretrained["body.weight"][...] = 7.0  # the plugin holds its own copy
    assert loop.penalty() == pytest.approx(expected, rel=1e-12)


def test_checkpoint_resume_keeps_the_first_start_point():
    loop = NumpyLoop(_params(), [L2SP(0.3)], lr=0.1)
    for step in range(3):
        loop.step(_grads(step + 1))
    state = loop.clock.manager.plugins[0].state_dict()
    start = _params()["body.weight"]
    np.testing.assert_array_equal(state["anchors"]["body.weight"], start)
    # a fresh plugin in a fresh run from the trained weights, resumed from the state
    resumed = L2SP(0.3)
    resumed.load_state_dict(state)
    again = NumpyLoop(loop.params, [resumed], lr=0.1)
    np.testing.assert_array_equal(resumed.anchors()["body.weight"], start)
    starts = {k: _params()[k] for k in ("body.weight", "head.weight")}
    assert again.penalty() == pytest.approx(
        0.3 / 2 * sum(np.sum((loop.params[k] - v) ** 2) for k, v in starts.items()), rel=1e-12)
    # loading during a run replaces θ₀ at once
    other = L2SP(0.3)
    run = NumpyLoop(loop.params, [other], lr=0.1)
    assert run.penalty() == 0.0  # anchored at the current weights
    other.load_state_dict(state)
    assert run.penalty() == pytest.approx(again.penalty(), rel=1e-15)
    # after training the state is still there
    run.close()
    np.testing.assert_array_equal(other.state_dict()["anchors"]["body.weight"], start)


def test_a_checkpoint_of_other_parameters_or_configuration_is_refused():
    loop = NumpyLoop(_params(), [L2SP(0.3)], lr=0.1)
    state = loop.clock.manager.plugins[0].state_dict()
    with pytest.raises(ValueError, match="configured differently"):
        L2SP(0.4).load_state_dict(state)
    wrong = L2SP(0.3)
    wrong.load_state_dict({**state, "anchors": {**state["anchors"],
                                                "body.weight": np.zeros((3, 3))}})
    with pytest.raises(ValueError, match=r"L2SP: the checkpoint's θ₀ does not fit the model: it "
                                         r"has other shapes \(body.weight: given \(3, 3\)"):
        NumpyLoop(_params(), [wrong], lr=0.1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reference": {"body.weight": np.ones((3, 4))}},
     r"L2SP: argument 'reference' does not fit the model: it has other shapes \(body.weight: "
     r"given \(3, 4\), model \(4, 3\)\); give the pretrained weights"),
    ({"reference": {"module.body.weight": np.ones((4, 3))}},
     r"L2SP: argument 'reference' holds none of the 2 selected parameters \(its names start "
     r"with: module.body.weight; the model's: body.weight, head.weight\)"),
    ({"new": ["head.*", "classifier.*"]},
     r"L2SP: the pattern 'classifier.\*' in argument 'new' matches none of the 2 selected "
     r"parameters"),
])
def test_a_reference_or_pattern_that_does_not_fit_is_refused_before_any_change(kwargs, message):
    params = _params()
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=message):
        NumpyLoop(params, [L2SP(0.1, **kwargs)], lr=0.1)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": -1.0}, r"L2SP: argument 'alpha' must be a finite number >= 0, got -1"),
    ({"beta": -0.5}, r"L2SP: argument 'beta' must be a finite number >= 0, got -0.5"),
    ({"decoupled": "yes"}, r"L2SP: argument 'decoupled' must be True or False"),
    ({"new": 3}, r"L2SP: argument 'new' must be a name pattern"),
    ({"reference": [1, 2]}, r"L2SP: argument 'reference' must be a mapping"),
])
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        L2SP(**kwargs)


def test_all_new_warns_that_nothing_is_anchored():
    with pytest.warns(regplug.RegplugWarning, match="every selected parameter is new"):
        NumpyLoop(_params(), [L2SP(0.1, 0.1, new="*")], lr=0.1)


def test_registry_config_and_tunable_alpha():
    plugin = create_plugin("l2sp", alpha=0.1, new=["head.*"])
    assert isinstance(plugin, L2SP)
    assert repr(plugin) == "L2SP(alpha=0.1, beta=0.0, new=['head.*'])"
    assert plugin.config()["new"] == ["head.*"] and plugin.config()["decoupled"] is False
    space = tunable_arguments(L2SP)
    assert list(space) == ["alpha"] and space["alpha"].log
    assert space["alpha"].low < 0.01 < space["alpha"].high


def test_beta_without_new_parameters_warns_that_it_acts_on_nothing():
    with pytest.warns(regplug.RegplugWarning, match="beta > 0 but no selected parameter is new"):
        NumpyLoop(_params(), [L2SP(0.1, 0.1)], lr=0.1)


def test_a_selection_that_matches_nothing_gives_a_zero_penalty():
    with pytest.warns(regplug.RegplugWarning, match="matches none"):
        loop = NumpyLoop(_params(), [L2SP(0.1, include="nothing.*")], lr=0.1)
    assert loop.penalty() == 0.0
    loop.step(_grads(1))

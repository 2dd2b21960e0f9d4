"""GroupLasso, tested without any framework: regplug's NumPy loop drives it as an adapter does."""

from __future__ import annotations

import doctest
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

import regplug
import regplug_group_lasso
from regplug.ranges import FloatRange, grid_values, parse_overrides, tunable_arguments
from regplug.testing import NumpyLoop, numpy_run
from regplug_group_lasso import EPS, GroupLasso, add_group_lasso_grad, group_lasso_value
from regplug_group_lasso import plugin as plugin_module

RNG = np.random.default_rng(0)
PARAMS = {"a.weight": RNG.normal(size=(3, 4)), "b.weight": RNG.normal(size=(2, 5)),
          "a.bias": RNG.normal(size=3)}


def reference(params: dict[str, np.ndarray], strength: float) -> float:
    """The penalty written out in NumPy, one group per tensor."""
    return strength * sum(np.sqrt(w.size) * np.sqrt(np.sum(w * w) + EPS) for w in params.values())


def zero_grads(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in params.items()}


def test_docstring_examples_run():
    for module in (regplug_group_lasso, plugin_module):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_penalty_is_strength_times_root_size_weighted_norms_of_the_selected_tensors():
    loop = NumpyLoop(PARAMS, [GroupLasso(0.3)])
    weights = {k: v for k, v in PARAMS.items() if k.endswith("weight")}  # biases not selected
    assert loop.penalty() == pytest.approx(reference(weights, 0.3), rel=1e-12)


def test_added_gradient_is_the_exact_gradient_of_the_value():
    run = numpy_run({k: v.copy() for k, v in PARAMS.items()})
    every = regplug.Selection(kinds=("weight", "bias"))
    groups = [([p], np.sqrt(p.size)) for p in run.parameters(every)]
    run.ops.grads = {p.name: np.zeros(p.shape) for p in run.params}
    add_group_lasso_grad(run.ops, groups, 0.7)
    for handle in run.params:  # central differences of the value, element by element
        numeric = np.zeros(handle.shape)
        for index in np.ndindex(handle.shape):
            saved = handle.tensor[index]
            handle.tensor[index] = saved + 1e-6
            up = group_lasso_value(run.ops, groups, 0.7)
            handle.tensor[index] = saved - 1e-6
            down = group_lasso_value(run.ops, groups, 0.7)
            handle.tensor[index] = saved
            numeric[index] = (up - down) / 2e-6
        np.testing.assert_allclose(run.ops.grads[handle.name], numeric, rtol=1e-6, atol=1e-8)


def test_gradient_at_an_all_zero_tensor_is_zero_not_nan():
    loop = NumpyLoop({"w": np.zeros((2, 2))}, [GroupLasso(1.0)], lr=0.1)
    loop.step({"w": np.zeros((2, 2))})
    assert (loop.params["w"] == 0).all()


def test_one_sgd_step_shrinks_each_tensor_towards_zero_by_lr_strength_root_size():
    # With no data gradient, θ ← θ − lr·s·√|g|·θ/‖θ‖: the tensor's norm drops by lr·s·√|g|
    # and its direction is kept.
    w = np.array([[3.0, 4.0]])  # norm 5, size 2
    loop = NumpyLoop({"w": w}, [GroupLasso(0.5)], lr=0.1)
    loop.step({"w": np.zeros_like(w)})
    expected = w * (1 - 0.1 * 0.5 * np.sqrt(2) / 5)
    np.testing.assert_allclose(loop.params["w"], expected, rtol=1e-12)


def train_two_branches(plugins: list[object], steps: int = 400, lr: float = 0.02
                       ) -> dict[str, np.ndarray]:
    """Least squares y ≈ x_a·Aᵀ + x_b·Bᵀ where only branch a carries signal; full-batch SGD."""
    rng = np.random.default_rng(1)
    x_a, x_b = rng.normal(size=(64, 4)), rng.normal(size=(64, 4))
    y = x_a @ rng.normal(size=(4, 1)) + 0.5 * rng.normal(size=(64, 1))
    params = {"a.weight": 0.5 * rng.normal(size=(1, 4)),
              "b.weight": 0.5 * rng.normal(size=(1, 4))}
    loop = NumpyLoop(params, plugins, lr=lr)
    for _ in range(steps):
        p = loop.params
        residual = x_a @ p["a.weight"].T + x_b @ p["b.weight"].T - y
        loop.step({"a.weight": (2 * residual.T @ x_a) / len(y),
                   "b.weight": (2 * residual.T @ x_b) / len(y)})
    loop.close()
    return {name: np.linalg.norm(w) for name, w in loop.params.items()}


def test_the_branch_without_signal_fades_out_as_a_whole():
    plain = train_two_branches([])
    grouped = train_two_branches([GroupLasso(0.2)])
    # Without the penalty, branch b fits the noise. With it, b ends within one penalty step
    # (lr·strength·√|g|) of zero — gradient descent on the group norm hovers there rather
    # than landing on an exact 0 — while branch a still explains the target.
    assert plain["b.weight"] > 0.05
    assert grouped["b.weight"] < 0.02 * 0.2 * np.sqrt(4)
    assert grouped["a.weight"] > 0.85 * plain["a.weight"]


def test_a_scheduled_strength_is_in_force_from_the_step_it_is_due():
    warm = regplug.LinearWarmup(1.0, warmup_steps=2)  # 0 at step 0, 0.5 at step 1
    loop = NumpyLoop({"w": np.array([[3.0, 4.0]])}, [GroupLasso(warm)], lr=0.1)
    loop.step({"w": np.zeros((1, 2))})
    np.testing.assert_array_equal(loop.params["w"], [[3.0, 4.0]])
    loop.step({"w": np.zeros((1, 2))})
    expected = np.array([[3.0, 4.0]]) * (1 - 0.1 * 0.5 * np.sqrt(2) / 5)
    np.testing.assert_allclose(loop.params["w"], expected, rtol=1e-12)


def test_selection_by_name_and_kind():
    params = {"enc.weight": np.ones((2, 2)), "head.weight": np.ones((2, 2)),
              "enc.bias": np.ones(2)}
    only_head = NumpyLoop(params, [GroupLasso(1.0, include="head.*")])
    with_biases = NumpyLoop(params, [GroupLasso(1.0, kinds=("weight", "bias"), exclude="head.*")])
    assert only_head.penalty() == pytest.approx(2 * 2)                  # √4·‖1₂ₓ₂‖
    assert with_biases.penalty() == pytest.approx(2 * 2 + np.sqrt(2) * np.sqrt(2))


def test_a_selection_matching_nothing_is_reported():
    with pytest.warns(regplug.RegplugWarning, match="GroupLasso: the selection"):
        NumpyLoop({"w": np.ones((2, 2))}, [GroupLasso(include="missing.*")])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"strength": -1}, ValueError,
     "GroupLasso: argument 'strength' must be a finite number >= 0, got -1"),
    ({"strength": "big"}, TypeError,
     "GroupLasso: argument 'strength' must be a real number >= 0"),
    ({"strength": {"schedule": "zigzag"}}, ValueError,
     "GroupLasso: argument 'strength.schedule' must be one of"),
    ({"kinds": "weights"}, ValueError, "GroupLasso: argument 'kinds' must be 'all' or"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        GroupLasso(**kwargs)


def test_available_by_name_once_installed():
    info = regplug.available_plugins()["group_lasso"]
    assert info.distribution == "regplug-group-lasso 0.1.0" and not info.builtin
    (built,) = regplug.build_plugins([{"name": "group_lasso", "strength": 0.01,
                                       "exclude": ["head.*"]}])
    assert repr(built) == "GroupLasso(strength=0.01, kinds=['weight'], exclude=['head.*'])"


def test_state_dict_round_trip_and_a_differently_configured_checkpoint_is_refused():
    state = GroupLasso(0.01).state_dict()
    GroupLasso(0.01).load_state_dict(state)
    with pytest.raises(ValueError, match="configured differently"):
        GroupLasso(0.02).load_state_dict(state)


def test_one_plugin_object_serves_two_runs_one_after_the_other():
    plugin = GroupLasso(1.0)
    first = NumpyLoop({"w": np.ones((1, 4))}, [plugin])
    assert first.penalty() == pytest.approx(2 * 2)
    first.close()
    second = NumpyLoop({"v": np.ones((1, 9))}, [plugin])
    assert second.penalty() == pytest.approx(3 * 3)


def test_readme_examples_build_the_plugins_they_show():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert repr(namespace["plugin"]) == (
        "GroupLasso(strength=LinearWarmup(value=0.001, start=0.0, warmup_steps=500, "
        "warmup_epochs=None), kinds=['embedding'])")
    config, tune = re.findall(r"```toml\n(.*?)```", readme, re.S)
    (from_config,) = regplug.build_plugins(tomllib.loads(config))
    assert repr(from_config) == ("GroupLasso(strength=0.001, kinds=['weight'], "
                                 "include=['branch_*.0.weight'])")
    space = parse_overrides(GroupLasso, tomllib.loads(tune)["tune"]["group_lasso"],
                            where="README tune config")
    assert space == {"strength": FloatRange(1e-5, 1e-2, log=True)}


def test_declares_a_tunable_strength_that_contains_the_default_and_builds_at_both_ends():
    space = tunable_arguments(GroupLasso)
    assert space == {"strength": FloatRange(1e-6, 1e-1, log=True)}
    assert space["strength"].contains(GroupLasso().strength.value)
    params = {"w": np.ones((1, 4))}
    penalties = [NumpyLoop(params, [GroupLasso(v)]).penalty()
                 for v in grid_values(space["strength"], 6)]
    assert penalties == pytest.approx([10.0 ** e * 2 * 2 for e in range(-6, 0)])

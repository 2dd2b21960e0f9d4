"""LayerwiseLR on the NumPy reference: factors, arguments, errors, state (no framework)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import regplug
from regplug.depth import DepthError
from regplug.plugins import LayerwiseLR
from regplug.ranges import FloatRange, tunable_arguments
from regplug.testing import NumpyLoop

NAMES = ["embed.weight", "layers.0.w", "layers.0.bias", "layers.1.w", "norm.weight",
         "head.weight", "head.bias"]


def params(names=NAMES, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=(3, 2) if n.endswith(("w", "weight")) else 2) for n in names}


def grads_for(ps, seed):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=v.shape) for n, v in ps.items()}


def test_each_update_is_scaled_by_decay_to_the_distance_from_the_top():
    ps = params()
    loop = NumpyLoop(ps, [LayerwiseLR(0.5)], lr=0.1)
    start = {k: v.copy() for k, v in loop.params.items()}
    g = grads_for(ps, 1)
    loop.step(g)
    # embed 0, layers.0 1, layers.1 2, norm + head 3 (the top)
    expected = {"embed.weight": 0.125, "layers.0.w": 0.25, "layers.0.bias": 0.25,
                "layers.1.w": 0.5, "norm.weight": 1.0, "head.weight": 1.0, "head.bias": 1.0}
    for name, s in expected.items():
        np.testing.assert_allclose(loop.params[name], start[name] - s * 0.1 * g[name],
                                   rtol=1e-12, err_msg=name)


def test_equals_sgd_with_per_layer_learning_rates_over_many_steps():
    ps = params()
    plugin = LayerwiseLR(0.7, multipliers={"layers.1.*": 3.0})
    loop = NumpyLoop(ps, [plugin], lr=0.05)
    by_hand = {k: v.astype(np.float64).copy() for k, v in ps.items()}
    lrs = {n: 0.05 * f for n, f in plugin.factors.items()}
    for step in range(100):
        g = grads_for(ps, step)
        loop.step(g)
        for n in by_hand:
            by_hand[n] -= lrs.get(n, 0.05) * g[n]
    for n in by_hand:
        np.testing.assert_allclose(loop.params[n], by_hand[n], rtol=1e-12, atol=1e-13)


def test_factors_top_not_listed_multipliers_first_match_and_decay_one_with_multipliers_only():
    loop = NumpyLoop(params(), [p := LayerwiseLR(0.5, multipliers={"layers.*": 2.0,
                                                                   "layers.0.*": 10.0})])
    f = p.factors
    assert "head.weight" not in f and "norm.weight" not in f  # top: no copy, no scaling
    assert f["embed.weight"] == 0.125
    assert f["layers.0.w"] == f["layers.0.bias"] == 0.25 * 2.0  # the first match counts
    assert "layers.1.w" not in f  # 0.5 * 2.0 == 1: nothing to scale
    loop.close()
    only = LayerwiseLR(multipliers={"embed.*": 0.1})
    assert only.decay == 1.0
    NumpyLoop(params(["embed.weight", "x.bridge", "layers.0.w", "layers.1.w"]), [only])
    assert only.factors == {"embed.weight": pytest.approx(0.1)}  # no depth needed at all
    assert LayerwiseLR().decay == 0.8


def test_selection_limits_what_is_scaled_but_depths_come_from_all_parameters():
    p = LayerwiseLR(0.5, kinds="weight", exclude="embed.*")
    NumpyLoop(params(), [p])
    assert p.factors == {"layers.0.w": 0.25, "layers.1.w": 0.5}


def test_parameters_without_a_gradient_this_step_are_left_alone():
    ps = params()
    loop = NumpyLoop(ps, [LayerwiseLR(0.5)], lr=0.1)
    before = loop.params["embed.weight"].copy()
    g = grads_for(ps, 3)
    del g["embed.weight"]
    loop.step(g)
    np.testing.assert_array_equal(loop.params["embed.weight"], before)


def test_unresolvable_parameter_is_a_named_error_before_any_weight_changes():
    ps = params(["layers.0.w", "bridge.weight", "layers.1.w", "head.weight"])
    with pytest.raises(DepthError) as info:
        NumpyLoop(ps, [LayerwiseLR(0.9)])
    msg = str(info.value)
    assert msg.startswith("LayerwiseLR: argument 'layers' is not given and parameter "
                          "'bridge.weight' has no depth")
    assert "\n" not in msg and "layers=[name patterns" in msg
    # excluded, it is no longer needed; given patterns, it is placed
    NumpyLoop(ps, [LayerwiseLR(0.9, exclude="bridge.*")])
    p = LayerwiseLR(0.5, layers=["layers.0.*", ["bridge.*", "layers.1.*"], "*"])
    NumpyLoop(ps, [p])
    assert p.factors == {"layers.0.w": 0.25, "bridge.weight": 0.5, "layers.1.w": 0.5}


def test_patterns_that_match_nothing_are_named_errors():
    with pytest.raises(DepthError, match=r"LayerwiseLR: argument 'layers': entry 1 "
                                         r"\(\['decoder\.\*'\]\) matches none"):
        NumpyLoop(params(), [LayerwiseLR(0.9, layers=["embed.*", "decoder.*", "*"])])
    with pytest.raises(DepthError, match=r"LayerwiseLR: argument 'multipliers': pattern "
                                         r"'backbone\.\*' matches none of the 7 selected"):
        NumpyLoop(params(), [LayerwiseLR(multipliers={"backbone.*": 0.1})])


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_decay_outside_0_1_is_refused_with_the_range(bad):
    with pytest.raises(ValueError, match=rf"^LayerwiseLR: argument 'decay' must be a finite "
                                         rf"number in \(0, 1\], got {bad!r}$"):
        LayerwiseLR(bad)


@pytest.mark.parametrize("kwargs,match", [
    ({"decay": "0.9"}, "argument 'decay' must be a real number"),
    ({"decay": True}, "argument 'decay' must be a real number"),
    ({"layers": "layers.*"}, "argument 'layers' must be a non-empty list of name patterns"),
    ({"layers": []}, "argument 'layers' must be a non-empty list"),
    ({"layers": ["a.*", 3]}, "argument 'layers': each entry must be a name pattern"),
    ({"multipliers": [("a", 1.0)]}, "argument 'multipliers' must be a mapping"),
    ({"multipliers": {"": 1.0}}, "keys must be name patterns"),
    ({"multipliers": {"a.*": 0.0}}, r"argument \"multipliers\['a.\*'\]\" must be a finite "
                                    r"number > 0, got 0.0"),
    ({"kinds": "weights"}, "argument 'kinds' must be 'all' or a non-empty list"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        LayerwiseLR(**kwargs)


def test_new_parameters_joining_the_optimizer_are_planned_in():
    ps = params(["layers.0.w", "layers.1.w", "head.weight"])
    p = LayerwiseLR(0.5)
    loop = NumpyLoop(ps, [p])
    assert p.factors == {"layers.0.w": 0.25, "layers.1.w": 0.5}
    extra = regplug.testing.numpy_run({"layers.2.w": np.ones((3, 2))}).params
    loop.run.add_params(extra)
    loop.params["layers.2.w"] = extra[0].tensor
    g = grads_for(ps, 0) | {"layers.2.w": np.ones((3, 2))}
    loop.step(g)
    assert p.factors == {"layers.0.w": 0.125, "layers.1.w": 0.25, "layers.2.w": 0.5}
    np.testing.assert_allclose(loop.params["layers.2.w"], 1 - 0.5 * 0.01)


def test_state_dict_holds_the_config_and_refuses_another():
    p = LayerwiseLR(0.6, layers=["a.*", ["b.*", "c.*"], "*"], multipliers={"a.*": 2.0})
    state = p.state_dict()
    assert state["config"]["decay"] == 0.6
    assert state["config"]["layers"] == [["a.*"], ["b.*", "c.*"], ["*"]]
    LayerwiseLR(0.6, layers=["a.*", ["b.*", "c.*"], "*"],
                multipliers={"a.*": 2.0}).load_state_dict(state)
    with pytest.raises(ValueError, match="configured differently"):
        LayerwiseLR(0.7).load_state_dict(state)


def test_registry_repr_and_tunable_range():
    p = regplug.create_plugin("layerwise_lr", decay=0.75)
    assert isinstance(p, LayerwiseLR) and p.name == "layerwise_lr"
    assert repr(p) == "LayerwiseLR(decay=0.75)"
    assert repr(LayerwiseLR(0.9, kinds="weight", multipliers={"x.*": 2.0})) == (
        "LayerwiseLR(decay=0.9, multipliers={'x.*': 2.0}, kinds=['weight'])")
    assert tunable_arguments(LayerwiseLR) == {"decay": FloatRange(0.5, 1.0)}
    assert "layerwise_lr" in regplug.available_plugins()


def test_decay_one_and_no_multipliers_changes_nothing_and_copies_nothing():
    ps = params(["a.w", "bridge.x"])
    loop = NumpyLoop(ps, [p := LayerwiseLR(1.0)], lr=0.1)
    g = grads_for(ps, 0)
    loop.step(g)
    assert p.factors == {}
    np.testing.assert_allclose(loop.params["a.w"], ps["a.w"] - 0.1 * g["a.w"])

"""regplug.conventions: the rules every adapter follows, and that the torch and Keras adapters
do follow them (the same names resolved to classes that exist, the same max-norm epsilon).

The framework parts import torch or Keras with ``pytest.importorskip``, so this file runs
where only one of them (or neither) is installed.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from regplug import conventions
from regplug import functional as F
from regplug.conventions import (
    DROPOUT_LAYERS,
    MAX_NORM_EPS,
    OTHER_DROPOUT,
    SCHEDULABLE_DROPOUT,
    is_bias_name,
    shared_kind,
)
from regplug.run import ParamHandle


# -- is_bias_name -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "bias", "in_proj_bias", "bias_ih_l0", "bias_hh_l1", "recurrent_bias",
    "dense/bias", "model/encoder/dense_1/bias", "0.bias", "encoder.layers.0.self_attn.in_proj_bias",
    "lstm.bias_ih_l0_reverse", "lstm/lstm_cell/recurrent_bias",
])
def test_is_bias_name_accepts_biases_and_fused_layers_biases_in_both_path_styles(name):
    assert is_bias_name(name)


@pytest.mark.parametrize("name", [
    "biased", "biased_weight", "unbiased", "kernel", "weight", "dense/kernel", "0.weight",
    "bias/kernel", "bias.weight", "embeddings", "gamma", "beta", "recurrent_kernel",
    "weight_ih_l0", "biasx", "",
])
def test_is_bias_name_rejects_other_names(name):
    assert not is_bias_name(name)


# -- shared_kind ------------------------------------------------------------------------------
@pytest.mark.parametrize("kinds", [["embedding", "weight"], ["weight", "embedding"],
                                   ("weight", "weight", "embedding"),
                                   iter(["weight", "embedding"])])
def test_shared_kind_embedding_wins_over_weight_in_either_order(kinds):
    assert shared_kind(kinds) == "embedding"


def test_shared_kind_follows_one_precedence_whatever_the_order():
    assert shared_kind(["weight", "bias"]) == shared_kind(["bias", "weight"]) == "bias"
    assert shared_kind(["weight", "normalization"]) == "normalization"
    assert shared_kind(["normalization", "embedding"]) == "embedding"
    assert shared_kind(["weight"]) == "weight"
    assert shared_kind(["weight", "weight"]) == "weight"


@pytest.mark.parametrize("kinds", [[], (), iter([])])
def test_shared_kind_of_no_kinds_is_an_error(kinds):
    with pytest.raises(ValueError, match="no kinds"):
        shared_kind(kinds)


# -- dropout sets -----------------------------------------------------------------------------
def test_dropout_sets_schedulable_and_other_are_disjoint_and_dropout_layers_is_their_union():
    assert isinstance(SCHEDULABLE_DROPOUT, frozenset) and isinstance(OTHER_DROPOUT, frozenset)
    assert SCHEDULABLE_DROPOUT.isdisjoint(OTHER_DROPOUT)
    assert DROPOUT_LAYERS == SCHEDULABLE_DROPOUT | OTHER_DROPOUT
    assert {"Dropout", "AlphaDropout"} <= DROPOUT_LAYERS
    assert "Dropout" in SCHEDULABLE_DROPOUT and "AlphaDropout" in OTHER_DROPOUT
    assert "GaussianDropout" in OTHER_DROPOUT


def test_max_norm_eps_is_the_numpy_references_default():
    assert MAX_NORM_EPS == 1e-7
    assert inspect.signature(F.max_norm_scale).parameters["eps"].default == MAX_NORM_EPS


# -- both adapters resolve the same names -----------------------------------------------------
def _torch_discovery():  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from regplug.adapters.torch import discovery

    return discovery


def _keras_discovery():  # type: ignore[no-untyped-def]
    pytest.importorskip("keras")
    from regplug.adapters.keras import discovery

    return discovery


def _namespace(framework: str):  # type: ignore[no-untyped-def]
    if framework == "torch":
        import torch.nn

        return torch.nn
    import keras

    return keras.layers


DISCOVERY = {"torch": _torch_discovery, "keras": _keras_discovery}


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_every_schedulable_dropout_name_the_framework_has_is_a_schedulable_type(framework):
    discovery = DISCOVERY[framework]()
    namespace = _namespace(framework)
    present = {n for n in SCHEDULABLE_DROPOUT if isinstance(getattr(namespace, n, None), type)}
    assert "Dropout" in present
    assert {t.__name__ for t in discovery.SCHEDULABLE_DROPOUT_TYPES} == present
    for name in present:
        assert getattr(namespace, name) in discovery.SCHEDULABLE_DROPOUT_TYPES


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_every_dropout_name_the_framework_has_is_a_dropout_type(framework):
    discovery = DISCOVERY[framework]()
    namespace = _namespace(framework)
    present = {n for n in DROPOUT_LAYERS if isinstance(getattr(namespace, n, None), type)}
    assert {t.__name__ for t in discovery.DROPOUT_TYPES} == present
    assert set(discovery.SCHEDULABLE_DROPOUT_TYPES) <= set(discovery.DROPOUT_TYPES)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_alpha_dropout_is_dropout_but_never_schedulable(framework):
    discovery = DISCOVERY[framework]()
    alpha = _namespace(framework).AlphaDropout
    assert alpha in discovery.DROPOUT_TYPES
    assert alpha not in discovery.SCHEDULABLE_DROPOUT_TYPES
    # not even as a subclass of a schedulable type (subclasses count, isinstance decides)
    assert not issubclass(alpha, discovery.SCHEDULABLE_DROPOUT_TYPES)


def test_both_adapters_type_bias_names_by_the_shared_rule():
    torch_discovery = _torch_discovery()
    from torch import nn

    attention = nn.MultiheadAttention(4, 2)
    assert torch_discovery.param_kind(attention, "in_proj_bias") == "bias"
    assert torch_discovery.param_kind(nn.LSTM(2, 3), "bias_ih_l0") == "bias"
    assert torch_discovery.param_kind(nn.Linear(2, 3), "weight") == "weight"
    keras_discovery = _keras_discovery()
    import keras

    dense = keras.layers.Dense(3)
    dense.build((None, 2))
    assert keras_discovery.param_kind(dense, dense.bias) == "bias"
    assert keras_discovery.param_kind(dense, dense.kernel) == "weight"


# -- MAX_NORM_EPS is what both ops modules divide by --------------------------------------------
MAX_NORM = 1e-6  # small, so that an epsilon of 1e-7 changes the factor by about 5 %


def _weight(unit_axis: int) -> np.ndarray:
    """Five units of norm exactly 2·MAX_NORM (3-4-5 triangles) and one within the bound,
    laid out along ``unit_axis`` of a 2-d weight."""
    units = np.array([[0.6, 0.8], [0.8, -0.6], [-0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]) * 2 * MAX_NORM
    units = np.concatenate([units, [[0.3 * MAX_NORM, 0.4 * MAX_NORM]]])  # norm MAX_NORM/2
    return units if unit_axis == 0 else units.T


def _expected(w: np.ndarray, unit_axis: int | None) -> np.ndarray:
    """``w · max_norm / (norm + eps)`` where ``norm > max_norm``, in float64 NumPy."""
    w = np.asarray(w, dtype=np.float64)
    if unit_axis is None:
        norms = np.sqrt(np.sum(w * w))
    else:
        axes = tuple(a for a in range(w.ndim) if a != unit_axis)
        norms = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
    want = w * np.where(norms > MAX_NORM, MAX_NORM / (norms + MAX_NORM_EPS), 1.0)
    reference = F.clip_unit_norms(w, MAX_NORM, unit_axis)
    np.testing.assert_allclose(reference, want, rtol=1e-12)
    # the epsilon is visible: without it, the clipped units would have norm MAX_NORM exactly
    assert not np.allclose(want, w * np.where(norms > MAX_NORM, MAX_NORM / norms, 1.0),
                           rtol=1e-3, atol=0)
    return want


def _check(got: np.ndarray, w: np.ndarray, unit_axis: int | None) -> None:
    np.testing.assert_allclose(got, _expected(w, unit_axis), rtol=1e-5, atol=0)


@pytest.mark.parametrize("max_norm_as", ["float", "tensor"])
def test_torch_ops_general_path_divides_by_norm_plus_max_norm_eps(max_norm_as):
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import TorchOps

    w = _weight(0)
    if max_norm_as == "float":  # float64 weights: not the renorm_ fast path
        t = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
        max_norm = MAX_NORM
    else:  # float32 weights, a tensor bound: not the fast path either
        t = torch.nn.Parameter(torch.tensor(w, dtype=torch.float32))
        max_norm = torch.tensor(MAX_NORM)
    TorchOps().clip_unit_norms_([ParamHandle("w", "weight", t, "Linear", 0, t.shape)], max_norm)
    _check(t.detach().double().numpy(), w, 0)


def test_torch_ops_general_path_on_a_vector_clips_its_whole_norm():
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import TorchOps

    w = np.array([0.6, 0.8]) * 2 * MAX_NORM
    t = torch.nn.Parameter(torch.tensor(w, dtype=torch.float32))
    TorchOps().clip_unit_norms_([ParamHandle("b", "bias", t, "Linear", None, t.shape)], MAX_NORM)
    _check(t.detach().double().numpy(), w, None)


def test_torch_ops_renorm_fast_path_divides_by_norm_plus_the_same_eps():
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import TorchOps

    w = _weight(0)
    t = torch.nn.Parameter(torch.tensor(w, dtype=torch.float32))  # float32, float bound
    TorchOps().clip_unit_norms_([ParamHandle("w", "weight", t, "Linear", 0, t.shape)], MAX_NORM)
    _check(t.detach().double().numpy(), w, 0)


@pytest.mark.parametrize("unit_axis", [1, None])
def test_keras_ops_divides_by_norm_plus_max_norm_eps(unit_axis):
    keras = pytest.importorskip("keras")
    from regplug.adapters.keras import KerasOps

    w = _weight(1) if unit_axis is not None else np.array([0.6, 0.8]) * 2 * MAX_NORM
    v = keras.Variable(w.astype("float32"), name="kernel")
    KerasOps().clip_unit_norms_([ParamHandle("kernel", "weight", v, "Dense", unit_axis,
                                             w.shape)], MAX_NORM)
    _check(np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64), w, unit_axis)


def test_conventions_exports_what_it_documents():
    assert set(conventions.__all__) == {"MAX_NORM_EPS", "SCHEDULABLE_DROPOUT", "OTHER_DROPOUT",
                                        "DROPOUT_LAYERS", "is_bias_name", "shared_kind",
                                        "param_name"}

"""TorchOps against a NumPy reference, op by op: values, which parameters an op leaves alone
(frozen ones, ones without a gradient), empty selections, tensor strengths. Written to kill
the survivors of a mutation run (mutmut) over adapters/torch/ops.py (issue 16, item 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug.adapters.torch import TorchOps
from regplug.run import ParamHandle

values = st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=6, max_size=6)


def handle(name, data, *, grad=None, frozen=False, unit_axis=0, dtype=torch.float32):
    tensor = torch.nn.Parameter(torch.tensor(data, dtype=dtype).reshape(2, 3))
    if grad is not None:
        tensor.grad = torch.tensor(grad, dtype=dtype).reshape(2, 3)
    if frozen:
        tensor.requires_grad_(False)
    return ParamHandle(name, "weight", tensor, "Linear", unit_axis, (2, 3))


def arr(h):
    return h.tensor.detach().double().numpy()


@settings(max_examples=30, deadline=None)
@given(values, values, values)
def test_values_equal_numpy_and_leave_frozen_parameters_out(a, b, r):
    ops = TorchOps()
    live, frozen = handle("a", a), handle("b", b, frozen=True)
    ref = [torch.tensor(r, dtype=torch.float32).reshape(2, 3)] * 2
    x = np.array(a, dtype=np.float32).astype(np.float64)
    for got, want in [(ops.sum_squares([live, frozen]), (x ** 2).sum()),
                      (ops.sum_abs([live, frozen]), np.abs(x).sum()),
                      (ops.sum_squares_diff([live, frozen], ref),
                       ((x - np.array(r, np.float32).astype(np.float64)) ** 2).sum())]:
        assert got.dtype == torch.float32 and got.shape == ()
        assert float(got.detach()) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_sum_squares_diff_is_differentiable_and_of_every_pair():
    ops = TorchOps()
    a, b = handle("a", [1.0] * 6), handle("b", [2.0] * 6)
    ref = [torch.zeros(2, 3), torch.ones(2, 3)]
    value = ops.sum_squares_diff([a, b], ref)
    assert float(value) == 6 * 1 + 6 * 1
    value.backward()
    assert torch.equal(a.tensor.grad, torch.full((2, 3), 2.0))  # d(θ−r)²/dθ = 2(θ−r)
    assert torch.equal(b.tensor.grad, torch.full((2, 3), 2.0))


@pytest.mark.parametrize("op", ["sum_squares", "sum_abs"])
def test_empty_or_all_frozen_values_are_a_float32_zero(op):
    ops = TorchOps()
    assert float(getattr(ops, op)([])) == 0.0
    frozen = handle("f", [1.0] * 6, frozen=True)
    zero = getattr(ops, op)([frozen])
    assert zero.dtype == torch.float32 and float(zero) == 0.0
    empty = TorchOps().sum_squares_diff([frozen], [torch.zeros(2, 3)])
    assert empty.dtype == torch.float32 and empty.shape == () and float(empty) == 0.0
    assert float(TorchOps().sum_squares_diff([], [])) == 0.0


@settings(max_examples=30, deadline=None)
@given(values, values, values, st.floats(0.01, 2.0))
def test_gradient_ops_add_exactly_their_term_and_skip_frozen_and_gradless(theta, grad, r, alpha):
    ops = TorchOps()
    for op, term in [
        ("add_to_grad_", lambda t: t),
        ("add_sign_to_grad_", np.sign),
    ]:
        live = handle("a", theta, grad=grad)
        frozen = handle("f", theta, grad=grad, frozen=True)
        none = handle("n", theta)
        getattr(ops, op)([frozen, none, live], alpha)  # the skipped ones first
        want = np.float32(grad) + np.float32(alpha) * term(np.float32(theta))
        np.testing.assert_allclose(live.tensor.grad.numpy().ravel(), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(frozen.tensor.grad.ravel(), torch.tensor(grad))  # untouched
        assert none.tensor.grad is None
    live = handle("a", theta, grad=grad)
    frozen = handle("f", theta, grad=grad, frozen=True)
    reference = [torch.tensor(r).reshape(2, 3)] * 2
    ops.add_diff_to_grad_([frozen, live], reference, torch.tensor(alpha))
    want = np.float32(grad) + np.float32(alpha) * (np.float32(theta) - np.float32(r))
    np.testing.assert_allclose(live.tensor.grad.numpy().ravel(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(frozen.tensor.grad.ravel(), torch.tensor(grad))


def test_a_sparse_gradient_is_refused_by_the_gradient_ops():
    ops = TorchOps()
    h = handle("s", [1.0] * 6)
    h.tensor.grad = torch.zeros(2, 3).to_sparse()
    for call in (lambda: ops.add_to_grad_([h], 0.1),
                 lambda: ops.add_diff_to_grad_([h], [torch.zeros(2, 3)], 0.1)):
        with pytest.raises(TypeError) as caught:
            call()
        assert str(caught.value) == (
            "regplug: parameter 's' has a sparse gradient; closed-form penalties need dense "
            "gradients (exclude it from the selection, or use fused=False)")


@pytest.mark.parametrize("in_update", [False, True])
def test_in_place_ops_leave_frozen_ones_and_during_an_update_gradless_ones(in_update):
    ops = TorchOps()
    ops.in_update = in_update
    data = [0.5, -2.0, 0.1, 3.0, -0.05, 1.0]
    live = handle("a", data, grad=[0.0] * 6)
    frozen = handle("f", data, grad=[0.0] * 6, frozen=True)
    gradless = handle("g", data)
    ops.scale_([live, frozen, gradless], 0.5)
    np.testing.assert_allclose(arr(live).ravel(), np.float32(data) * 0.5)
    assert np.array_equal(arr(frozen).ravel(), np.float32(data))
    assert np.array_equal(arr(gradless).ravel(), np.float32(data) * (1.0 if in_update else 0.5))


def test_soft_threshold_is_sign_times_shrunk_magnitude_with_exact_zeros():
    ops = TorchOps()
    data = [0.5, -2.0, 0.1, 3.0, -0.05, -0.3]
    h = handle("a", data)
    ops.soft_threshold_([h], 0.3)
    x = np.float32(data)
    want = np.sign(x) * np.maximum(np.abs(x) - np.float32(0.3), 0)
    np.testing.assert_allclose(arr(h).ravel(), want, rtol=1e-6, atol=1e-7)
    assert int((h.tensor == 0).sum()) == 3
    ops.soft_threshold_([], 0.3)  # nothing selected: nothing to do


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unit_axis", [0, 1, None])
def test_clip_unit_norms_scales_only_units_above_the_bound(dtype, unit_axis):
    ops = TorchOps()
    data = [3.0, 4.0, 0.0, 0.1, 0.2, 0.2]
    h = handle("a", data, unit_axis=unit_axis, dtype=dtype)
    ops.clip_unit_norms_([h], 1.0)
    x = np.array(data).reshape(2, 3)
    if unit_axis is None:
        norms = np.linalg.norm(x)
    else:
        norms = np.linalg.norm(x, axis=1 - unit_axis, keepdims=True)
    want = np.where(norms > 1.0, x * (1.0 / (norms + 1e-7)), x)
    np.testing.assert_allclose(arr(h), want, rtol=1e-5, atol=1e-6)
    assert h.tensor.dtype == dtype


def test_clip_unit_norms_with_a_tensor_bound_and_frozen_or_gradless_parameters():
    ops = TorchOps()
    data = [3.0, 4.0, 0.0, 0.1, 0.2, 0.2]
    live = handle("a", data)
    frozen = handle("f", data, frozen=True)
    ops.clip_unit_norms_([live, frozen], torch.tensor(1.0))
    assert float(live.tensor.norm(dim=1).max()) <= 1.0 + 1e-6
    assert np.array_equal(arr(frozen).ravel(), np.float32(data))
    ops.in_update = True
    gradless = handle("g", data)
    ops.clip_unit_norms_([gradless], 1.0)
    assert np.array_equal(arr(gradless).ravel(), np.float32(data))


def test_set_trainable_freezes_with_the_gradient_dropped_and_unfreezes():
    ops = TorchOps()
    h = handle("a", [1.0] * 6, grad=[1.0] * 6)
    assert ops.set_trainable_([h], False) is True
    assert not h.tensor.requires_grad and h.tensor.grad is None
    h.tensor.grad = torch.ones(2, 3)
    assert ops.set_trainable_([h], True) is True
    assert h.tensor.requires_grad and torch.equal(h.tensor.grad, torch.ones(2, 3))


def test_count_zeros_and_to_float():
    ops = TorchOps()
    h = handle("a", [0.0, 1.0, 0.0, 2.0, 0.0, 3.0])
    assert ops.count_zeros([h, h]) == (6, 12)
    assert ops.to_float(torch.tensor(2.5, requires_grad=True)) == 2.5
    assert ops.to_float(1) == 1.0


@pytest.mark.parametrize("op", ["sum_squares_diff", "add_diff_to_grad_"])
def test_references_that_do_not_fit_are_refused_naming_the_op(op):
    h = handle("a", [1.0] * 6, grad=[0.0] * 6)
    args = ([h], []) if op == "sum_squares_diff" else ([h], [], 0.1)
    with pytest.raises(ValueError, match=rf"^regplug: ops\.{op} got 0 copies for 1 "):
        getattr(TorchOps(), op)(*args)

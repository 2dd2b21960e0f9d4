"""A mutant of adapters/torch/ops.py that tests/torch lets live (issue 16, item 19):
``scale_update_`` with a tensor factor (a tensor learning rate) must give the same weights
as with the same factor as a float — ``before + f·(θ − before)`` either way."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from regplug.adapters.torch import TorchOps  # noqa: E402
from regplug.run import ParamHandle  # noqa: E402


def handles(values):
    out = []
    for i, value in enumerate(values):
        t = torch.nn.Parameter(torch.tensor(value))
        t.grad = torch.zeros_like(t)
        out.append(ParamHandle(f"p{i}.weight", "weight", t, "torch", 0, tuple(t.shape)))
    return out


@pytest.mark.parametrize("factor", [0.25, 0.9])
def test_scale_update_with_a_tensor_factor_equals_the_float_factor(factor):
    before = [torch.tensor([[3.0, -1.0]]), torch.tensor([[0.5, 2.0]])]
    as_float, as_tensor = handles([[[1.0, 1.0]], [[0.0, 4.0]]]), handles([[[1.0, 1.0]],
                                                                          [[0.0, 4.0]]])
    ops = TorchOps()
    ops.scale_update_(as_float, before, [factor, factor])
    ops.scale_update_(as_tensor, before, [torch.tensor(factor)] * 2)
    for f, t, b, start in zip(as_float, as_tensor, before, ([[1.0, 1.0]], [[0.0, 4.0]]),
                              strict=True):
        expected = b + factor * (torch.tensor(start) - b)
        torch.testing.assert_close(f.tensor.detach(), expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(t.tensor.detach(), expected, rtol=1e-6, atol=1e-7)

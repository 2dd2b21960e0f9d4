"""TorchOps' copy ops: clone, copy_into_, copy_from_ (frozen parameters left alone)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regplug.adapters.torch import TorchOps, discover_parameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_clone_gives_plain_tensors_without_grad_on_the_parameters_device():
    model = _model()
    params = discover_parameters(model, model.parameters())
    with torch.enable_grad():
        copies = TorchOps().clone(params)
    for c, p in zip(copies, params):
        assert type(c) is torch.Tensor and not c.requires_grad and c.grad_fn is None
        assert c.device == p.tensor.device and c.dtype == p.tensor.dtype
        assert c.data_ptr() != p.tensor.data_ptr() and torch.equal(c, p.tensor)


def test_copy_into_and_copy_from_work_in_place_and_leave_autograd_alone():
    model = _model()
    params = discover_parameters(model, model.parameters())
    ops = TorchOps()
    copies = ops.clone(params)
    pointers = [c.data_ptr() for c in copies]
    before = [p.tensor.detach().clone() for p in params]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ops.copy_into_(copies, params)
    assert all(torch.equal(c, p.tensor) for c, p in zip(copies, params))
    assert [c.data_ptr() for c in copies] == pointers
    for c, b in zip(copies, before):
        c.copy_(b)
    ops.copy_from_(params, copies)  # with autograd on: no error about leaf tensors
    assert all(torch.equal(p.tensor, b) for p, b in zip(params, before))
    assert all(p.tensor.grad_fn is None for p in params)


def test_copy_from_leaves_a_frozen_parameter_alone():
    model = _model()
    params = discover_parameters(model, model.parameters())
    ops = TorchOps()
    copies = [torch.zeros_like(p.tensor) for p in params]
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    ops.copy_from_(params, copies)
    assert torch.equal(model[0].weight, frozen)
    assert all(torch.count_nonzero(p.tensor) == 0 for p in params[1:])


def test_copies_that_do_not_pair_with_the_parameters_are_refused():
    model = _model()
    params = discover_parameters(model, model.parameters())
    with pytest.raises(ValueError, match="copy_from_ got 1 copies for 4 parameters"):
        TorchOps().copy_from_(params, TorchOps().clone(params[:1]))

"""Penalties' gradients added outside the loss: for trainers whose callbacks never hold the
loss tensor (Lightning's automatic optimization, the Hugging Face ``Trainer``).

Docs: docs/loops/torch.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regplug.penalty import Penalty
from regplug.run import ParamHandle

__all__ = ["add_autograd_grads"]


def add_autograd_grads(params: Sequence[ParamHandle], terms: Sequence[Penalty]) -> None:
    """Add ``d(Σ terms)/dθ`` to the gradients of ``params``: what the terms written into the
    loss would have contributed to ``backward()``.

    For penalties without a closed-form gradient (no ``Penalty.add_grad``). Every trainable
    parameter the terms depend on gets their gradient, also one without a data gradient in
    this step (as with the term in the loss); frozen ones (``requires_grad=False``) none.

    >>> import torch
    >>> from regplug.adapters.torch import build_run
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(3.0)
    >>> run = build_run(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> add_autograd_grads(run.params, [Penalty("w2", value=lambda: model.weight.pow(2).sum())])
    >>> model.weight.grad.item()  # d(θ²)/dθ at θ = 3
    6.0
    """
    if not terms:
        return
    tensors = [p.tensor for p in params if p.tensor.requires_grad]
    with torch.enable_grad():
        total = torch.stack([torch.as_tensor(t.value(), dtype=torch.float32)
                             for t in terms]).sum()
        if not total.requires_grad or not tensors:
            return
        grads = torch.autograd.grad(total, tensors, allow_unused=True)
    with torch.no_grad():
        for tensor, grad in zip(tensors, grads, strict=True):
            if grad is None:
                continue
            if tensor.grad is None:
                tensor.grad = grad.to(tensor.dtype)
            else:
                tensor.grad.add_(grad.to(tensor.grad.dtype))

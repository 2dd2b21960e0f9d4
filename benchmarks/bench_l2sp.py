"""L2SP benchmark: the fused pull toward θ₀ per step, next to the same penalty by hand.

Over a ResNet-50-sized parameter list (159 tensors, 23.5 M floats), side by side in one
process with interleaved repetitions:

``regplug``
    ``reg.loss(loss)`` + ``optimizer.step()`` with ``L2SP(alpha, kinds="all")`` attached: one
    fused ``grad += alpha·(θ − θ₀)`` (a ``_foreach_sub`` and a ``_foreach_add_``) inside the
    step, θ₀ cloned once at ``attach``.
``hand-written``
    ``alpha/2·Σ(θ − θ₀)²`` built and backpropagated every step, as users write it.
``floor``
    The two bare foreach kernels over the same tensors, with nothing around them.

The gradients of regplug and of the hand-written penalty are first checked to be the same.
Run alone: ``python -m benchmarks.bench_l2sp [--quick]``.
"""

from __future__ import annotations

import sys

import torch

from regplug.plugins import L2SP

from . import Result, load_now
from .bench_torch import (
    _NoUpdate,
    environment,
    fused_penalty_rows,
    resnet50_parameters,
    set_threads,
)

__all__ = ["run", "set_threads", "environment"]

ALPHA = 1e-2


def bench_l2sp(quick: bool) -> list[Result]:
    torch.manual_seed(0)
    model = resnet50_parameters(width_divisor=4 if quick else 1)
    params = list(model.parameters())
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.05)
    start = [p.detach().clone() for p in params]  # θ₀ of the hand-written penalty
    with torch.no_grad():
        for p in params:  # fine-tuning moved the weights a little
            p.add_(torch.randn_like(p), alpha=1e-3)
            p.grad = torch.randn_like(p).mul_(1e-3)
    thetas = [p.detach() for p in params]
    grads = [p.grad for p in params]
    optimizer = _NoUpdate(params)
    loss = torch.zeros((), requires_grad=True)  # a training loss, as reg.loss expects

    def hand_written() -> None:
        penalty = ALPHA / 2 * sum((p - s).square().sum() for p, s in zip(params, start))
        penalty.backward()  # type: ignore[union-attr]

    def floor() -> None:
        torch._foreach_add_(grads, torch._foreach_sub(thetas, start), alpha=ALPHA)

    plugin = L2SP(ALPHA, kinds="all",
                  reference={n: s for (n, _), s in zip(model.named_parameters(), start)})
    return fused_penalty_rows(
        "L2SP step, ResNet-50-sized params", model, optimizer, plugin, loss, grads,
        hand_written, floor, quick=quick, at_least=2, plugin_note="L2SP(kinds='all')",
        hooks_note="fused grad += alpha*(theta - theta0)", load=load_now())


def run(quick: bool) -> list[Result]:
    return bench_l2sp(quick)


if __name__ == "__main__":
    from .run import format_table

    print(format_table(run(quick="--quick" in sys.argv)))

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

import statistics
import sys

import torch

from regplug.adapters.torch import attach
from regplug.plugins import L2SP

from . import Result, load_now, result
from .bench_torch import (
    _NoUpdate,
    _same_gradient_update,
    environment,
    interleaved,
    paired_ratio,
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
    with attach(model, optimizer, [plugin]) as reg:
        def regplug() -> None:
            reg.loss(loss)
            optimizer.step()

        max_diff = _same_gradient_update(grads, regplug, hand_written)
        samples = interleaved({"regplug": regplug, "hand-written": hand_written, "floor": floor},
                              rounds=3 if quick else 21, repeat=1, warmup=1 if quick else 3)

    ours, hand, bare = (statistics.median(samples[k])
                        for k in ("regplug", "hand-written", "floor"))
    n_elements = sum(p.numel() for p in params)
    notes = [
        f"{len(params)} tensors, {n_elements / 1e6:.1f}M float32 elements (ResNet-50 backbone"
        f"{', channels / 4' if quick else ''}); L2SP(kinds='all'), optimizer update a no-op",
        "regplug = reg.loss(loss) + optimizer.step() (fused grad += alpha*(theta - theta0))",
        f"same gradients as the hand-written penalty: max |diff| {max_diff:.1e}",
        f"medians of {len(samples['regplug'])} interleaved rounds, {load_now()}",
    ]
    name = "L2SP step, ResNet-50-sized params"
    return [
        result(name, regplug_s=ours, baselines_s={"hand-written": hand},
               ratio=paired_ratio(samples["hand-written"], samples["regplug"]),
               ratio_of="hand-written / regplug", at_least=2, notes=notes),
        result(name, regplug_s=ours, baselines_s={"floor": bare},
               ratio=paired_ratio(samples["regplug"], samples["floor"]),
               ratio_of="regplug / floor", at_most=1.3, notes=[]),
    ]


def run(quick: bool) -> list[Result]:
    return bench_l2sp(quick)


if __name__ == "__main__":
    from .run import format_table

    print(format_table(run(quick="--quick" in sys.argv)))

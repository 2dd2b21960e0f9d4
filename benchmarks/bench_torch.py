"""PyTorch benchmarks: what regplug costs per optimizer step, next to the same work by hand.

Two measurements, each run side by side in one process with interleaved repetitions:

``l2``
    The L2 penalty over a ResNet-50-sized parameter list. regplug applies it inside
    ``optimizer.step()`` as one fused ``grad += 2λθ``; compared with the hand-written autograd
    penalty (``λ·Σθ²`` built and backpropagated every step) and with the memory floor (the bare
    ``torch._foreach_add_`` over the same tensors, with nothing around it).
``mlp``
    A small MLP trained on CPU with five plugins active, against a loop that does the same
    math with the same kernels written inline, both taking turns on one model and optimizer
    (a loop's speed also depends on where its tensors landed in memory). Two models trained
    alike, one by each loop, end with the same weights, so the loops provably do the same
    work.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from regplug.adapters.torch import TorchRegularizer, attach
from regplug.plugins import L1, L2, DecoupledWeightDecay, MaxNorm, ProximalL1

from . import Result, interleave, result

__all__ = ["run", "set_threads", "environment", "resnet50_parameters", "interleaved",
           "paired_ratio", "same_weights"]

Step = Callable[[], object]


# -- measuring --------------------------------------------------------------------------
def interleaved(steps: dict[str, Step], *, rounds: int, repeat: int, warmup: int
                ) -> dict[str, list[float]]:
    """Seconds per call of each step: ``rounds`` samples, each the mean of ``repeat`` calls.

    Each candidate is first called ``warmup`` times; then :func:`benchmarks.interleave` times
    the rounds (each candidate once a round, in a rotated order, the garbage collector off).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    return interleave({name: _timed(step, repeat) for name, step in steps.items()}, rounds)


def _timed(step: Step, repeat: int) -> Callable[[], float]:
    """A call of ``step`` ``repeat`` times in a row that returns the seconds per call."""
    def timed() -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            step()
        return (time.perf_counter() - start) / repeat

    return timed


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-round ratios: robust to rounds where the whole machine was slow."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def same_weights(ours: nn.Module, theirs: nn.Module, *, after: str, other: str) -> float:
    """The largest difference between the two modules' parameters, trained alike for
    ``after`` (e.g. ``"2 epochs"``); raises if it exceeds 1e-5: then ``ours`` and ``other``
    (e.g. ``"the hand-written L2"``) did not do the same work and the timing means nothing."""
    max_diff = max(float((a - b).detach().abs().max())
                   for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    if max_diff > 1e-5:
        raise AssertionError(f"benchmark invalid: after {after} regplug and {other} hold "
                             f"different weights (max |diff| {max_diff:.3g})")
    return max_diff


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads for every benchmark of this module."""
    torch.set_num_threads(threads)


def environment() -> dict[str, str]:
    """What the numbers depend on: versions, CPU and thread settings."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "torch threads": f"{torch.get_num_threads()} intra-op, "
                         f"{torch.get_num_interop_threads()} inter-op",
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


# -- benchmark 1: L2 over ResNet-50's parameters ------------------------------------------
_RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks) of each stage
_BOTTLENECK_EXPANSION = 4


def resnet50_parameters(width_divisor: int = 1) -> nn.Sequential:
    """The convolution and batch-norm layers of a ResNet-50 backbone, as a flat container.

    Same parameter shapes as torchvision's ``resnet50`` without its 1000-way classifier:
    159 tensors, 23,508,032 elements. ``width_divisor`` divides every channel count (for quick
    runs). The layers are never called; only their parameters matter here.

    >>> layers = resnet50_parameters(width_divisor=8)
    >>> len(list(layers.parameters()))
    159
    """
    def conv(cin: int, cout: int, k: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, k, bias=False)

    stem = 64 // width_divisor
    layers: list[nn.Module] = [conv(3, stem, 7), nn.BatchNorm2d(stem)]
    inplanes = stem
    for planes, blocks in _RESNET50_STAGES:
        planes //= width_divisor
        out = planes * _BOTTLENECK_EXPANSION
        for block in range(blocks):
            layers += [conv(inplanes, planes, 1), nn.BatchNorm2d(planes),
                       conv(planes, planes, 3), nn.BatchNorm2d(planes),
                       conv(planes, out, 1), nn.BatchNorm2d(out)]
            if block == 0:  # the projection shortcut of each stage's first block
                layers += [conv(inplanes, out, 1), nn.BatchNorm2d(out)]
            inplanes = out
    return nn.Sequential(*layers)


class _NoUpdate(torch.optim.Optimizer):
    """An optimizer whose update does nothing: ``step()`` runs only the hooks around it."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__(params, defaults={})

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        return None


def bench_l2(quick: bool) -> list[Result]:
    """Benchmark 1: L2 per step, regplug vs hand-written autograd penalty vs the floor."""
    l2 = 1e-4
    torch.manual_seed(0)
    model = resnet50_parameters(width_divisor=4 if quick else 1)
    params = list(model.parameters())
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.05)
            p.grad = torch.randn_like(p).mul_(1e-3)
    thetas = [p.detach() for p in params]
    grads = [p.grad for p in params]
    optimizer = _NoUpdate(params)
    loss = torch.zeros((), requires_grad=True)  # a training loss, as reg.loss expects

    def hand_written() -> None:
        penalty = l2 * sum(p.pow(2).sum() for p in params)
        penalty.backward()  # type: ignore[union-attr]

    def floor() -> None:
        torch._foreach_add_(grads, thetas, alpha=2 * l2)

    return fused_penalty_rows(
        "L2 step, ResNet-50-sized params", model, optimizer, L2(l2, kinds="all"), loss,
        grads, hand_written, floor, quick=quick, at_least=4,
        plugin_note="L2(kinds='all')",
        hooks_note="hooks: on_loss, fused grad += 2*l2*theta")


def fused_penalty_rows(name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       plugin: object, loss: torch.Tensor, grads: list[torch.Tensor],
                       hand_written: Callable[[], None], floor: Callable[[], None], *,
                       quick: bool, at_least: float, plugin_note: str, hooks_note: str,
                       load: str = "") -> list[Result]:
    """A fused penalty's step (``reg.loss`` + a no-op update) against the same penalty
    written by hand through autograd and against the bare foreach kernels (the floor),
    after checking it gives the hand-written gradients: two rows (``bench_l2``,
    ``bench_l2sp``)."""
    params = list(model.parameters())
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
    rounds = f"medians of {len(samples['regplug'])} interleaved rounds"
    notes = [
        f"{len(params)} tensors, {n_elements / 1e6:.1f}M float32 elements (ResNet-50 backbone"
        f"{', channels / 4' if quick else ''}); {plugin_note}, optimizer update a no-op",
        f"regplug = reg.loss(loss) + optimizer.step() ({hooks_note})",
        f"same gradients as the hand-written penalty: max |diff| {max_diff:.1e}",
        f"{rounds}, {load}" if load else rounds,
    ]
    return [
        result(name, regplug_s=ours, baselines_s={"hand-written": hand},
               ratio=paired_ratio(samples["hand-written"], samples["regplug"]),
               ratio_of="hand-written / regplug", at_least=at_least, notes=notes),
        result(name, regplug_s=ours, baselines_s={"floor": bare},
               ratio=paired_ratio(samples["regplug"], samples["floor"]),
               ratio_of="regplug / floor", at_most=1.3, notes=[]),
    ]


def _same_gradient_update(grads: list[torch.Tensor], first: Step, second: Step) -> float:
    """Run ``first`` and ``second`` from the same gradients; their largest difference.

    Leaves the gradients as they were. Raises if the two updates are not the same.
    """
    saved = [g.clone() for g in grads]
    first()
    after_first = [g.clone() for g in grads]
    torch._foreach_copy_(grads, saved)
    second()
    diff = max(float((a - b).abs().max()) for a, b in zip(after_first, grads))
    close = all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(after_first, grads))
    torch._foreach_copy_(grads, saved)
    if not close:
        raise AssertionError(f"benchmark invalid: regplug and the hand-written penalty give "
                             f"different gradients (max |diff| {diff:.3g})")
    return diff


# -- benchmark 2: five plugins on a small MLP -----------------------------------------------
_L1, _L2, _WEIGHT_DECAY, _PROXIMAL_L1, _MAX_NORM = 1e-5, 5e-4, 1e-2, 1e-4, 0.5
_LR, _MOMENTUM, _BATCH = 0.05, 0.9, 256


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 250), nn.ReLU(),
                         nn.Linear(250, 10))


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(_BATCH, 784, generator=generator),
             torch.randint(0, 10, (_BATCH,), generator=generator)) for _ in range(count)]


def _sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=_LR, momentum=_MOMENTUM)


_Data = Iterator[tuple[torch.Tensor, torch.Tensor]]


def _five_plugins() -> list[object]:
    return [L1(_L1), L2(_L2), DecoupledWeightDecay(_WEIGHT_DECAY), ProximalL1(_PROXIMAL_L1),
            MaxNorm(_MAX_NORM)]


def _regplug_step(model: nn.Module, optimizer: torch.optim.Optimizer, reg: TorchRegularizer,
                  data: _Data) -> Step:
    """One step of the user's loop with regplug's lines (``reg`` is attached)."""
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        x, y = next(data)
        optimizer.zero_grad()
        loss = reg.loss(criterion(model(x), y))
        loss.backward()
        optimizer.step()

    return step


def _hand_written_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: _Data) -> Step:
    """The same five regularizers written inline, with the kernels regplug uses.

    The order is regplug's: plugins run in list order, so L1 enters the gradient before L2,
    and the proximal step comes before max-norm clips.
    """
    criterion = nn.CrossEntropyLoss()
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]

    def step() -> None:
        x, y = next(data)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            grads = [w.grad for w in weights]
            torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=_L1)  # L1
            torch._foreach_add_(grads, weights, alpha=2.0 * _L2)               # L2
            torch._foreach_mul_(weights, 1.0 - lr * _WEIGHT_DECAY)         # decoupled decay
        optimizer.step()
        with torch.no_grad():
            threshold = lr * _PROXIMAL_L1                                  # proximal L1
            inside = torch._foreach_clamp_max(weights, threshold)
            torch._foreach_clamp_min_(inside, -threshold)
            torch._foreach_sub_(weights, inside)
            for w in weights:                                              # max-norm per unit
                w.renorm_(2, 0, _MAX_NORM)  # = w·min(1, c/(‖w_i‖+1e-7)) per row, one kernel

    return step


def _unregularized_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: _Data) -> Step:
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        x, y = next(data)
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()

    return step


def _same_work(batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    """Train two copies of the MLP from the same start on the same batches, one through
    regplug and one by hand; their largest weight difference. Raises unless they agree."""
    ours, hand = _mlp(0), _mlp(0)
    ours_optimizer, hand_optimizer = _sgd(ours), _sgd(hand)
    with attach(ours, ours_optimizer, _five_plugins()) as reg:
        regplug = _regplug_step(ours, ours_optimizer, reg, itertools.cycle(batches))
        by_hand = _hand_written_step(hand, hand_optimizer, itertools.cycle(batches))
        for _ in range(steps):
            regplug()
            by_hand()
    max_diff = max(float((a.detach() - b.detach()).abs().max())
                   for a, b in zip(ours.parameters(), hand.parameters(), strict=True))
    if not all(torch.allclose(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)
               for a, b in zip(ours.parameters(), hand.parameters(), strict=True)):
        raise AssertionError(f"benchmark invalid: after {steps} steps the regplug and "
                             f"hand-written loops hold different weights (max |diff| "
                             f"{max_diff:.3g})")
    return max_diff


def bench_mlp(quick: bool) -> list[Result]:
    """Benchmark 2: a wrapped loop with five plugins vs the same loop written by hand.

    All three loops (regplug, hand-written, unregularized) train one model with one
    optimizer, taking turns round by round; regplug stays attached, its hooks taken off
    while the other two loops run (as its sanity checks do). They differ in their code
    alone. With a model and optimizer per loop, a loop's step time also depended on where
    its tensors landed in memory: two identical regplug loops in one process differed by
    11-15 us a step (2026-12-07), as much as regplug's whole cost. That the regplug and
    hand-written loops do the same work is checked on two models trained alike.
    """
    batches = _batches(4 if quick else 16)
    rounds, repeat, warmup = (4, 3, 3) if quick else (120, 20, 40)
    max_diff = _same_work(batches, warmup + 60)
    model, data = _mlp(0), itertools.cycle(batches)
    optimizer = _sgd(model)
    with attach(model, optimizer, _five_plugins()) as reg:
        ours = _regplug_step(model, optimizer, reg, data)
        by_hand = _hand_written_step(model, optimizer, data)
        bare = _unregularized_step(model, optimizer, data)
        without_hooks = reg._paused  # regplug's hooks off, the attachment kept

        def paused(timed: Callable[[], float]) -> Callable[[], float]:
            def run() -> float:
                with without_hooks():
                    return timed()

            return run

        for _ in range(warmup):
            ours()
        with without_hooks():
            for _ in range(warmup):
                by_hand()
                bare()
        samples = interleave({"regplug": _timed(ours, repeat),
                              "hand-written": paused(_timed(by_hand, repeat)),
                              "no regularization": paused(_timed(bare, repeat))}, rounds)
    median = {k: statistics.median(v) for k, v in samples.items()}
    ratio = paired_ratio(samples["regplug"], samples["hand-written"])
    notes = [
        f"MLP 784-50-250-10, batch {_BATCH}, SGD(lr={_LR}, momentum={_MOMENTUM}); plugins "
        f"L1, L2, DecoupledWeightDecay, ProximalL1, MaxNorm",
        f"same weights as the hand-written loop after {warmup + 60} steps of each on two "
        f"models trained alike: max |diff| {max_diff:.1e}",
        f"one model and optimizer for the three loops, regplug's hooks off while the others "
        f"run; {rounds} interleaved rounds of {repeat} steps each (the ratio: median of the "
        f"rounds' ratios)",
        f"the regularizers' own kernels cost "
        f"{_ms(median['hand-written'] - median['no regularization'])} per step",
        f"regplug's own work per step (the same kernels: hooks, plugins, filters in Python): "
        f"{(ratio - 1) * median['hand-written'] * 1e6:.0f} us (the ratio's share of a "
        f"{_ms(median['hand-written'])} step)",
    ]
    return [result("5 plugins, MLP step (CPU)", regplug_s=median["regplug"],
                   baselines_s={"hand-written": median["hand-written"],
                                "no regularization": median["no regularization"]},
                   ratio=ratio, ratio_of="regplug / hand-written", at_most=1.02, notes=notes)]


def run(quick: bool) -> list[Result]:
    """Every PyTorch benchmark; ``quick`` runs small sizes with few repetitions (a smoke run)."""
    return bench_l2(quick) + bench_mlp(quick)

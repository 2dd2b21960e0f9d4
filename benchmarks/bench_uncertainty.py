"""MC-dropout prediction: ``mc_predict`` next to the naive loop of T forward passes.

For each model, three ways to get the same summary of ``T = 50`` dropout samples of 1,000
rows of 784 features (mean, population std, central 95 % quantile interval), timed side by
side in one process (interleaved rounds, medians):

``naive loop``
    what one writes by hand: T forward passes with dropout on (torch: ``model.train()``
    under ``no_grad``; Keras: ``model(x, training=True)``), stacked in NumPy, then
    ``mean``, ``std`` and ``np.quantile``.
``whole model``
    ``mc_predict(..., reuse_prefix=False)``: every sample runs the whole model.
``mc_predict``
    the default: the deterministic layers before the first dropout run once, the rest T
    times.

The models are the course notebook's MLP with its dropout moved after the FIRST layer
(784→50→Dropout→250→10), a wider first layer (784→512→Dropout→512→10), and the notebook's
own placement, late (784→50→250→Dropout→10: the prefix is most of the network). The ratio
is naive loop / mc_predict, target >= 3. Torch rows, then Keras rows on the backend Keras
was imported with (TensorFlow unless ``KERAS_BACKEND`` says otherwise).

The torch rows run at 1 intra-op thread (``python -m benchmarks.run --threads N`` sets
another count). Run::

    python -c "from benchmarks import bench_uncertainty as b; b.main()"
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from . import Result, result

__all__ = ["run", "set_threads", "CASES", "TARGET"]

T = 50
TARGET = 3.0
RATE = 0.5
#: name -> (first hidden width, second hidden width, dropout after the first (else late))
CASES: dict[str, tuple[int, int, bool]] = {
    "first": (50, 250, True), "wide first": (512, 512, True), "late": (50, 250, False)}

Summary = tuple[np.ndarray, np.ndarray, np.ndarray]


#: torch's intra-op threads for the torch rows: 1 unless ``--threads`` says otherwise. The
#: rows measure the work mc_predict saves; at 2 threads torch's CPU random generator (the
#: masks, a fifth of mc_predict's time) stays serial while the matrix products of the naive
#: loop run in parallel, which mixes how well each path parallelizes into the ratio.
_THREADS: int | None = None


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in torch (Keras/TensorFlow keep their defaults)."""
    global _THREADS
    _THREADS = threads


def _summary(stack: np.ndarray) -> Summary:
    """What ``mc_predict`` returns, computed the plain NumPy way."""
    s = stack.astype(np.float64)
    return s.mean(axis=0), s.std(axis=0), np.quantile(s, [0.025, 0.975], axis=0)


def _data(rows: int) -> np.ndarray:
    return np.random.default_rng(0).random((rows, 784), dtype=np.float32)


def _torch_model(h1: int, h2: int, first: bool) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if first:
        layers = [nn.Linear(784, h1), nn.ReLU(), nn.Dropout(RATE), nn.Linear(h1, h2), nn.ReLU()]
    else:
        layers = [nn.Linear(784, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(RATE)]
    return nn.Sequential(*layers, nn.Linear(h2, 10))


def _keras_model(h1: int, h2: int, first: bool) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    dense, drop = keras.layers.Dense, keras.layers.Dropout
    if first:
        layers = [dense(h1, activation="relu"), drop(RATE), dense(h2, activation="relu")]
    else:
        layers = [dense(h1, activation="relu"), dense(h2, activation="relu"), drop(RATE)]
    return keras.Sequential([keras.Input((784,)), *layers, dense(10)])


def _candidates(framework: str, model: Any, x: Any
                ) -> tuple[dict[str, Callable[[], Any]], Callable[[], Summary]]:
    """The three timed calls, and the naive loop's summary (for the correctness note)."""
    if framework == "torch":
        import torch

        from regplug.adapters.torch import mc_predict

        def naive() -> Summary:
            model.train()
            with torch.no_grad():
                return _summary(np.stack([model(x).numpy() for _ in range(T)]))
    else:
        import keras

        from regplug.adapters.keras import mc_predict

        def naive() -> Summary:
            return _summary(np.stack([keras.ops.convert_to_numpy(model(x, training=True))
                                      for _ in range(T)]))

    return {
        "naive loop": naive,
        "whole model": lambda: mc_predict(model, x, samples=T, seed=0, reuse_prefix=False),
        "mc_predict": lambda: mc_predict(model, x, samples=T, seed=0),
    }, naive


def _rows(framework: str, quick: bool) -> list[Result]:
    from .bench_torch import interleaved, paired_ratio

    rows = 200 if quick else 1000
    rounds, warmup = (3, 1) if quick else (9, 2)
    make = _torch_model if framework == "torch" else _keras_model
    label = framework
    if framework == "keras":
        import keras

        label = f"keras ({keras.backend.backend()})"
    threads = []
    if framework == "torch":
        import torch

        threads = [f"torch with {torch.get_num_threads()} intra-op thread(s)"]
    out = []
    for name, (h1, h2, first) in CASES.items():
        model, x = make(h1, h2, first), _data(rows)
        if framework == "torch":
            import torch

            x = torch.from_numpy(x)  # type: ignore[assignment]
        steps, naive = _candidates(framework, model, x)
        samples = interleaved(steps, rounds=rounds, repeat=1, warmup=warmup)
        median = {k: statistics.median(v) for k, v in samples.items()}
        p = steps["mc_predict"]()
        mean, std, _ = naive()
        se = np.sqrt((p.std ** 2 + std ** 2) / T)
        worst = float(np.max(np.abs(p.mean - mean) / np.maximum(se, 1e-12)))
        where = "after the first layer" if first else "after the last hidden layer"
        out.append(result(
            f"MC dropout T={T}, 784-{h1}-{h2}-10, dropout {where}, {label}",
            regplug_s=median["mc_predict"],
            baselines_s={"naive loop": median["naive loop"],
                         "whole model": median["whole model"]},
            ratio=paired_ratio(samples["naive loop"], samples["mc_predict"]),
            ratio_of="naive loop / mc_predict", at_least=TARGET,
            notes=[f"{rows} rows, dropout rate {RATE}; reused (computed once): "
                   f"{', '.join(p.reused) or 'nothing'}; whole model / mc_predict "
                   f"{paired_ratio(samples['whole model'], samples['mc_predict']):.2f}",
                   f"means agree with the naive loop's: max |diff| = {worst:.1f} standard "
                   f"errors; medians of {rounds} interleaved rounds ({name})", *threads]))
    return out


def run(quick: bool) -> list[Result]:
    """Torch rows (at :data:`_THREADS` intra-op threads, 1 by default), then Keras rows
    (skipped with an ImportError when Keras is missing)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1 if _THREADS is None else _THREADS)
    try:
        rows = _rows("torch", quick)
    finally:
        torch.set_num_threads(before)
    try:
        import keras  # noqa: F401
    except ImportError:
        return rows
    return rows + _rows("keras", quick)


def main(quick: bool = False) -> None:
    """Print the rows as the table of ``python -m benchmarks.run``."""
    import os

    from .run import format_table

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = run(quick)
    print(f"load average (1 min) before the run: {load:.2f} on {os.cpu_count()} cores")
    print(format_table(rows))

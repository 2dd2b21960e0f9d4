"""Side-by-side timings of regplug against hand-written code and hardware floors.

Run every benchmark with one command and read the ratios from one table::

    python -m benchmarks.run            # full measurement (about a minute)
    python -m benchmarks.run --quick    # smoke run: small sizes, few repetitions

Each benchmark module exposes ``run(quick: bool) -> list[dict]`` and returns one
:class:`Result` per measured ratio, built with :func:`result`. Times are seconds per training
step (medians over interleaved repetitions, timed with :func:`interleave`); a ratio is
compared with its target and marked PASS or MISS. A MISS is a finding, not a failure: the
command still exits with status 0.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

__all__ = ["Result", "interleave", "result", "load_now"]


class Result(TypedDict):
    """One row of the table (and one object of the ``--json`` output)."""

    #: what is measured, e.g. ``"L2 step, ResNet-50 parameters"``
    benchmark: str
    #: seconds per step of the regplug path
    regplug_s: float
    #: seconds per step of each baseline, by name (``"hand-written"``, ``"floor"``, ...)
    baselines_s: dict[str, float]
    #: the compared ratio, e.g. hand-written time over regplug time
    ratio: float
    #: how ``ratio`` is formed, e.g. ``"hand-written / regplug"``
    ratio_of: str
    #: the requirement on ``ratio``, e.g. ``">= 4"`` or ``"<= 1.03"``
    target: str
    #: whether ``ratio`` meets ``target``
    passed: bool
    #: facts a reader needs to trust the row (sizes, repetitions, correctness checks)
    notes: list[str]


def result(benchmark: str, *, regplug_s: float, baselines_s: dict[str, float], ratio: float,
           ratio_of: str, at_least: float | None = None, at_most: float | None = None,
           notes: Iterable[str] = ()) -> Result:
    """A :class:`Result` whose ``ratio`` must be ``>= at_least`` or ``<= at_most`` (one of them).

    >>> row = result("demo", regplug_s=1.0, baselines_s={"hand-written": 5.0}, ratio=5.0,
    ...              ratio_of="hand-written / regplug", at_least=4)
    >>> row["target"], row["passed"]
    ('>= 4', True)
    """
    if (at_least is None) == (at_most is None):
        raise ValueError("result: give exactly one of 'at_least' and 'at_most'")
    if at_least is not None:
        target, passed = f">= {at_least:g}", ratio >= at_least
    else:
        target, passed = f"<= {at_most:g}", ratio <= at_most  # type: ignore[operator]
    return Result(benchmark=benchmark, regplug_s=regplug_s, baselines_s=dict(baselines_s),
                  ratio=ratio, ratio_of=ratio_of, target=target, passed=bool(passed),
                  notes=list(notes))


def interleave(variants: Mapping[str, Callable[[], float]], rounds: int
               ) -> dict[str, list[float]]:
    """``rounds`` samples of each variant, by name; a variant is called once a sample and
    returns the seconds it measured (so each times only what it means to, e.g. one epoch).

    Every round calls each variant once, in an order rotated from round to round, so that
    slow drifts of the machine (frequency, a noisy neighbour) fall on all variants alike. The
    garbage collector runs before the first round and is off until the last one ends.

    >>> calls = []
    >>> samples = interleave({"a": lambda: calls.append("a") or 1.0,
    ...                       "b": lambda: calls.append("b") or 2.0}, rounds=3)
    >>> calls, samples
    (['a', 'b', 'b', 'a', 'a', 'b'], {'a': [1.0, 1.0, 1.0], 'b': [2.0, 2.0, 2.0]})
    """
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(variants[name]())
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def load_now() -> str:
    """The 1-minute load average for a row's notes: ``"load 0.96 on 2 cores"`` (``"load
    unknown"`` where the platform has none)."""
    if not hasattr(os, "getloadavg"):
        return "load unknown"
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"

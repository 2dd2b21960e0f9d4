"""Run every benchmark and print one table of side-by-side ratios.

Usage::

    python -m benchmarks.run [--quick] [--json FILE] [--threads N]

``--quick`` is a smoke run (small sizes, few repetitions: the ratios are not meaningful).
``--json`` also writes the environment and every row to FILE. ``--threads`` sets PyTorch's
intra-op thread count (default: PyTorch's own default). The exit status is 0 whether or not
the targets are met: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from . import Result, result

#: Benchmark modules, each with ``run(quick: bool) -> list[dict]``; optional ones are skipped
#: with a one-line note when they (or their framework) cannot be imported.
MODULES = ("benchmarks.bench_torch", "benchmarks.bench_keras", "benchmarks.bench_lightning",
           "benchmarks.bench_transformers", "benchmarks.bench_uncertainty",
           "benchmarks.bench_compare", "benchmarks.bench_tune", "benchmarks.bench_layerwise",
           "benchmarks.bench_l2sp", "benchmarks.bench_layer_monitor", "benchmarks.bench_ema",
           "benchmarks.bench_freeze")

_COLUMNS = ("benchmark", "regplug", "baseline(s)", "ratio", "target", "result")


def _skip_note(name: str, err: BaseException) -> str:
    return f"skipped {name}: {type(err).__name__}: {err}".splitlines()[0]


def _load(name: str) -> tuple[ModuleType | None, str]:
    """The module, or None and a one-line reason it was skipped."""
    try:
        return importlib.import_module(name), ""
    except Exception as err:  # a missing framework raises ImportError, a broken one anything
        return None, _skip_note(name, err)


def _load_average() -> str:
    """The 1-minute load average, with a caution when other processes keep the CPU busy."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    note = f"{load:.2f} on {cores} logical cores"
    if load >= cores / 2:
        note += " (other processes compete for the CPU: expect noisy timings)"
    return note


def _duration(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def as_result(row: Mapping[str, Any]) -> Result:
    """``row`` as a :class:`~benchmarks.Result`: either already one, or the short shape.

    The short shape has one ``baseline_s`` and a numeric ``target``, a ceiling on ``ratio``
    = regplug / baseline.
    """
    if "passed" in row:
        return Result(**row)  # type: ignore[typeddict-item]
    return result(row["benchmark"], regplug_s=row["regplug_s"],
                  baselines_s={"baseline": row["baseline_s"]}, ratio=row["ratio"],
                  ratio_of="regplug / baseline", at_most=row["target"],
                  notes=row.get("notes", ()))


def _cells(row: Result) -> tuple[str, ...]:
    baselines = ", ".join(f"{name} {_duration(t)}" for name, t in row["baselines_s"].items())
    return (row["benchmark"], _duration(row["regplug_s"]), baselines or "-",
            f"{row['ratio']:.3f} ({row['ratio_of']})", row["target"],
            "PASS" if row["passed"] else "MISS")


def format_table(rows: Sequence[Result]) -> str:
    """The rows as an aligned text table, with each row's notes underneath it."""
    cells = [_COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [line(_COLUMNS), line(["-" * w for w in widths])]
    for row, values in zip(rows, cells[1:]):
        out.append(line(values))
        out += [f"    {note}" for note in row["notes"]]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small sizes, few repetitions")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="PyTorch intra-op threads (default: PyTorch's default)")
    args = parser.parse_args(argv)

    rows: list[Result] = []
    environment = {"mode": "quick (smoke run)" if args.quick else "full",
                   "load average before the run": _load_average()}
    skipped: list[str] = []
    for name in MODULES:
        module, reason = _load(name)
        if module is None:
            print(reason, flush=True)
            skipped.append(reason)
            continue
        if args.threads is not None and hasattr(module, "set_threads"):
            module.set_threads(args.threads)
        if hasattr(module, "environment"):
            environment.update(module.environment())
        print(f"running {name} ...", flush=True)
        try:
            found = module.run(args.quick)
        except ImportError as err:  # a module that imports its framework only when it runs
            reason = _skip_note(name, err)
            print(reason, flush=True)
            skipped.append(reason)
            continue
        rows += [as_result(row) for row in found]

    print()
    for key, value in environment.items():
        print(f"{key}: {value}")
    print()
    print(format_table(rows))
    missed = [r for r in rows if not r["passed"]]
    print()
    if missed:
        print(f"{len(missed)} of {len(rows)} targets MISSED (a measurement: exit status 0)")
    else:
        print(f"all {len(rows)} targets met")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"environment": environment, "results": rows, "skipped": skipped}, f,
                      indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The doctor's confusion table over the scenario suite (steps (a) and (b): the verdicts).

    python tests/doctor/confusion.py --framework torch --seeds 0,1

prints one line per run and the table (rows: the right verdict, columns: the doctor's).
tests/doctor/test_scenarios.py runs the same function. Docs: docs/doctor.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import SCENARIOS, Scenario

from regplug.doctor import VERDICTS
from regplug.doctor.cli import run_doctor


def run_suite(framework: str, seeds: Sequence[int], scenarios: Sequence[Scenario] = SCENARIOS,
              *, echo: bool = False) -> list[tuple[str, int, str, str]]:
    """``(scenario, seed, expected, got)`` for every scenario and seed."""
    rows = []
    for scenario in scenarios:
        for seed in seeds:
            start = time.perf_counter()
            result = run_doctor(framework=framework, seed=seed, search=False, **scenario.kwargs)
            got = result.diagnosis.verdict
            rows.append((scenario.name, seed, scenario.expected, got))
            if echo:
                mark = "ok" if got == scenario.expected else "WRONG"
                print(f"{framework:<6} {scenario.name:<16} seed {seed}  expected "
                      f"{scenario.expected:<12} got {got:<12} {mark:<5} "
                      f"{time.perf_counter() - start:.1f}s", flush=True)
    return rows


def confusion_table(rows: Sequence[tuple[str, int, str, str]]) -> str:
    """The table as text: a row per right verdict, a column per verdict given."""
    width = max(len(v) for v in VERDICTS) + 2
    lines = ["right \\ doctor".ljust(width + 2) + "".join(v.rjust(width) for v in VERDICTS)]
    for right in VERDICTS:
        counts = [sum(1 for r in rows if r[2] == right and r[3] == got) for got in VERDICTS]
        if any(counts):
            lines.append(right.ljust(width + 2) + "".join(str(c).rjust(width) for c in counts))
    correct = sum(1 for r in rows if r[2] == r[3])
    lines.append(f"right: {correct} of {len(rows)} ({correct / len(rows):.0%})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch", choices=("torch", "keras"))
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    rows = run_suite(args.framework, [int(s) for s in args.seeds.split(",")], echo=True)
    print(confusion_table(rows))


if __name__ == "__main__":
    main()

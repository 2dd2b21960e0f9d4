"""What ``regplug tune --out`` writes besides figures and report: ``trials.csv``,
``best.toml`` (a strategies file ``regplug compare --config`` reads) and ``results.json``.

>>> from regplug.experiment.strategies import Strategy
>>> tuned = Strategy("l2_tuned", plugins=({"name": "l2", "l2": 0.000123},))
>>> print(strategy_toml(tuned, comment="val_cross_entropy 0.0812 at trial 3"), end="")
# val_cross_entropy 0.0812 at trial 3
[[strategies]]
name = "l2_tuned"
plugins = [{name = "l2", l2 = 0.000123}]

Docs: docs/tune.md
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..experiment.reporting import csv_text, json_safe
from ..experiment.strategies import Strategy
from .search import TrialRecord

__all__ = ["TUNED_SUFFIX", "tuned_name", "toml_value", "strategy_toml", "write_trials_csv",
           "write_best_toml", "write_results_json", "pruned_at_epoch", "CSV_FIELDS"]

#: A tuned strategy is written as ``<strategy>_tuned``.
TUNED_SUFFIX = "_tuned"
#: ``trials.csv``'s columns before the parameters, and after them. ``epochs``: the epochs a
#: trial ran; ``pruned_at_epoch``: the epoch a pruned trial stopped at, counted from 1 as the
#: console counts it ("pruned at epoch 12"), so equal to its ``epochs`` (empty for the others).
CSV_FIELDS = (("strategy", "number", "state"), ("epochs", "seconds", "pruned_at_epoch",
                                                 "error"))


def tuned_name(strategy: str) -> str:
    """``"l2"`` → ``"l2_tuned"``."""
    return strategy + TUNED_SUFFIX


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _key(key: str) -> str:
    return key if key and set(key) <= _BARE_KEY else _string(key)


def _string(text: str) -> str:
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    escaped = "".join(c if " " <= c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def toml_value(value: object) -> str:
    """A value as TOML writes it inline; floats as Python's shortest round-trip ``repr``, so
    reading the file back gives the very same number.

    >>> toml_value({"schedule": "linear", "end": 0.5, "span": 10, "on": True})
    '{schedule = "linear", end = 0.5, span = 10, on = true}'
    >>> toml_value([1e-05, float("inf")])
    '[1e-05, inf]'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items()) \
            + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def strategy_toml(strategy: Strategy, *, comment: str = "") -> str:
    """One ``[[strategies]]`` table, after ``comment`` lines (each prefixed ``# ``)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += ["[[strategies]]", f"name = {_string(strategy.name)}"]
    if strategy.description:
        lines.append(f"description = {_string(strategy.description)}")
    if strategy.dropout is not None:
        lines.append(f"dropout = {toml_value(float(strategy.dropout))}")
    if strategy.batch_norm:
        lines.append("batch_norm = true")
    lines.append(f"plugins = {toml_value([dict(p) for p in strategy.plugins])}")
    return "\n".join(lines) + "\n"


def write_best_toml(path: Path, blocks: Sequence[str], *, header: str) -> str:
    """``best.toml``: ``header`` as comments, then the strategy tables; returns the text."""
    head = "\n".join(f"# {line}".rstrip() for line in header.splitlines())
    text = head + "\n\n" + "\n".join(blocks)
    path.write_text(text, encoding="utf-8")
    return text


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return csv_text(value)
    return value


def write_trials_csv(path: Path, records: Sequence[TrialRecord], parameters: Sequence[str], *,
                     metric: str) -> None:
    """Every trial, one row each: strategy, number, state, each parameter (empty where a
    strategy has no such parameter), the objective (for a pruned trial its value at the
    epoch it stopped), epochs, seconds, the epoch a pruned trial stopped at (from 1:
    :func:`pruned_at_epoch`) and error. Text cells go through the formula-injection guard
    (:func:`regplug.experiment.reporting.csv_text`)."""
    head, tail = CSV_FIELDS
    fields = [*head, *parameters, metric, *tail]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in records:
            row: dict[str, object] = {"strategy": r.strategy, "number": r.number,
                                      "state": r.state, metric: r.value, "epochs": r.epochs,
                                      "seconds": r.seconds,
                                      "pruned_at_epoch": pruned_at_epoch(r), "error": r.error}
            row.update({p: r.params.get(p) for p in parameters})
            writer.writerow({k: _cell(v) for k, v in row.items()})


def pruned_at_epoch(record: TrialRecord) -> int | None:
    """The epoch a pruned trial stopped at, counted from 1 (the console's "pruned at epoch
    4"): Optuna's step, which counts from 0, plus one. ``None`` for a trial not pruned.

    >>> pruned_at_epoch(TrialRecord("l2", 0, "PRUNED", {}, 0.3, 4, 1.0, pruned_epoch=3))
    4
    """
    return None if record.pruned_epoch is None else record.pruned_epoch + 1


def _trial_json(trial: Mapping[str, Any]) -> dict[str, Any]:
    """A trial of results.json with its pruned epoch counted from 1 (``pruned_at_epoch``),
    as trials.csv and the console count it, in place of Optuna's step (``pruned_epoch``)."""
    return {("pruned_at_epoch" if key == "pruned_epoch" else key):
            (value + 1 if key == "pruned_epoch" and isinstance(value, int) else value)
            for key, value in trial.items()}


def write_results_json(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as JSON (NaN and infinities as ``null``); its ``trials`` (records as
    dictionaries) count a pruned trial's epoch from 1, as ``pruned_at_epoch``."""
    data = dict(payload)
    if isinstance(data.get("trials"), list):
        data["trials"] = [_trial_json(t) if isinstance(t, Mapping) else t
                          for t in data["trials"]]
    path.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")

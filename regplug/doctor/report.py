"""What ``regplug doctor --out DIR`` writes, all at once: diagnosis.md, report.html,
best.toml (``regplug compare --config`` reads it), results.json and the figures.

Docs: docs/doctor.md
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..experiment.reporting import REPORT_STYLE

if TYPE_CHECKING:
    from .cli import DoctorRun

__all__ = ["write_all", "best_toml_text", "markdown"]


def best_toml_text(result: DoctorRun, *, command: str) -> str:
    """``best.toml``: the tuned fix (overfitting), else the diagnosed setup itself, as a
    ``[[strategies]]`` table ``regplug compare --config best.toml`` reads."""
    from ..tune.output import strategy_toml, tuned_name
    from ..tune.search import format_params

    verdict = result.diagnosis.verdict
    best = result.search.best if result.search is not None else None
    head = [f"regplug doctor: verdict {verdict}", command]
    if best is not None:
        tuned = dataclasses.replace(best.tuned, name=tuned_name(best.strategy),
                                    description="")
        beats = result.seeds is not None and result.seeds.beats_noise
        comment = (f"{best.strategy}: val_cross_entropy {best.value!r} at "
                   f"{format_params(best.params)}; "
                   + ("beats none beyond seed noise" if beats else
                      "not shown to beat none beyond seed noise"))
        head.append(f"read back with: regplug compare --config best.toml --strategies "
                    f"none,{tuned.name} {shlex.join(result.compare_args)}".rstrip())
        block = strategy_toml(tuned, comment=comment)
    else:
        setup = dataclasses.replace(result.baseline, name="doctor_setup",
                                    description=f"the setup diagnosed ({result.baseline.name})")
        head.append(f"no regularizer recommended ({verdict}): this is the setup diagnosed")
        head.append("read back with: regplug compare --config best.toml --strategies "
                    f"doctor_setup {shlex.join(result.compare_args)}".rstrip())
        block = strategy_toml(setup)
    return "\n".join(f"# {line}".rstrip() for line in head) + "\n\n" + block


def markdown(result: DoctorRun, *, command: str, model: str, figures: list[str]) -> str:
    """``diagnosis.md``: the command, the setting, the printed diagnosis and the figures."""
    lines = ["# regplug doctor", "", "```text", command, "```", "",
             f"- data: {result.splits.describe()}", f"- model: {model}",
             f"- training: {result.settings.describe()}, strategy {result.baseline.name}",
             f"- framework: {result.framework}", f"- time: {result.seconds:.1f} s", "",
             "## Diagnosis", "", "```text", result.text(), "```", ""]
    for name in figures:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _html(result: DoctorRun, *, command: str, model: str, figures: list[str]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>regplug doctor</title>",
             f"<style>{REPORT_STYLE}</style></head><body>",
             f"<h1>regplug doctor: {esc(result.diagnosis.verdict)}</h1>",
             f"<p><code>{esc(command)}</code></p><ul>",
             f"<li>data: {esc(result.splits.describe())}</li><li>model: {esc(model)}</li>",
             f"<li>training: {esc(result.settings.describe())}, strategy "
             f"{esc(result.baseline.name)}</li><li>framework: {esc(result.framework)}</li>",
             f"<li>time: {result.seconds:.1f} s</li></ul>",
             # long evidence lines wrap inside the page (no horizontal scroll at 1280 px)
             "<h2>Diagnosis</h2><pre style='white-space:pre-wrap;overflow-wrap:anywhere'>"
             f"{esc(result.text())}</pre>"]
    captions = {"curves.png": "The baseline's learning curves (training and validation "
                              "cross-entropy and accuracy); a dotted line where the gap opened.",
                "monitor.png": "LayerMonitor per epoch: one panel per quantity, one line per "
                               "parameter."}
    for name in figures:
        parts.append(f"<figure><img src='{esc(name)}' alt='{esc(name)}' style='max-width:100%'>"
                     f"<figcaption>{esc(captions.get(name, name))}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_all(out: str, result: DoctorRun, *, command: str, model: str) -> None:
    """Write everything into ``out`` through a staging folder (all or nothing)."""
    from ..experiment.output import StagedOutput
    from ..plugins.layer_monitor import monitor_series
    from . import plots

    with StagedOutput(out) as staged:
        folder: Path = staged.path
        figures = []
        if result.history:
            plots.plot_curves(result.history, folder / plots.CURVES_FIGURE,
                              onset=result.diagnosis.onset,
                              title=f"baseline {result.baseline.name}: "
                                    f"{result.diagnosis.verdict}")
            figures.append(plots.CURVES_FIGURE)
            series = monitor_series(result.history)
            if series:
                plots.plot_monitor(series, folder / plots.MONITOR_FIGURE)
                figures.append(plots.MONITOR_FIGURE)
        best = best_toml_text(result, command=command)
        (folder / "best.toml").write_text(best, encoding="utf-8")
        (folder / "diagnosis.md").write_text(
            markdown(result, command=command, model=model, figures=figures), encoding="utf-8")
        (folder / "report.html").write_text(
            _html(result, command=command, model=model, figures=figures), encoding="utf-8")
        search = result.search
        payload = {
            "format": "regplug-doctor/1", "command": command,
            "diagnosis": result.diagnosis.to_dict(), "history": result.history,
            "acc_train": result.acc_train, "acc_test": result.acc_test, "error": result.error,
            "search": None if search is None else {
                "strategies": search.strategies, "trials": search.trials, "rows": search.rows,
                "best": None if search.best is None else {
                    "strategy": search.best.strategy, "params": search.best.params,
                    "value": search.best.value}},
            "seed_test": None if result.seeds is None else {
                **dataclasses.asdict(result.seeds), "beats_noise": result.seeds.beats_noise},
            "data_curve": None if result.curve is None else {
                **dataclasses.asdict(result.curve), "gain": result.curve.gain,
                "noise": result.curve.noise, "climbing": result.curve.climbing},
            "seconds": round(result.seconds, 3), "summary": result.text(), "best_toml": best,
            "figures": figures}
        (folder / "results.json").write_text(json.dumps(_plain(payload), indent=1),
                                             encoding="utf-8")
        staged.commit()

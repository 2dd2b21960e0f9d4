"""`regplug compare`'s progress: a line per finished strategy in a log, a bar that fits on a
terminal of any width from 40 columns, and never a number cut short."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug.compare import Progress
from regplug.compare.progress import compose_line
from regplug.compare.results import StrategyResult

NUMBER = re.compile(r"\d+(?:\.\d+)?(?:/\d+|s)?")
LOGS = {"loss": 0.2134, "val_loss": 0.3017, "val_accuracy": 0.9524}


class Stream(io.StringIO):
    """A captured stream that says whether it is a terminal, and counts its flushes."""

    def __init__(self, *, tty: bool) -> None:
        super().__init__()
        self.tty, self.flushes = tty, 0

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushes += 1


def result(strategy: str = "l2", *, epochs: int = 30, stop: str | None = None,
           framework: str = "torch") -> StrategyResult:
    return StrategyResult(framework, strategy, "", 0.9944, 0.9536, 0.041, epochs, 0.0, 0.19,
                          3.14, stop_reason=stop)


def run(progress: Progress, runs: list[StrategyResult], *, epochs: int = 30) -> None:
    for r in runs:
        progress.start(r.framework, r.strategy, epochs=epochs)
        for epoch in range(r.epochs):
            progress.epoch(epoch, LOGS)
        progress.finish(r)


def drawn(text: str) -> list[str]:
    """Every state of every bar line: the text between carriage returns and newlines."""
    return [part.replace("\x1b[K", "") for line in text.split("\n")
            for part in line.split("\r") if part.replace("\x1b[K", "")]


def test_off_a_terminal_every_finished_strategy_writes_one_complete_line_at_once():
    stream = Stream(tty=False)
    progress = Progress(stream)
    progress.start("torch", "none", epochs=30)
    for epoch in range(30):
        progress.epoch(epoch, LOGS)
    assert stream.getvalue() == ""  # no bar redrawn into a log
    progress.finish(result("none"))
    flushed = stream.flushes
    assert flushed >= 1 and stream.getvalue().count("\n") == 1  # there before the next run

    run(progress, [result("early_stopping", epochs=16, stop="early_stopping: no improvement"),
                   result("decoupled_weight_decay", framework="keras")])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert lines[0].split() == ["torch", "none", "epochs", "30/30", "acc_train", "0.9944",
                                "acc_test", "0.9536", "3.1s"]
    assert lines[1].split() == ["torch", "early_stopping", "epochs", "16/30", "acc_train",
                                "0.9944", "acc_test", "0.9536", "stopped", "early", "3.1s"]
    assert lines[2].split()[:4] == ["keras", "decoupled_weight_decay", "epochs", "30/30"]


def test_quiet_writes_nothing_anywhere():
    for tty in (False, True):
        stream = Stream(tty=tty)
        progress = Progress(stream, enabled=False)
        run(progress, [result()])
        progress.close()
        assert stream.getvalue() == ""


def test_on_a_terminal_the_bar_is_redrawn_and_one_finished_line_stays_per_strategy():
    stream = Stream(tty=True)
    progress = Progress(stream, columns=120)
    run(progress, [result("none"), result("l2")], epochs=30)
    lines = stream.getvalue().split("\n")
    assert len(lines) == 3 and lines[2] == ""
    *updates, final = lines[1].split("\r")
    assert "l2" in updates[-1] and "30/30" in updates[-1] and "val_acc 0.9524" in updates[-1]
    assert "acc_test 0.9536" in final and "acc_train 0.9944" in final and "3.1s" in final

    progress.start("torch", "dropout", epochs=30)  # interrupted: close() ends its line
    progress.close()
    progress.close()
    assert stream.getvalue().endswith("0/30\x1b[K\n")


def check_fits(text: str, columns: int, full: str) -> list[str]:
    """Every drawn line is shorter than ``columns`` and shows only whole numbers of ``full``
    (the same progress drawn without a width limit)."""
    whole = set(NUMBER.findall(full))
    lines = drawn(text)
    for line in lines:
        assert len(line) < columns, (columns, line)
        for number in NUMBER.findall(line):
            assert number in whole, f"{number!r} cut in {line!r} ({columns} columns)"
    return lines


RUNS = [result("none"), result("decoupled_weight_decay"),
        result("early_stopping", epochs=16, stop="early_stopping: patience")]


@pytest.mark.parametrize("columns", [40, 80, 120])
def test_the_bar_fits_the_terminal_without_cutting_a_number(columns):
    full, stream = Stream(tty=True), Stream(tty=True)
    run(Progress(full, columns=10_000), RUNS)
    run(Progress(stream, columns=columns), RUNS)
    lines = check_fits(stream.getvalue(), columns, full.getvalue())
    finals = [line.split("\r")[-1] for line in stream.getvalue().split("\n") if line]
    assert len(finals) == len(RUNS)
    for line in lines:  # what matters most survives every width
        assert re.search(r"\b\d+/30\b", line)
        assert "loss" not in line or "val_acc 0.9524" in line
    for final in finals:
        assert "acc_test 0.9536" in final
    if columns >= 80:  # room for the bar and the validation numbers
        assert all("[" in line and "val_loss" in line for line in lines if "val_" in line)
    if columns >= 120:  # room for everything
        assert all("loss 0.2134" in line for line in lines if "val_" in line)
        assert all("acc_train 0.9944" in final for final in finals)


def test_the_terminal_width_is_asked_at_every_redraw(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    stream = Stream(tty=True)
    run(Progress(stream), RUNS[:2])
    full = Stream(tty=True)
    run(Progress(full, columns=10_000), RUNS[:2])
    check_fits(stream.getvalue(), 40, full.getvalue())


@settings(max_examples=200, deadline=None)
@given(columns=st.integers(40, 200),
       framework=st.sampled_from(["torch", "keras"]),
       strategy=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.+-]{0,39}", fullmatch=True),
       done=st.integers(0, 999), total=st.integers(1, 999),
       values=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=0, max_size=3))
def test_any_line_fits_any_width_from_40_and_keeps_whole_numbers(columns, framework, strategy,
                                                                 done, total, values):
    labels = ["loss", "val_loss", "val_acc"]
    parts = [(rank, f"{label} {v:.4f}") for rank, label, v in zip((6, 3, 1), labels, values)]
    count = f"{done}/{total}"
    line = compose_line(framework, strategy, count, parts, fraction=done / total,
                        columns=columns)
    full = compose_line(framework, strategy, count, parts, fraction=done / total,
                        columns=10_000)
    assert len(line) < columns
    assert count in line and line.startswith(framework + " ")
    if parts:
        assert min(parts)[1] in line  # the most important number is always there
    whole = NUMBER.findall(full)
    # the strategy's name is not a number, whole or shortened ("A00000" shown as "A000…")
    numbers = NUMBER.findall(re.sub(r"\S*…", "", line.replace(strategy, "")))
    assert all(n in whole for n in numbers)

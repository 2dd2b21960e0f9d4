"""A plain-text progress bar per strategy, on stderr, redrawn after every epoch.

Quiet where nobody watches: when the stream is not a terminal (a pipe, a CI log) or with
``--quiet``, it writes nothing; the table on stdout is the result.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Mapping
from typing import TextIO

__all__ = ["Progress"]

_BAR = 20
_NAME_WIDTH = 22  # the longest built-in strategy name
_SHOWN = (("loss", "loss"), ("val_loss", "val_loss"), ("val_accuracy", "val_acc"))


class Progress:
    """One line per strategy: ``torch  l2  [#########.......]  12/30  loss 0.21 ...``.

    :param stream: where to draw (default ``sys.stderr``).
    :param enabled: ``None`` draws only if ``stream`` is a terminal.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress(out, enabled=True, width=12)
    >>> p.start("torch", "l2", epochs=4)
    >>> p.epoch(1, {"loss": 0.5, "val_loss": 0.6})
    >>> print(out.getvalue().split("\\r")[-1].strip())
    torch  l2                     [######......] 2/4  loss 0.5000  val_loss 0.6000...
    >>> p.finish("acc_test 0.9600")
    >>> print(out.getvalue().split("\\r")[-1].strip())
    torch  l2                     [######......] 2/4  acc_test 0.9600  0.0s...
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None,
                 width: int = _BAR) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self._label = ""
        self._epochs = 0
        self._done = 0
        self._logs: dict[str, float] = {}
        self._started = 0.0
        self._open = False

    def start(self, framework: str, strategy: str, *, epochs: int) -> None:
        """A new strategy begins: a fresh line."""
        self._label = f"{framework:<6} {strategy:<{_NAME_WIDTH}}"
        self._epochs, self._done, self._logs = epochs, 0, {}
        self._started = time.perf_counter()
        self._draw(self._metrics())

    def epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Epoch ``epoch`` (from 0) ended with ``logs``."""
        self._done = epoch + 1
        self._logs = {k: float(v) for k, v in logs.items()}
        self._draw(self._metrics())

    def finish(self, summary: str = "") -> None:
        """The strategy is done: the bar with ``summary`` and the time, and a new line."""
        seconds = time.perf_counter() - self._started
        self._draw(f"  {summary}  {seconds:.1f}s" if summary else f"  {seconds:.1f}s", end="\n")

    def close(self) -> None:
        """End a line left open by a strategy that did not finish (an error, Ctrl-C), so the
        message that follows starts on a line of its own."""
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
        self._open = False

    def _metrics(self) -> str:
        return "".join(f"  {label} {self._logs[key]:.4f}" for key, label in _SHOWN
                       if key in self._logs and math.isfinite(self._logs[key]))

    def _draw(self, tail: str, end: str = "") -> None:
        if not self.enabled:
            return
        total = max(self._epochs, 1)
        filled = min(self.width, round(self.width * self._done / total))
        bar = "#" * filled + "." * (self.width - filled)
        count = f"{self._done:>{len(str(total))}}/{total}"
        line = f"{self._label} [{bar}] {count}{tail}"
        columns = shutil.get_terminal_size((100, 24)).columns
        if len(line) >= columns:  # a wrapped line could not be redrawn in place
            line = line[:max(columns - 2, 1)] + "…"
        self.stream.write(f"\r{line}\x1b[K{end}")
        self.stream.flush()
        self._open = not end

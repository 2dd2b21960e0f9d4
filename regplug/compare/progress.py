"""Progress of a comparison on stdout: a bar on a terminal, one line per strategy elsewhere.

On a terminal each strategy gets a bar, redrawn in place after every epoch and left behind
when the strategy is done; it never wraps and never cuts a number: when the terminal is
narrow, the less important parts go first (:func:`compose_line`). Where nobody watches the
line redrawn — a pipe, ``| tee``, a CI log, a file — there is no bar: each finished strategy
prints one complete line (framework, strategy, accuracies, epochs, seconds), so a log shows
how far the comparison got while it runs. ``--quiet`` prints neither.

Hand-written rather than rich's or tqdm's progress bars: neither prints the per-strategy
line that a log needs (tqdm writes its ``\\r`` redraws into a pipe too, rich's live display
stays silent there), and at a narrow width both cut or fold the text instead of dropping
whole parts in order; what is left is the ``\\r`` redraw below.

Docs: docs/compare.md
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .results import StrategyResult

__all__ = ["Progress", "compose_line"]

_BAR = 20       # the bar's width where there is room
_MIN_BAR = 8    # narrower than this a bar says nothing: it goes instead
_NAME_WIDTH = 22  # the longest built-in strategy name: names line up when there is room
#: The logs a bar shows, in this order, with their ranks (see :func:`compose_line`).
_SHOWN = ((6, "loss", "loss"), (3, "val_loss", "val_loss"), (1, "val_accuracy", "val_acc"))
#: Ranks of a line's parts; the highest rank goes first when the line does not fit.
_PAD, _BAR_RANK = 9, 5


def compose_line(framework: str, strategy: str, count: str, parts: Sequence[tuple[int, str]],
                 *, fraction: float | None, columns: int) -> str:
    """One progress line shorter than ``columns``, whole parts dropped, never a cut number.

    :param count: ``"12/30"``, always shown.
    :param parts: ``(rank, text)``: numbers with their labels (``"val_acc 0.9500"``); when the
        line is too long, parts go from the highest rank down — the names' alignment
        first (rank 9), then the bar (rank 5, after it has shrunk to 8 characters), in
        between the parts by their rank. Lowest-rank parts are never dropped; if even they do
        not fit, the strategy's name is shortened with ``…``.
    :param fraction: how much of the bar is filled (``None``: no bar).

    >>> parts = [(3, "val_loss 0.3000"), (1, "val_acc 0.9500")]
    >>> compose_line("torch", "l2", "12/30", parts, fraction=0.4, columns=100)
    'torch  l2                     [########............] 12/30  val_loss 0.3000  val_acc 0.9500'
    >>> compose_line("torch", "l2", "12/30", parts, fraction=0.4, columns=40)
    'torch l2 12/30  val_acc 0.9500'
    """
    budget = columns - 1  # a line filling the last column wraps on some terminals
    floor = min((r for r, _ in parts), default=0)  # the parts never dropped
    ranks = {r for r, _ in parts} | {_PAD} | ({_BAR_RANK} if fraction is not None else set())
    # each try keeps the parts ranked below ``cut``: everything first, then less and less
    for cut in [math.inf, *sorted((r for r in ranks if r > floor), reverse=True)]:
        line = _line(framework, strategy, count, [t for r, t in parts if r < cut],
                     fraction if cut > _BAR_RANK else None, pad=cut > _PAD, budget=budget)
        if line is not None:
            return line
    kept = [t for r, t in parts if r == floor]
    fixed = len(f"{framework}  {count}") + sum(len(t) + 2 for t in kept)
    room = max(budget - fixed, 2)
    short = strategy if len(strategy) <= room else strategy[:room - 1] + "…"
    return " ".join([framework, short, "  ".join([count, *kept])])


def _line(framework: str, strategy: str, count: str, parts: Sequence[str],
          fraction: float | None, *, pad: bool, budget: int) -> str | None:
    name = f"{framework:<6} {strategy:<{_NAME_WIDTH}}" if pad else f"{framework} {strategy}"
    tail = "  ".join([count, *parts])
    if fraction is None:
        line = f"{name} {tail}"
        return line if len(line) <= budget else None
    width = min(_BAR, budget - len(name) - len(tail) - 4)  # " [" + "] "
    if width < _MIN_BAR:
        return None
    filled = min(width, round(width * min(max(fraction, 0.0), 1.0)))
    return f"{name} [{'#' * filled}{'.' * (width - filled)}] {tail}"


class Progress:
    """Progress of every strategy of a comparison.

    :param stream: where to write (default ``sys.stdout``, beside the table).
    :param enabled: ``False`` writes nothing (``--quiet``).
    :param live: ``True`` redraws a bar in place after every epoch; ``False`` writes one line
        per finished strategy; ``None`` (default): a bar only if ``stream`` is a terminal.
    :param columns: the line width for the bar; ``None`` asks the terminal at every redraw
        (``COLUMNS`` overrides it), so a resized window is followed.

    >>> import io
    >>> from regplug.compare.results import StrategyResult
    >>> out = io.StringIO()  # not a terminal: one line per finished strategy
    >>> p = Progress(out)
    >>> p.start("torch", "l2", epochs=30)
    >>> p.epoch(0, {"loss": 0.5, "val_loss": 0.6})
    >>> p.finish(StrategyResult("torch", "l2", "", 0.9944, 0.9536, 0.041, 30, 0.0, 0.19, 3.14))
    >>> print(out.getvalue(), end="")
    torch  l2                      epochs 30/30  acc_train 0.9944  acc_test 0.9536  3.1s
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None,
                 live: bool | None = None, columns: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled is not False
        if live is None:
            isatty = getattr(self.stream, "isatty", None)
            live = bool(isatty and isatty())
        self.live = live
        self.columns = columns
        self._framework = self._strategy = ""
        self._epochs = 0
        self._done = 0
        self._seed: int | None = None
        self._run: tuple[int, int] | None = None
        self._logs: dict[str, float] = {}
        self._open = False

    def start(self, framework: str, strategy: str, *, epochs: int, seed: int | None = None,
              run: tuple[int, int] | None = None) -> None:
        """A new strategy begins (on a terminal: a fresh bar). With several seeds, ``seed``
        is this run's and ``run`` its place among all of them, ``(k, total)``: both are
        shown on its line (on a narrow terminal the seed stays, the run goes last)."""
        self._framework, self._strategy = framework, strategy
        self._epochs, self._done, self._logs = epochs, 0, {}
        self._seed, self._run = seed, run
        self._draw(self._metrics())

    def epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Epoch ``epoch`` (from 0) ended with ``logs``."""
        self._done = epoch + 1
        self._logs = {k: float(v) for k, v in logs.items()}
        self._draw(self._metrics())

    def finish(self, result: StrategyResult) -> None:
        """The strategy is done: its accuracies, epochs and seconds, and a new line."""
        parts = [*self._which(),
                 (3, f"acc_train {result.acc_train:.4f}"), (1, f"acc_test {result.acc_test:.4f}"),
                 *([(4, "stopped early")] if result.stop_reason else []),
                 (6, f"{result.seconds:.1f}s")]
        self._done = result.epochs
        if self.live:
            self._draw(parts, end="\n")
        elif self.enabled:
            count = f"epochs {result.epochs}/{self._epochs}"
            which = [t for _, t in parts[:len(self._which())]]
            rest = [t for _, t in parts[len(which):]]
            self.stream.write(f"{result.framework:<6} {result.strategy:<{_NAME_WIDTH}}  "
                              + "  ".join([*which, count, *rest]) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End a line left open by a strategy that did not finish (an error, Ctrl-C), so the
        message that follows starts on a line of its own."""
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
        self._open = False

    def _which(self) -> list[tuple[int, str]]:
        """``seed s`` (never dropped from a line) and ``run k/n`` (dropped last), with
        several seeds only."""
        parts = [] if self._seed is None else [(1, f"seed {self._seed}")]
        if self._run is not None:
            k, total = self._run
            parts.append((2, f"run {k:>{len(str(total))}}/{total}"))
        return parts

    def _metrics(self) -> list[tuple[int, str]]:
        return [*self._which(),
                *((rank, f"{label} {self._logs[key]:.4f}") for rank, key, label in _SHOWN
                  if key in self._logs and math.isfinite(self._logs[key]))]

    def _draw(self, parts: list[tuple[int, str]], end: str = "") -> None:
        if not (self.enabled and self.live):
            return
        total = max(self._epochs, 1)
        count = f"{self._done:>{len(str(total))}}/{total}"
        columns = self.columns or shutil.get_terminal_size((80, 24)).columns
        line = compose_line(self._framework, self._strategy, count, parts,
                            fraction=self._done / total, columns=columns)
        self.stream.write(f"\r{line}\x1b[K{end}")
        self.stream.flush()
        self._open = not end

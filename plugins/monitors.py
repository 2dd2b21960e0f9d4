"""Overfitting monitors: the generalization gap, and a guard against non-finite metrics.

Docs: docs/plugins/monitors.md
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from regplug import functional as F
from regplug.hookspecs import hookimpl
from regplug.plugin import Plugin
from regplug.run import Run
from regplug.validation import check_bool, check_int

log = logging.getLogger(__name__)

# Keras names accuracy after the metric the user compiled with; PyTorch users pick a name.
_ACCURACY_KEYS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy",
                  "binary_accuracy")


@dataclass(frozen=True)
class GapRecord:
    """One epoch of :class:`GeneralizationGap`: the numbers of the comparison notebook."""

    epoch: int
    loss: float | None
    val_loss: float | None
    gap: float | None          # val_loss − loss
    accuracy: float | None
    val_accuracy: float | None
    pct_diff: float | None     # 1 − val_accuracy / accuracy


class GeneralizationGap(Plugin):
    """Track train vs validation loss and accuracy every epoch; warn while the gap widens.

    Adds ``gap`` (``val_loss − loss``) and ``pct_diff`` (``1 − val_acc / train_acc``, the
    comparison notebook's measure) to the epoch's logs — so they appear in Keras' History and
    ``run.history`` — and keeps one :class:`GapRecord` per epoch in :attr:`records`. When the
    loss gap has been positive and grown for ``patience`` epochs in a row, it logs a warning
    (and, with ``stop=True``, votes to stop).

    :param patience: successive epochs of a widening gap that trigger the warning (``>= 1``).
    :param stop: also stop training at that point (default: only warn).
    :param loss, val_loss: log keys of the training and validation loss.
    :param accuracy, val_accuracy: log keys of the accuracies; ``None`` (default) looks for
        ``accuracy``, ``acc``, ``sparse_categorical_accuracy`` … and their ``val_`` twins.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> gap = GeneralizationGap(patience=2)
    >>> loop = NumpyLoop({"w": np.ones(1)}, [gap])
    >>> for tr, va in [(0.5, 0.6), (0.4, 0.6), (0.3, 0.7)]:
    ...     _ = loop.epoch_end({"loss": tr, "val_loss": va, "accuracy": 0.9, "val_accuracy": 0.8})
    >>> [round(r.gap, 2) for r in gap.records], round(gap.records[-1].pct_diff, 4), gap.widening
    ([0.1, 0.2, 0.4], 0.1111, 2)
    """

    #: The keys it adds to the epoch's logs (a plugin listed after it may monitor them).
    log_keys = ("gap", "pct_diff")

    def __init__(self, *, patience: int = 3, stop: bool = False, loss: str = "loss",
                 val_loss: str = "val_loss", accuracy: str | None = None,
                 val_accuracy: str | None = None) -> None:
        owner = type(self).__name__
        self.patience = check_int(owner, "patience", patience, low=1)
        self.stop = check_bool(owner, "stop", stop)
        for arg, value in (("loss", loss), ("val_loss", val_loss), ("accuracy", accuracy),
                           ("val_accuracy", val_accuracy)):
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{owner}: argument {arg!r} must be a log key, got {value!r}")
        self.keys = {"loss": loss, "val_loss": val_loss, "accuracy": accuracy,
                     "val_accuracy": val_accuracy}
        self.records: list[GapRecord] = []
        self.widening = 0
        self.warned_at: list[int] = []

    @property
    def monitor(self) -> str:
        """The validation-loss key (the adapters warn when it is not in the logs: without it
        there is no gap to track)."""
        return self.keys["val_loss"]  # type: ignore[return-value]

    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        if run.epoch == 0:  # a fresh run (a resumed one continues its records)
            self.records, self.widening, self.warned_at = [], 0, []

    @hookimpl
    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, float]) -> None:
        loss, val_loss = _get(logs, self.keys["loss"]), _get(logs, self.keys["val_loss"])
        acc_key = self.keys["accuracy"] or _first_present(logs, _ACCURACY_KEYS)
        val_key = self.keys["val_accuracy"] or (f"val_{acc_key}" if acc_key else None)
        acc, val_acc = _get(logs, acc_key), _get(logs, val_key)
        gap = val_loss - loss if loss is not None and val_loss is not None else None
        pct = F.pct_diff(acc, val_acc) if acc is not None and val_acc is not None else None
        previous = self.records[-1].gap if self.records else None
        self.records.append(GapRecord(epoch, loss, val_loss, gap, acc, val_acc, pct))
        if gap is not None:
            logs.setdefault("gap", gap)
        if pct is not None:
            logs.setdefault("pct_diff", pct)
        if gap is None or previous is None or not math.isfinite(gap):
            return
        # Only a positive gap (validation loss above training loss) that grows is overfitting;
        # with dropout the gap often starts negative and rising towards 0 is no warning sign.
        self.widening = self.widening + 1 if gap > previous and gap > 0 else 0
        if self.widening >= self.patience and self.widening % self.patience == 0:
            first = self.records[-1 - self.widening]
            message = (f"the generalization gap (val_loss − loss) widened for {self.widening} "
                       f"epochs in a row: {first.gap:.4g} at epoch {first.epoch + 1} → "
                       f"{gap:.4g} at epoch {epoch + 1}"
                       + (f"; pct_diff {pct:.3f}" if pct is not None else "")
                       + " — the model is overfitting")
            self.warned_at.append(epoch)
            log.warning("%s: %s", self.name, message)
            if self.stop:
                run.stop(message, source=self.name)

    def __repr__(self) -> str:
        return f"GeneralizationGap(patience={self.patience}, stop={self.stop})"

    def history(self) -> list[dict[str, Any]]:
        """The records as plain dicts (e.g. for a DataFrame or a JSON report)."""
        return [asdict(r) for r in self.records]

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.history(), "widening": self.widening,
                "warned_at": list(self.warned_at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [GapRecord(**r) for r in state["records"]]
        self.widening = int(state["widening"])
        self.warned_at = [int(e) for e in state.get("warned_at", [])]


class NonFiniteGuard(Plugin):
    """Stop training with a reason as soon as a monitored metric is NaN or infinite.

    Checked at the end of every epoch on the epoch's logs (no per-step host reads). Combine
    with :class:`EarlyStopping` (which never takes a non-finite epoch as its best) to get the
    last good weights back.

    :param monitors: log keys to check (default ``("loss", "val_loss")``; keys an epoch did
        not log are skipped), or ``"all"`` for every value in the logs.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> guard = NonFiniteGuard()
    >>> loop = NumpyLoop({"w": np.ones(1)}, [guard])
    >>> loop.epoch_end({"loss": 0.3}), loop.epoch_end({"loss": float("nan")})
    (False, True)
    >>> guard.stop_reason
    'loss is nan at epoch 2'
    """

    def __init__(self, monitors: str | Iterable[str] = ("loss", "val_loss")) -> None:
        if monitors == "all":
            self.monitors: tuple[str, ...] | None = None
        else:
            names = (monitors,) if isinstance(monitors, str) else (
                tuple(monitors) if isinstance(monitors, Iterable) else ())
            if not names or not all(isinstance(m, str) and m for m in names):
                raise ValueError(f"{type(self).__name__}: argument 'monitors' must be 'all' or "
                                 f"log keys such as ('loss', 'val_loss'), got {monitors!r}")
            self.monitors = names
        self._explicit = monitors != ("loss", "val_loss")
        self.stop_reason: str | None = None

    @property
    def monitor(self) -> str | tuple[str, ...] | None:
        """What must be in the logs (the adapters warn, listing the keys there are, when it
        is not): every key given explicitly; by default only ``loss`` (``val_loss`` is
        checked when present, as there may be no validation)."""
        if self.monitors is None:
            return None
        return self.monitors if self._explicit else self.monitors[0]

    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self.stop_reason = None

    @hookimpl
    def on_epoch_end(self, run: Run, epoch: int, logs: Mapping[str, float]) -> None:
        keys = list(logs) if self.monitors is None else [k for k in self.monitors if k in logs]
        bad = [k for k in keys if not math.isfinite(float(logs[k]))]
        if bad:
            values = ", ".join(f"{k} is {float(logs[k])}" for k in bad)
            self.stop_reason = f"{values} at epoch {epoch + 1}"
            run.stop(self.stop_reason, source=self.name)

    def __repr__(self) -> str:
        shown = "'all'" if self.monitors is None else repr(self.monitors)
        return f"NonFiniteGuard(monitors={shown})"

    def state_dict(self) -> dict[str, Any]:
        return {"stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stop_reason = state.get("stop_reason")


def _get(logs: Mapping[str, float], key: str | None) -> float | None:
    if key is None or key not in logs:
        return None
    return float(logs[key])


def _first_present(logs: Mapping[str, float], keys: Iterable[str]) -> str | None:
    return next((k for k in keys if k in logs), None)

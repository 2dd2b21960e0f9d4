"""The doctor's verdict as a pure function of a training history: ``regplug.diagnose``.

Bug, unstable, overfitting, underfitting or healthy, each sentence with the numbers behind
it, and what to try next. No framework, no I/O: a history from any loop will do. The
thresholds are the fields of :class:`Thresholds`; docs/doctor.md says where each comes from.

Docs: docs/doctor.md
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Thresholds", "BatchCheck", "Diagnosis", "diagnose", "VERDICTS",
           "REGULARIZING_PLUGINS"]

#: Every verdict, most urgent first (the first that applies is the verdict).
VERDICTS = ("bug", "unstable", "overfitting", "underfitting", "healthy")

#: Plugin registry names that regularize (an underfitting run that has one: weaken it).
REGULARIZING_PLUGINS = frozenset({"l1", "l2", "elastic_net", "decoupled_weight_decay",
                                  "proximal_l1", "max_norm", "dropout_schedule"})

_ACCURACY = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy")


@dataclass(frozen=True)
class Thresholds:
    """The numbers each verdict is decided on (docs/doctor.md: why these).

    :param batch_fall: a loop whose one-batch loss ends above this share of its start did
        not learn at all: a bug (below ``1/10`` passes :class:`OverfitBatch`; between, the
        model learns, slowly: capacity, judged by the curves).
    :param oscillation: the share of epochs whose training loss rose by more than
        ``rise`` (relative) over the previous epoch that makes a run unstable.
    :param rise: see ``oscillation``.
    :param update_ratio: an epoch whose updates moved a layer's weights by more than this
        share of their norm at its start, the norm growing, is unstable (exploding).
    :param chance_margin: validation accuracy within this of chance (``1/classes``) on
        every epoch while the training loss falls: the labels do not match the inputs.
    :param dead_units: a layer with at least this share of dead units (at the end).
    :param gl: Prechelt's generalization loss ``GL = 100·(E_va/E_opt − 1)`` at the end above
        this (his GL₅ stopping criterion) is overfitting, when the training loss fell by
        more than ``still_falling`` (relative) since the best validation epoch.
    :param still_falling: see ``gl``.
    :param pct_diff: ``1 − val_acc/train_acc`` at the end above this is overfitting too.
    :param underfit_accuracy: the final training accuracy below which a run whose validation
        loss did not turn up underfits (classification with clean labels); an accuracy gap
        counts as overfitting only above it.
    :param no_gap: validation accuracy more than this above training accuracy is read as
        noisy training labels (or dropout on while training accuracy is taken), not as
        underfitting.
    """

    batch_fall: float = 0.99
    oscillation: float = 0.25
    rise: float = 0.1
    update_ratio: float = 2.0
    chance_margin: float = 0.1
    dead_units: float = 0.5
    gl: float = 5.0
    still_falling: float = 0.05
    pct_diff: float = 0.05
    underfit_accuracy: float = 0.9
    no_gap: float = 0.05


@dataclass(frozen=True)
class BatchCheck:
    """What overfitting one batch showed (:class:`regplug.plugins.OverfitBatch`'s verdict)."""

    initial: float
    final: float
    passed: bool
    steps: int = 100
    hints: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class Diagnosis:
    """The verdict, the evidence (sentences with their numbers) and what to try."""

    verdict: str
    evidence: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    #: For overfitting: the strategies to search, most suggested first.
    strategies: list[str] = field(default_factory=list)
    #: For overfitting: the epoch (from 1) after which validation loss rose again.
    onset: int | None = None
    numbers: dict[str, float | None] = field(default_factory=dict)

    def text(self) -> str:
        """The printed diagnosis: the verdict, then each sentence, then what to do."""
        lines = [f"verdict: {self.verdict}"]
        lines += [f"  - {s}" for s in self.evidence]
        if self.recommendations:
            lines.append("what to try:")
            lines += [f"  - {s}" for s in self.recommendations]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _series(history: Mapping[str, Sequence[float]], *keys: str) -> list[float]:
    for key in keys:
        values = history.get(key)
        if values:
            return [float(v) for v in values]
    return []


def _layers(history: Mapping[str, Sequence[float]], quantity: str) -> dict[str, list[float]]:
    prefix = quantity + "/"
    return {k[len(prefix):]: [float(v) for v in vs] for k, vs in history.items()
            if k.startswith(prefix) and vs}


def diagnose(history: Mapping[str, Sequence[float]], *, batch: BatchCheck | None = None,
             n_classes: int | None = None, regularizers: Sequence[str] = (),
             thresholds: Thresholds | None = None) -> Diagnosis:
    """The verdict on one training run from its per-epoch history.

    :param history: per-epoch lists: ``loss`` (or ``cross_entropy``, preferred: the data
        term alone), ``val_loss`` (or ``val_cross_entropy``), ``accuracy`` and
        ``val_accuracy`` where measured, and :class:`~regplug.plugins.LayerMonitor`'s
        ``quantity/parameter`` keys where it ran.
    :param batch: the overfit-one-batch check, where one ran.
    :param n_classes: the number of classes (for the chance-level check).
    :param regularizers: the registry names of the regularizing plugins the run had (and
        ``"dropout"`` for a dropout layer): an underfitting run is told to weaken them.

    >>> d = diagnose({"loss": [1.0, 0.5, 0.3, 0.2, 0.1, 0.05],
    ...               "val_loss": [1.0, 0.6, 0.5, 0.55, 0.65, 0.8],
    ...               "accuracy": [0.7, 0.85, 0.9, 0.95, 0.98, 0.99],
    ...               "val_accuracy": [0.7, 0.82, 0.85, 0.85, 0.84, 0.83]})
    >>> d.verdict, d.onset, d.strategies
    ('overfitting', 3, ['l2', 'dropout'])
    >>> diagnose({"loss": [2.0, 1.9, 1.85], "val_loss": [2.0, 1.9, 1.86],
    ...           "accuracy": [0.3, 0.35, 0.36], "val_accuracy": [0.3, 0.35, 0.36]}).verdict
    'underfitting'
    """
    t = thresholds or Thresholds()
    loss = _series(history, "cross_entropy", "loss")
    val = _series(history, "val_cross_entropy", "val_loss")
    acc = _series(history, *_ACCURACY)
    val_acc = _series(history, *(f"val_{k}" for k in _ACCURACY))
    n = len(loss)
    d = Diagnosis("healthy")
    numbers = d.numbers
    numbers["epochs"] = n
    ev = d.evidence

    if (n == 0 and batch is None) or (n > 0 and not (val or val_acc)):
        # a history named in another loop's words, or without validation, cannot be judged
        # (no gap can be seen): say which keys it has and which are read, not a verdict
        missing, wanted = (("training loss", "'loss' or 'cross_entropy'") if n == 0 else
                           ("validation series", "'val_loss', 'val_cross_entropy' or "
                            "'val_accuracy' (Keras: fit(..., validation_data=...))"))
        raise ValueError(f"diagnose: the history has no {missing}: it needs {wanted} per "
                         f"epoch; its keys: {', '.join(sorted(history)) or 'none'}")

    # unstable: non-finite values, oscillating loss, exploding updates
    bad = [k for k in ("loss", "val_loss", "cross_entropy", "val_cross_entropy")
           if any(not math.isfinite(float(v)) for v in history.get(k, ()))]
    if bad:
        first = min(next(i for i, v in enumerate(history[k]) if not math.isfinite(float(v)))
                    for k in bad)
        d.verdict = "unstable"
        ev.append(f"{', '.join(bad)} became non-finite at epoch {first + 1}")
    else:
        rises = sum(1 for a, b in itertools.pairwise(loss) if b > a * (1 + t.rise))
        share = rises / max(n - 1, 1)
        numbers["loss_rises"] = share
        if n >= 3 and share >= t.oscillation:
            d.verdict = "unstable"
            ev.append(f"the training loss rose by more than {t.rise:.0%} in {rises} of "
                      f"{n - 1} epochs (oscillating: {share:.0%} >= {t.oscillation:.0%})")
        elif n >= 2 and loss[-1] > loss[0] * (1 + t.rise):
            d.verdict = "unstable"
            ev.append(f"the training loss ended higher than it started: {loss[0]:.4g} -> "
                      f"{loss[-1]:.4g} (diverging)")
        # exploding: an epoch moved a layer by more than its own norm, and the norm grew
        norms = _layers(history, "weight_norm")
        worst: tuple[str, int, float] | None = None
        for name, ratio in _layers(history, "update_ratio").items():
            grown = norms.get(name, [])
            for i, r in enumerate(ratio):
                if 0 < i < len(grown) and not grown[i] > max(grown[i - 1], grown[0]):
                    continue  # a layer a strong penalty shrinks is not exploding
                if worst is None or r > worst[2]:
                    worst = (name, i, r)
        if worst is not None:
            numbers["max_update_ratio"] = worst[2]
            if worst[2] > t.update_ratio:
                d.verdict = "unstable"
                ev.append(f"epoch {worst[1] + 1}'s updates moved {worst[0]} by {worst[2]:.3g} "
                          f"times its norm (> {t.update_ratio:g}: exploding updates)")
    if d.verdict == "unstable":
        d.recommendations += [
            "lower the learning rate (by 3 to 10 times) or add a warm-up",
            "clip the gradient norm; check the inputs' scale (standardize them)"]
        _monitor_evidence(history, d, t)
        return d

    # (a) one batch: a loop that cannot drive one batch's loss down has a bug
    if batch is not None:
        numbers["batch_initial"], numbers["batch_final"] = batch.initial, batch.final
        fall = batch.final / batch.initial if batch.initial and math.isfinite(batch.final) \
            else math.inf
        if batch.error is not None or not math.isfinite(batch.final) or fall > t.batch_fall:
            d.verdict = "bug"
            ev.append(f"one batch could not be overfitted: loss {batch.initial:.4g} -> "
                      f"{batch.final:.4g} in {batch.steps} steps (needed <= "
                      f"{batch.initial * t.batch_fall:.4g} to count as learning)"
                      + (f"; training raised: {batch.error}" if batch.error else ""))
            ev.extend(batch.hints)
            d.recommendations += [
                "check that the loss depends on the trainable parameters (nothing detached or "
                "frozen), that the labels match the inputs and the outputs (logits vs "
                "probabilities), and that the learning rate is not 0",
                "then rerun the doctor; regularization cannot help a model that does not learn"]
            _monitor_evidence(history, d, t)
            return d
        if not batch.passed:
            ev.append(f"one batch was only partly overfitted: loss {batch.initial:.4g} -> "
                      f"{batch.final:.4g} in {batch.steps} steps: the model learns, slowly "
                      "(too little capacity or too small a learning rate?)")
        else:
            ev.append(f"one batch was overfitted: loss {batch.initial:.4g} -> "
                      f"{batch.final:.4g} in {batch.steps} steps (the loop can learn)")

    # bug: the model learns nothing that generalizes, or most units are dead
    if n_classes and val_acc:
        chance = 1.0 / n_classes
        numbers["chance"] = chance
        best_val = max(val_acc)
        fits = loss[-1] < loss[0] * 0.98 or bool(acc and acc[-1] > chance + t.chance_margin)
        if best_val <= chance + t.chance_margin and fits:
            d.verdict = "bug"
            ev.append(f"validation accuracy never rose above chance: at best {best_val:.3f} "
                      f"against {chance:.3f} for {n_classes} classes, while the training "
                      f"loss fell {loss[0]:.4g} -> {loss[-1]:.4g}"
                      + (f" (training accuracy {acc[-1]:.3f})" if acc else "")
                      + ": the model fits labels that the inputs do not predict")
            d.recommendations.append("check that the labels are aligned with the inputs "
                                     "(a shuffle of one without the other, a wrong column)")
    dead = {name: vs[-1] for name, vs in _layers(history, "dead_units").items()}
    if dead:
        name, share = max(dead.items(), key=lambda kv: kv[1])
        numbers["max_dead_units"] = share
        if share >= t.dead_units:
            d.verdict = "bug"
            ev.append(f"{share:.0%} of the units of {name} are dead: their weights did not "
                      "move in the last epoch (a ReLU that is 0 on every row)")
            d.recommendations.append("dead ReLUs: lower the learning rate, initialise biases "
                                     "at 0 or slightly positive, or use LeakyReLU")
    if d.verdict == "bug":
        _monitor_evidence(history, d, t)
        return d

    # overfitting: the validation loss turned up (Prechelt's GL), or the accuracies parted
    best = min(range(n), key=lambda i: val[i]) if val else None
    gl = 100.0 * (val[-1] / val[best] - 1.0) if best is not None and val[best] > 0 else 0.0
    pct = 1.0 - val_acc[-1] / acc[-1] if acc and val_acc and acc[-1] > 0 else None
    numbers["gl"], numbers["pct_diff"] = gl, pct
    numbers["train_accuracy"] = acc[-1] if acc else None
    numbers["val_accuracy"] = val_acc[-1] if val_acc else None
    # GL alone is not enough: the training loss must have gone on falling meanwhile
    gap_open = best is not None and gl > t.gl and loss[-1] < loss[best] * (1 - t.still_falling)
    # an accuracy gap is overfitting only where training itself went well (else: bias first)
    acc_gap = pct is not None and pct > t.pct_diff and acc[-1] >= t.underfit_accuracy
    if gap_open or acc_gap:
        d.verdict = "overfitting"
        d.onset = (best + 1) if best is not None else None
        if gap_open and best is not None:
            ev.append(f"the validation loss was lowest at epoch {best + 1} ({val[best]:.4g}) "
                      f"and ended at {val[-1]:.4g}: GL = {gl:.1f} > {t.gl:g} (Prechelt) while "
                      f"the training loss fell to {loss[-1]:.4g}")
        if pct is not None:
            ev.append(f"training accuracy {acc[-1]:.3f} against validation {val_acc[-1]:.3f}: "
                      f"pct_diff {pct:.3f}" + (f" > {t.pct_diff:g}" if acc_gap else ""))
        norms = _layers(history, "weight_norm")
        growth = max((vs[-1] / vs[0] for vs in norms.values() if vs[0] > 0), default=None)
        numbers["weight_growth"] = growth
        suggested = ["l2", "dropout"]
        if growth is not None and growth > 1.5:
            ev.append(f"the weight norms grew up to {growth:.2f}x over training: a weight "
                      "penalty pulls them back")
        if best is not None and d.onset is not None and d.onset <= max(1, n // 3):
            suggested.append("early_stopping")
            ev.append(f"the gap opened early (epoch {d.onset} of {n})")
        d.strategies = suggested
        d.recommendations.append(
            "regularize: search " + ", ".join(suggested) + " (the doctor's step (c)), and "
            "keep the weights of the best validation epoch (early stopping)")
        _monitor_evidence(history, d, t)
        return d

    # underfitting: training itself is poor and validation follows it (no gap)
    noisy = bool(acc and val_acc and val_acc[-1] - acc[-1] > t.no_gap)
    if acc and acc[-1] < t.underfit_accuracy and not noisy:
        d.verdict = "underfitting"
        ev.append(f"training accuracy is only {acc[-1]:.3f} (< {t.underfit_accuracy:g}), "
                  f"validation {val_acc[-1]:.3f}"
                  + (f" (pct_diff {pct:.3f})" if pct is not None else "")
                  + f", and the validation loss did not turn up (GL {gl:.1f} <= {t.gl:g}): "
                    "the model does not fit even the training rows")
        still = len(loss) >= 3 and loss[-1] < loss[-3] * 0.97
        if still:
            ev.append(f"the training loss was still falling at the end ({loss[-3]:.4g} -> "
                      f"{loss[-1]:.4g} over the last 2 epochs)")
        if regularizers:
            d.recommendations.append("less regularization: weaken or remove "
                                     + ", ".join(regularizers))
        d.recommendations += ["more capacity: wider or deeper layers",
                              "a larger learning rate" + (" or more epochs" if still else "")]
        _monitor_evidence(history, d, t)
        return d
    if noisy:
        ev.append(f"validation accuracy {val_acc[-1]:.3f} is well above training accuracy "
                  f"{acc[-1]:.3f} (pct_diff {pct:.3f}): noisy training labels, or dropout "
                  "active while training accuracy is measured")

    ev.append("no sign of trouble: "
              + (f"training accuracy {acc[-1]:.3f}, validation {val_acc[-1]:.3f}"
                 if acc and val_acc else f"training loss {loss[-1]:.4g}")
              + (f", pct_diff {pct:.3f} <= {t.pct_diff:g}" if pct is not None else "")
              + (f", GL {gl:.1f} <= {t.gl:g}" if val else ""))
    _monitor_evidence(history, d, t)
    return d


def _monitor_evidence(history: Mapping[str, Sequence[float]], d: Diagnosis,
                      t: Thresholds) -> None:
    """Add what LayerMonitor saw (gradient norms, dead units) to a verdict's evidence."""
    grads = _layers(history, "grad_norm")
    if grads:
        last = {k: vs[-1] for k, vs in grads.items()}
        low, high = min(last.items(), key=lambda kv: kv[1]), max(last.items(),
                                                                  key=lambda kv: kv[1])
        d.numbers["min_grad_norm"] = low[1]
        if d.verdict == "bug" and all(v == 0 for v in last.values()):
            d.evidence.append("no parameter got a gradient (all gradient norms are 0)")
        elif d.verdict in ("bug", "unstable"):
            d.evidence.append(f"gradient norms at the last epoch's first step: {low[1]:.3g} "
                              f"({low[0]}) to {high[1]:.3g} ({high[0]})")
    dead = {k: vs[-1] for k, vs in _layers(history, "dead_units").items()}
    if dead:
        name, share = max(dead.items(), key=lambda kv: kv[1])
        d.numbers["max_dead_units"] = share
        stated = any("are dead" in s for s in d.evidence)
        if not stated and (share > 0.1 or (d.verdict == "bug" and share > 0)):
            d.evidence.append(f"{share:.0%} of the units of {name} are dead")

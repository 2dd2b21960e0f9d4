"""Lightning benchmark: a training epoch with ``Regularize([L2])`` next to the same L2 written
into ``training_step``.

``lightning_l2``
    An MLP trained on CPU by a Lightning ``Trainer``, one epoch at a time: regplug's callback
    (the fused ``grad += 2λθ`` in ``on_before_optimizer_step``) against the penalty added to
    the loss in ``training_step`` (autograd), and an unregularized epoch for scale. The two
    regularized fits are first checked: regplug's against the same fused update written by
    hand (``grad.add_(w, alpha=2λ)`` before the step, untimed), which must give the same
    weights; the autograd penalty's distance is only reported, as it is no exact reference
    (after a few dozen steps a ReLU at a rounding tie can flip: 6e-5 after 48 steps at two
    threads, while every step's update agrees to 1e-8). Each candidate keeps its
    own ``Trainer``; a round runs one more epoch of each (``fit`` continued with
    ``max_epochs + 1``) in an order rotated from round to round, timing only the epoch
    (``on_train_epoch_start`` to ``on_train_epoch_end``), not the fit's setup.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regplug.adapters.lightning import Regularize
from regplug.plugins import L2

from . import Result, interleave, result
from .bench_torch import environment, paired_ratio, same_weights, set_threads

__all__ = ["run", "set_threads", "environment"]

_L2, _LR, _MOMENTUM, _BATCH = 5e-4, 0.05, 0.9, 256


class _MLP(L.LightningModule):
    def __init__(self, penalty: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                                 nn.ReLU(), nn.Linear(256, 10))
        self.l2 = penalty
        self.weights = [m.weight for m in self.net if isinstance(m, nn.Linear)]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.l2:
            loss = loss + self.l2 * sum(w.pow(2).sum() for w in self.weights)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=_LR, momentum=_MOMENTUM)


class _FusedL2ByHand(L.Callback):
    """``grad += 2λ·w`` for the weights before each optimizer step: regplug's fused L2,
    written by hand (the exact reference of the equivalence check)."""

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: Any) -> None:
        assert isinstance(pl_module, _MLP)
        with torch.no_grad():
            for w in pl_module.weights:
                if w.grad is not None:
                    w.grad.add_(w, alpha=2 * _L2)


class _EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class _Candidate:
    """A model and its trainer, trained one epoch further at each call."""

    def __init__(self, model: _MLP, callbacks: list[L.Callback], loader: DataLoader) -> None:
        self.model, self.loader, self.timer = model, loader, _EpochTimer()
        self.trainer = L.Trainer(max_epochs=0, accelerator="cpu", devices=1, logger=False,
                                 enable_progress_bar=False, enable_checkpointing=False,
                                 enable_model_summary=False, callbacks=[*callbacks, self.timer])

    def epoch(self) -> float:
        self.trainer.fit_loop.max_epochs = self.trainer.current_epoch + 1
        self.trainer.fit(self.model, self.loader)
        return self.timer.seconds[-1]


def _loader(batches: int) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batches * _BATCH, 784, generator=generator)
    y = torch.randint(0, 10, (batches * _BATCH,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=_BATCH, shuffle=False)


def bench_lightning_l2(quick: bool) -> list[Result]:
    """A Lightning epoch: Regularize([L2]) vs L2 in training_step vs no regularization."""
    loader = _loader(4 if quick else 24)
    candidates = {
        "regplug": _Candidate(_MLP(), [Regularize([L2(_L2)])], loader),
        "hand-written": _Candidate(_MLP(penalty=_L2), [], loader),
        "no regularization": _Candidate(_MLP(), [], loader),
    }
    reference = _Candidate(_MLP(), [_FusedL2ByHand()], loader)  # checked against, not timed
    warmup, rounds = (1, 3) if quick else (2, 25)
    for candidate in [*candidates.values(), reference]:
        for _ in range(warmup):
            candidate.epoch()
    max_diff = same_weights(candidates["regplug"].model, reference.model,
                            after=f"{warmup} epochs", other="grad.add_(w, alpha=2λ) by hand")
    autograd_diff = max(float((a - b).detach().abs().max()) for a, b in zip(
        candidates["regplug"].model.parameters(), candidates["hand-written"].model.parameters(),
        strict=True))
    samples = interleave({name: c.epoch for name, c in candidates.items()}, rounds)
    median = {k: statistics.median(v) for k, v in samples.items()}
    notes = [
        f"MLP 784-256-256-10, {len(loader)} batches of {_BATCH} an epoch, SGD(lr={_LR}, "
        f"momentum={_MOMENTUM}), Trainer(accelerator='cpu'); L2({_L2}) on the weights",
        f"same weights as grad.add_(w, alpha=2λ) by hand after {warmup} epochs: max |diff| "
        f"{max_diff:.1e} (the penalty in training_step, autograd: {autograd_diff:.1e}, not "
        f"checked: a ReLU at a rounding tie may flip)",
        f"medians of {rounds} interleaved rounds of one epoch (fit setup not timed); no "
        f"regularization: {median['no regularization'] * 1e3:.3g} ms an epoch",
    ]
    return [result("Lightning epoch, Regularize([L2]) (CPU)", regplug_s=median["regplug"],
                   baselines_s={"hand-written": median["hand-written"],
                                "no regularization": median["no regularization"]},
                   ratio=paired_ratio(samples["regplug"], samples["hand-written"]),
                   ratio_of="regplug / hand-written", at_most=1.02, notes=notes)]


def run(quick: bool) -> list[Result]:
    """Every Lightning benchmark; ``quick`` is a smoke run (few, small epochs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        return bench_lightning_l2(quick)

"""Tiny LightningModules and trainers for tests/lightning/ (not a test module).

Every model is built from a seed, every loader is unshuffled, so two fits that do the same
math end with the same weights; the hand-written references write the regularizer into the
LightningModule (``penalty`` into ``training_step``, ``after_step`` after the optimizer step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


def data(n: int = 64, batch: int = 16, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = (x[:, :4].sum(dim=1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def weights_penalty(l2: float) -> Callable[[nn.Module], torch.Tensor]:
    """``l2·Σθ²`` over the Linear weights (L2's default selection), as a user writes it."""
    def penalty(module: nn.Module) -> torch.Tensor:
        return l2 * sum(m.weight.pow(2).sum() for m in module.modules()
                        if isinstance(m, nn.Linear))  # type: ignore[return-value]
    return penalty


class Tiny(L.LightningModule):
    """An MLP classifier 8-16-2.

    :param optimizer: ``lambda params -> optimizer`` (default SGD, lr 0.1, momentum 0.9).
    :param penalty: added to ``training_step``'s loss (the hand-written reference).
    :param after_step: run with autograd off right after each optimizer step.
    :param val_losses: what ``validation_step`` logs as ``val_loss`` in each epoch (scripted
        metrics for early stopping); default: the real validation loss.
    """

    def __init__(self, *, seed: int = 0, optimizer: Callable[[Any], Any] | None = None,
                 penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                 after_step: Callable[[nn.Module], None] | None = None,
                 val_losses: Sequence[float] | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.make_optimizer = optimizer or (lambda ps: torch.optim.SGD(ps, lr=0.1,
                                                                       momentum=0.9))
        self.penalty = penalty
        self.after_step = after_step
        self.val_losses = val_losses
        self.snapshots: list[dict[str, torch.Tensor]] = []  # weights at each epoch's end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.penalty is not None:
            loss = loss + self.penalty(self)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.val_losses is not None:
            loss = torch.tensor(self.val_losses[self.current_epoch])
        self.log("val_loss", loss)

    def configure_optimizers(self) -> Any:
        return self.make_optimizer(self.parameters())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step(self)

    def on_train_epoch_end(self) -> None:
        self.snapshots.append({k: v.detach().clone() for k, v in self.state_dict().items()})


class Manual(Tiny):
    """Manual optimization; ``two`` optimizers (one per layer) step one after the other."""

    def __init__(self, *, two: bool = False, raw_backward: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.two = two
        self.raw_backward = raw_backward

    def configure_optimizers(self):
        if self.two:
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.1),
                    torch.optim.SGD(self.net[2].parameters(), lr=0.05)]
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for i, opt in enumerate(optimizers):
            opt.zero_grad()
            loss = F.cross_entropy(self(x), y)
            if self.penalty is not None:
                loss = loss + self.penalty(self.net[2 * i] if self.two else self)
            if self.raw_backward:
                loss.backward()
            else:
                self.manual_backward(loss)
            opt.step()
            if self.after_step is not None:
                with torch.no_grad():
                    self.after_step(self.net[2 * i] if self.two else self)


def trainer(epochs: int = 2, callbacks: Sequence[Any] = (), **kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer: no logger, progress bar, summary, sanity check or checkpoints."""
    options: dict[str, Any] = dict(max_epochs=epochs, accelerator="cpu", devices=1,
                                   enable_progress_bar=False, logger=False,
                                   enable_checkpointing=False, enable_model_summary=False,
                                   num_sanity_val_steps=0, deterministic=True)
    options.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **options)


def fit(model: L.LightningModule, epochs: int = 2, callbacks: Sequence[Any] = (),
        validate: bool = False, **kwargs: Any) -> L.Trainer:
    t = trainer(epochs, callbacks, **kwargs)
    t.fit(model, data(), data(seed=1) if validate else None)
    return t


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(),
                                                          strict=True))

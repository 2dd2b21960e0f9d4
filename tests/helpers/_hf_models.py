"""Tiny Hugging Face models, data and Trainers for tests/transformers/ (not a test module).

Every model is a one-layer BERT built from its config with a seed and without dropout, every
data set lives in memory and is read in order, so two trainings that do the same math end
with the same weights. The hand-written references write the regularizer into the Trainer
(``penalty`` added in ``compute_loss``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

torch.set_num_threads(1)


class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``n`` rows of 8 random token ids; the label: whether the first token is >= 25."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 50, (n, 8), generator=generator)
        self.labels = (self.ids[:, 0] >= 25).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


class PenaltyTrainer(Trainer):
    """The reference: ``penalty(model)`` added to the loss in ``compute_loss``."""

    def __init__(self, *args: Any, penalty: Callable[[nn.Module], torch.Tensor],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.penalty = penalty

    def compute_loss(self, model: nn.Module, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
        if return_outputs:
            return loss[0] + self.penalty(model), loss[1]
        return loss + self.penalty(model)


class ScriptedEval(TrainerCallback):
    """Overwrite each evaluation's ``eval_loss`` with the next scripted value (callbacks
    listed before :class:`Regularize` change ``metrics`` before it reads them)."""

    def __init__(self, losses: Sequence[float]) -> None:
        self.losses = list(losses)
        self.snapshots: list[dict[str, torch.Tensor]] = []  # the weights at each evaluation

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                    model: Any = None, **kwargs: Any) -> None:
        metrics["eval_loss"] = self.losses[len(self.snapshots)]
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def arguments(**overrides: Any) -> TrainingArguments:
    """Quiet CPU arguments: no saving, no logging, no reporting, data in order."""
    options: dict[str, Any] = dict(
        output_dir=tempfile.mkdtemp(prefix="regplug-hf-"), report_to=[], save_strategy="no",
        logging_strategy="no", disable_tqdm=True, use_cpu=True, num_train_epochs=2,
        per_device_train_batch_size=8, learning_rate=1e-2, seed=0, data_seed=0,
        dataloader_num_workers=0)
    options.update(overrides)
    return TrainingArguments(**options)


def train(model: nn.Module | None = None, *, trainer_class: type[Trainer] = Trainer,
          callbacks: Sequence[TrainerCallback] = (), eval_dataset: Any = None,
          train_dataset: Any = None, trainer_kwargs: dict[str, Any] | None = None,
          **overrides: Any) -> Trainer:
    """Train ``model`` (default: :func:`bert`) on :class:`Tokens`; the Trainer."""
    trainer = trainer_class(model=model if model is not None else bert(),
                            args=arguments(**overrides),
                            train_dataset=train_dataset if train_dataset is not None
                            else Tokens(), eval_dataset=eval_dataset,
                            callbacks=list(callbacks), **(trainer_kwargs or {}))
    trainer.train()
    return trainer


def l2_of(names: Sequence[str], l2: float) -> Callable[[nn.Module], torch.Tensor]:
    """``l2·Σθ²`` over the named parameters, as a user writes it."""
    def penalty(model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        return l2 * sum(params[n].pow(2).sum() for n in names)  # type: ignore[return-value]
    return penalty


def names_of_kinds(model: nn.Module, *kinds: str) -> list[str]:
    """The names of ``model``'s parameters of the given regplug kinds."""
    from regplug.adapters.torch import discover_parameters

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return [p.name for p in discover_parameters(model, optimizer) if p.kind in kinds]


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((x - y).detach().abs().max())
               for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

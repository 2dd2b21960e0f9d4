"""Hugging Face benchmark: a ``Trainer`` epoch with ``Regularize([DecoupledWeightDecay])``
next to ``Trainer(weight_decay=...)``.

``transformers_decoupled_weight_decay``
    A small BERT classifier (built from its config, nothing downloaded) trained on CPU by the
    Trainer with its default AdamW, one epoch at a time: regplug's callback
    (``DecoupledWeightDecay`` on the parameters the Trainer decays: weights and embeddings,
    the optimizer's own weight decay 0) against the Trainer's own ``weight_decay``, and an
    epoch without decay for scale. The two decayed trainings are first checked to end with the
    same weights. Each candidate keeps its own ``Trainer``; a round runs one more epoch of
    each (``train()`` again, from the weights so far) in an order rotated from round to round,
    timing only the epoch (``on_epoch_begin`` to ``on_epoch_end``), not the setup of
    ``train()``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from regplug.adapters.transformers import Regularize
from regplug.plugins import DecoupledWeightDecay

from . import Result, interleave, result
from .bench_torch import environment, paired_ratio, same_weights, set_threads

__all__ = ["run", "set_threads", "environment"]

_WD, _LR, _BATCH, _SEQ, _VOCAB = 0.01, 1e-4, 16, 64, 1000
_KINDS = ["weight", "embedding"]  # what Trainer(weight_decay=...) decays


class _Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, _VOCAB, (n, _SEQ), generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=_VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=_SEQ, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


class _EpochTimer(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class _Candidate:
    """A model and its Trainer, trained one epoch further at each call."""

    def __init__(self, weight_decay: float, callbacks: list[TrainerCallback],
                 data: _Tokens) -> None:
        self.timer = _EpochTimer()
        args = TrainingArguments(
            output_dir=tempfile.mkdtemp(prefix="regplug-bench-hf-"), report_to=[],
            save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
            num_train_epochs=1, per_device_train_batch_size=_BATCH, learning_rate=_LR,
            weight_decay=weight_decay, lr_scheduler_type="constant", seed=0, data_seed=0,
            dataloader_num_workers=0)
        self.trainer = Trainer(model=_model(), args=args, train_dataset=data,
                               callbacks=[*callbacks, self.timer])
        # disable_tqdm puts a PrinterCallback in its place, which prints each train()'s
        # metrics dict: 60 lines of it in the benchmark run's output
        self.trainer.remove_callback(PrinterCallback)

    def epoch(self) -> float:
        self.trainer.train()
        return self.timer.seconds[-1]


def bench_decoupled_weight_decay(quick: bool) -> list[Result]:
    """A Trainer epoch: Regularize([DecoupledWeightDecay]) vs Trainer(weight_decay=...)."""
    data = _Tokens(_BATCH * (4 if quick else 16))
    candidates = {
        "regplug": _Candidate(0.0, [Regularize([DecoupledWeightDecay(_WD, kinds=_KINDS)])],
                              data),
        "Trainer(weight_decay)": _Candidate(_WD, [], data),
        "no decay": _Candidate(0.0, [], data),
    }
    warmup, rounds = (1, 3) if quick else (2, 21)
    for candidate in candidates.values():
        for _ in range(warmup):
            candidate.epoch()
    max_diff = same_weights(candidates["regplug"].trainer.model,
                            candidates["Trainer(weight_decay)"].trainer.model,
                            after=f"{warmup} epochs", other="the Trainer's weight_decay")
    samples = interleave({name: c.epoch for name, c in candidates.items()}, rounds)
    median = {k: statistics.median(v) for k, v in samples.items()}
    optim = getattr(candidates["regplug"].trainer.args.optim, "value", "?")
    notes = [
        f"BERT 2 layers, hidden 128, sequences of {_SEQ} tokens, {len(data) // _BATCH} batches "
        f"of {_BATCH} an epoch; Trainer(use_cpu=True, optim={str(optim)!r}, lr={_LR}); decay "
        f"{_WD} on weights and embeddings (the Trainer's selection)",
        f"same weights after {warmup} epochs of each: max |diff| {max_diff:.1e}",
        f"medians of {rounds} interleaved rounds of one epoch (train() setup not timed); no "
        f"decay: {median['no decay'] * 1e3:.3g} ms an epoch",
    ]
    return [result("HF Trainer epoch, Regularize([DecoupledWeightDecay]) (CPU)",
                   regplug_s=median["regplug"],
                   baselines_s={"Trainer(weight_decay)": median["Trainer(weight_decay)"],
                                "no decay": median["no decay"]},
                   ratio=paired_ratio(samples["regplug"], samples["Trainer(weight_decay)"]),
                   ratio_of="regplug / Trainer(weight_decay)", at_most=1.02, notes=notes)]


def run(quick: bool) -> list[Result]:
    """Every Hugging Face Trainer benchmark; ``quick`` is a smoke run (few, small epochs)."""
    return bench_decoupled_weight_decay(quick)

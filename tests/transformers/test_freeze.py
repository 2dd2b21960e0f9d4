"""Freeze in the Hugging Face callback (the Trainer has no freezing of its own): frozen
weights bit for bit, unfreezing equals ``requires_grad_`` by hand at that epoch."""

from __future__ import annotations

import torch
from _hf_models import bert, max_diff, train
from transformers import TrainerCallback

from regplug.adapters.transformers import Regularize
from regplug.plugins import Freeze


class ByHand(TrainerCallback):
    """The reference: the embeddings' requires_grad switched by hand (after the Trainer made
    its optimizer over every parameter, as regplug's on_train_begin does)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.bert.embeddings.requires_grad_(False)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        model.bert.embeddings.requires_grad_(state.epoch >= 1)


class Snapshots(TrainerCallback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.epochs.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_frozen_then_exactly_as_unfrozen_by_hand():
    model = bert()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    snaps = Snapshots()
    train(model, callbacks=[Regularize([Freeze(1, include="bert.embeddings.*")]), snaps],
          num_train_epochs=3, weight_decay=0.1)
    table = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(snaps.epochs[0][table], start[table])
    assert not torch.equal(snaps.epochs[1][table], start[table])
    assert not torch.equal(snaps.epochs[0]["classifier.weight"], start["classifier.weight"])
    reference = bert()
    train(reference, callbacks=[ByHand()], num_train_epochs=3, weight_decay=0.1)
    assert max_diff(model, reference) == 0.0
    assert all(p.requires_grad for p in model.parameters())

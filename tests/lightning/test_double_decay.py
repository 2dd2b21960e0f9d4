"""The Lightning callback warns, as attach does, when DecoupledWeightDecay decays parameters
the module's optimizer decays too (its weight_decay > 0): they would decay twice."""

from __future__ import annotations

import warnings

import pytest
import torch
from _lightning_models import Tiny, fit

from regplug import RegplugWarning
from regplug.adapters.lightning import Regularize
from regplug.plugins import DecoupledWeightDecay


def test_adamw_with_its_own_weight_decay_warns_once_at_train_start():
    model = Tiny(optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05))
    with pytest.warns(RegplugWarning) as caught:
        fit(model, epochs=1, callbacks=[Regularize([DecoupledWeightDecay(0.01)])])
    messages = [str(w.message) for w in caught if "decay twice" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("Regularize: DecoupledWeightDecay(weight_decay=0.01) decays ")
    assert "AdamW decays too (its weight_decay=0.05)" in messages[0]


def test_adam_without_weight_decay_trains_without_the_warning():
    model = Tiny(optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegplugWarning)
        fit(model, epochs=1, callbacks=[Regularize([DecoupledWeightDecay(0.01)])])

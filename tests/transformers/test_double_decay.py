"""The Hugging Face callback warns, as attach does, when DecoupledWeightDecay decays parameters
the Trainer's AdamW decays too (TrainingArguments.weight_decay > 0): they would decay twice."""

from __future__ import annotations

import warnings

import pytest
from _hf_models import train

from regplug import RegplugWarning
from regplug.adapters.transformers import Regularize
from regplug.plugins import DecoupledWeightDecay


def test_the_trainers_own_weight_decay_with_the_plugin_warns_once_at_train_begin():
    with pytest.warns(RegplugWarning) as caught:
        train(callbacks=[Regularize([DecoupledWeightDecay(0.01)])], weight_decay=0.1,
              num_train_epochs=1)
    messages = [str(w.message) for w in caught if "decay twice" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("Regularize: DecoupledWeightDecay(weight_decay=0.01) decays ")
    assert "decays too (its weight_decay=0.1)" in messages[0]


def test_the_trainers_default_weight_decay_of_0_trains_without_the_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegplugWarning)
        train(callbacks=[Regularize([DecoupledWeightDecay(0.01)])], num_train_epochs=1)

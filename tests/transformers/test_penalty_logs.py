"""What ``l2_penalty`` is with the Hugging Face Trainer: the penalty at the weights of the
evaluation that ends a regplug epoch (evaluated once there), as in a PyTorch loop; Keras
logs the mean over the epoch's steps instead (docs/plugins/penalties.md)."""

from __future__ import annotations

import pytest
from _hf_models import Tokens, bert, l2_of, names_of_kinds, train
from transformers import TrainerCallback

from regplug.adapters.transformers import Regularize
from regplug.plugins import L2

STRENGTH = 1e-3


class PenaltyAtEvaluation(TrainerCallback):
    """The penalty at the weights of each evaluation (listed before Regularize)."""

    def __init__(self, names: list[str]) -> None:
        self.penalty = l2_of(names, STRENGTH)
        self.values: list[float] = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.values.append(float(self.penalty(model).double()))


def test_l2_penalty_is_the_value_at_each_evaluations_weights():
    model = bert()
    probe = PenaltyAtEvaluation(names_of_kinds(model, "weight"))
    reg = Regularize([L2(STRENGTH)])
    train(model, callbacks=[probe, reg], eval_dataset=Tokens(16, seed=1),
          eval_strategy="epoch")
    assert len(probe.values) == 2
    assert reg.history["l2_penalty"] == pytest.approx(probe.values, rel=1e-5)
    assert probe.values[0] != pytest.approx(probe.values[1], rel=1e-5)  # the weights moved

"""LayerMonitor in the Hugging Face Trainer: one measurement per evaluation (a regplug
epoch), beside the Trainer's own ``grad_norm``."""

from __future__ import annotations

import math

import pytest
from _hf_models import Tokens, train

from regplug.adapters.transformers import Regularize
from regplug.plugins import LayerMonitor


def test_each_evaluation_logs_the_monitors_numbers():
    monitor = LayerMonitor(include="*classifier*")
    reg = Regularize([monitor])
    trainer = train(callbacks=[reg], eval_dataset=Tokens(16, seed=1), eval_strategy="epoch")
    h = reg.history
    keys = [k for k in h if k.startswith("weight_norm/")]
    assert keys == ["weight_norm/classifier.weight"]
    assert len(h["weight_norm/classifier.weight"]) == 2
    assert len(h["grad_norm/classifier.weight"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in h["update_ratio/classifier.weight"])
    end = trainer.model.classifier.weight.detach()
    assert h["weight_norm/classifier.weight"][-1] == pytest.approx(float(end.norm()), rel=1e-6)
    assert len(monitor.records) == 2

"""LayerwiseLR in the Hugging Face Trainer equals the optimizer built with per-layer groups.

The recipe users write by hand (transformers #10140: subclass ``create_optimizer``): one
parameter group per layer at lr·γ^(L−d). Here the reference hands that optimizer to the
Trainer, which clips (max_grad_norm) and schedules (linear decay) both runs alike.
"""

from __future__ import annotations

import torch
from _hf_models import Tokens, bert, max_diff, train

from regplug.adapters.transformers import Regularize
from regplug.plugins import LayerwiseLR

GAMMA = 0.6
LR = 1e-3


def adamw(params):
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.01)


def groups_by_hand(model):
    """BERT: embeddings at depth 0, encoder.layer.0 at 1, pooler and classifier at 2."""
    named = list(model.named_parameters())
    embed = [p for n, p in named if n.startswith("bert.embeddings.")]
    layer0 = [p for n, p in named if n.startswith("bert.encoder.layer.0.")]
    top = [p for n, p in named if n.startswith(("bert.pooler.", "classifier."))]
    assert len(embed) + len(layer0) + len(top) == len(named)
    return [{"params": embed, "lr": LR * GAMMA ** 2}, {"params": layer0, "lr": LR * GAMMA},
            {"params": top, "lr": LR}]


def test_trainer_equals_per_layer_param_groups_over_100_steps():
    data = Tokens(n=400)  # batches of 8, 2 epochs: 100 updates
    model = bert()
    plugin = LayerwiseLR(GAMMA)
    ours = train(model, callbacks=[reg := Regularize([plugin])], train_dataset=data,
                 trainer_kwargs={"optimizers": (adamw(model.parameters()), None)})
    reference_model = bert()
    reference = train(reference_model, train_dataset=data,
                      trainer_kwargs={"optimizers": (adamw(groups_by_hand(reference_model)),
                                                     None)})
    assert reg.run.step == 100
    assert plugin.factors["bert.embeddings.word_embeddings.weight"] == GAMMA ** 2
    assert plugin.factors["bert.encoder.layer.0.output.dense.weight"] == GAMMA
    assert "classifier.weight" not in plugin.factors and "bert.pooler.dense.weight" not in (
        plugin.factors)
    assert max_diff(ours.model, reference.model) < 1e-5  # float32 rounding (2.5e-6 seen)
    plain_model = bert()
    plain = train(plain_model, train_dataset=data,
                  trainer_kwargs={"optimizers": (adamw(plain_model.parameters()), None)})
    assert max_diff(plain.model, reference.model) > 1e-3  # the per-layer rates mattered

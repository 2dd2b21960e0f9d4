"""LayerwiseLR in the Lightning Trainer equals per-layer parameter groups built by hand."""

from __future__ import annotations

import pytest
import torch
from _lightning_models import Tiny, data, max_diff, trainer

from regplug.adapters.lightning import Regularize
from regplug.plugins import LayerwiseLR

GAMMA = 0.5
LR = 1e-2


def by_layer(make):
    """``make(groups)`` with Tiny's first Linear (depth 0) at lr·γ and the second at lr."""
    def build(params):
        ps = list(params)  # net.0.weight, net.0.bias, net.2.weight, net.2.bias
        return make([{"params": ps[:2], "lr": LR * GAMMA}, {"params": ps[2:], "lr": LR}])
    return build


def fit100(model, callbacks=(), **kwargs):
    # 400 rows in batches of 16 (25 a epoch), accumulated over 2 (13 updates a epoch; the
    # last is one batch), for 8 epochs: 104 updates
    t = trainer(8, callbacks, **kwargs)
    t.fit(model, data(n=400))
    return t


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.05),
    lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, weight_decay=1e-3),
], ids=["AdamW", "SGD-momentum-wd"])
def test_trainer_with_clipping_and_accumulation_equals_per_layer_groups(make):
    reg = Regularize([plugin := LayerwiseLR(GAMMA)])
    ours = Tiny(optimizer=make)
    fit100(ours, [reg], gradient_clip_val=0.5, accumulate_grad_batches=2)
    reference = Tiny(optimizer=by_layer(make))
    fit100(reference, gradient_clip_val=0.5, accumulate_grad_batches=2)
    assert plugin.factors == {"net.0.weight": GAMMA, "net.0.bias": GAMMA}
    assert reg.run.step == 104
    assert max_diff(ours, reference) < 2e-6
    plain = Tiny(optimizer=make)
    fit100(plain, gradient_clip_val=0.5, accumulate_grad_batches=2)
    assert max_diff(plain, reference) > 1e-4  # the per-layer rates made a difference

"""L2SP in Lightning: the callback's weights equal the same penalty written into
``training_step`` (fused and through autograd), and a Lightning checkpoint resumes with the
first θ₀, bit for bit."""

from __future__ import annotations

import pytest
import torch
from _lightning_models import Tiny, data, fit, max_diff, trainer

from regplug.adapters.lightning import Regularize
from regplug.plugins import L2SP

ALPHA, BETA = 0.5, 0.05


def l2sp_by_hand(start: Tiny):
    """``alpha/2·‖θ−θ₀‖²`` on the first layer's weight, ``beta/2·‖θ‖²`` on the head's."""
    theta0 = start.net[0].weight.detach().clone()

    def penalty(module):
        return (ALPHA / 2 * (module.net[0].weight - theta0).square().sum()
                + BETA / 2 * module.net[2].weight.square().sum())
    return penalty


@pytest.mark.parametrize("fused", [True, False])
def test_l2sp_equals_the_penalty_written_into_training_step(fused):
    ours, reg = Tiny(), Regularize([L2SP(ALPHA, BETA, new="net.2.*")], fused=fused)
    fit(ours, epochs=3, callbacks=[reg])
    written = Tiny(penalty=l2sp_by_hand(Tiny()))
    fit(written, epochs=3)
    assert max_diff(ours, written) < 1e-6
    plain = Tiny()
    fit(plain, epochs=3)
    assert max_diff(plain, written) > 1e-4  # the penalty made a difference


def test_resume_from_a_lightning_checkpoint_keeps_the_first_start_point(tmp_path):
    whole = Tiny()
    trainer(4, [Regularize([L2SP(ALPHA)])]).fit(whole, data())
    first = Tiny()
    t = trainer(2, [Regularize([L2SP(ALPHA)])])
    t.fit(first, data())
    t.save_checkpoint(tmp_path / "two.ckpt")
    resumed, again = Tiny(seed=3), L2SP(ALPHA)
    trainer(4, [Regularize([again])]).fit(resumed, data(), ckpt_path=tmp_path / "two.ckpt")
    assert max_diff(resumed, whole) == 0.0
    start = Tiny().net[0].weight.detach()
    assert torch.equal(torch.as_tensor(again.anchors()["net.0.weight"]), start)


def test_decoupled_l2sp_under_plain_sgd_equals_the_penalty():
    def sgd(params):
        return torch.optim.SGD(params, lr=0.1)

    ours = Tiny(optimizer=sgd)
    fit(ours, epochs=3, callbacks=[Regularize([L2SP(ALPHA, BETA, new="net.2.*",
                                                    decoupled=True)])])
    written = Tiny(optimizer=sgd, penalty=l2sp_by_hand(Tiny()))
    fit(written, epochs=3)
    assert max_diff(ours, written) < 1e-6

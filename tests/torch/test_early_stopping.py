"""EarlyStopping in a PyTorch loop: exact restore (weights and buffers), resume, devices."""

from __future__ import annotations

import io

import pytest
import torch
from _torch_models import batches, make_model, snapshot
from torch import nn

from regplug.adapters.torch import attach
from regplug.plugins import L2, EarlyStopping

DATA = batches(4, seed=3)
VAL = batches(2, seed=4, size=64)


def val_loss(model: nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        loss = sum(nn.functional.cross_entropy(model(x), y) for x, y in VAL) / len(VAL)
    model.train()
    return float(loss)


def train(model, opt, reg, epochs, *, start=0, noise=None, per_epoch=None):
    """The supported loop; ``noise[e]`` is added to the validation loss of epoch ``e`` so a
    test can put the best epoch where it wants. Returns the epochs run."""
    for epoch in range(start, epochs):
        for x, y in DATA:
            opt.zero_grad()
            loss = reg.loss(nn.functional.cross_entropy(model(x), y))
            loss.backward()
            opt.step()
        if per_epoch is not None:
            per_epoch(epoch)
        if reg.epoch_end({"val_loss": val_loss(model) + (noise or {}).get(epoch, 0.0)}):
            return epoch + 1
    return epochs


def test_restores_weights_and_batchnorm_buffers_of_the_best_epoch_bit_for_bit():
    model = make_model(norm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = {}
    stopper = EarlyStopping(patience=2)
    with attach(model, opt, [L2(1e-3), stopper]) as reg:
        ran = train(model, opt, reg, 20, noise={2: -10.0},
                    per_epoch=lambda e: seen.__setitem__(e, snapshot(model)))
    assert ran == 5 and stopper.best_epoch == 2 and stopper.restored_epoch == 2
    assert "patience exhausted at epoch 5" in reg.stop_requests[0].reason
    restored = model.state_dict()
    assert any("running_mean" in k for k in restored)
    for name, value in seen[2].items():
        assert torch.equal(restored[name], value), name
    assert not torch.equal(seen[4]["0.weight"], seen[2]["0.weight"])


def test_restores_the_best_epoch_also_when_training_runs_to_the_last_epoch():
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = {}
    stopper = EarlyStopping(patience=50)
    with attach(model, opt, [stopper]) as reg:
        ran = train(model, opt, reg, 6, noise={3: -10.0},
                    per_epoch=lambda e: seen.__setitem__(e, snapshot(model)))
    assert ran == 6 and not reg.stop_requests and stopper.stop_reason is None
    for name, value in seen[3].items():
        assert torch.equal(model.state_dict()[name], value), name


def test_keeps_one_best_copy_and_copies_into_it_at_every_improvement():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stopper = EarlyStopping(patience=50)
    pointers = set()
    with attach(model, opt, [stopper]) as reg:
        train(model, opt, reg, 6, noise={e: -e for e in range(6)},  # improves every epoch
              per_epoch=None)
        pointers.add(stopper._best_weights["0.weight"].data_ptr())
        for epoch in range(6, 9):  # improves again: same storage
            reg.epoch_end({"val_loss": -100.0 - epoch})
            pointers.add(stopper._best_weights["0.weight"].data_ptr())
    assert len(pointers) == 1 and stopper.best_epoch == 8


@pytest.mark.parametrize("where", ["device", "host"])
def test_best_copy_on_device_or_host(where):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = make_model(norm=True).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stopper = EarlyStopping(patience=1, best_weights_on=where)
    expected = {}
    with attach(model, opt, [stopper]) as reg:
        reg.epoch_end({"val_loss": 0.5})
        expected = snapshot(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        reg.epoch_end({"val_loss": 0.9})
        copy_device = stopper._best_weights["0.weight"].device.type
    assert copy_device == ("cpu" if where == "host" else device)
    for name, value in expected.items():
        assert torch.equal(model.state_dict()[name], value), name


def run_with_checkpoint(interrupt_at: int | None, epochs: int = 30):
    """Train with early stopping; optionally stop after ``interrupt_at`` epochs, save a
    checkpoint through torch.save, and continue in a fresh model/optimizer/plugin."""
    model = make_model(seed=5, norm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    noise = {e: 0.02 * ((e * 7) % 5) for e in range(epochs)}  # a bumpy validation curve
    torch.manual_seed(0)
    stopper = EarlyStopping(patience=4, min_delta=1e-3)
    reg = attach(model, opt, [L2(1e-3), stopper])
    if interrupt_at is None:
        ran = train(model, opt, reg, epochs, noise=noise)
        reg.close()
        return ran, stopper, model
    ran = train(model, opt, reg, interrupt_at, noise=noise)
    assert ran == interrupt_at, "the interruption must come before the stop"
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "reg": reg.state_dict()}, buffer)
    reg.close()  # the process ends here (restoring best weights is not a checkpoint step)
    buffer.seek(0)
    checkpoint = torch.load(buffer)  # weights_only=True by default: plain tensors only

    model = make_model(seed=99, norm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    stopper = EarlyStopping(patience=4, min_delta=1e-3)
    reg = attach(model, opt, [L2(1e-3), stopper])
    reg.load_state_dict(checkpoint["reg"])
    ran = train(model, opt, reg, epochs, start=reg.run.epoch, noise=noise)
    reg.close()
    return ran, stopper, model


def test_a_resumed_run_stops_at_the_same_epoch_with_the_same_final_weights():
    ran, stopper, model = run_with_checkpoint(None)
    assert ran < 30, "the scenario must stop early"
    interrupt = stopper.best_epoch + 2  # after the best epoch: the best copy must survive
    assert interrupt < ran
    ran2, stopper2, model2 = run_with_checkpoint(interrupt)
    assert ran2 == ran and stopper2.stopped_epoch == stopper.stopped_epoch
    assert stopper2.best_epoch == stopper.best_epoch and stopper2.best == stopper.best
    assert stopper2.stop_reason == stopper.stop_reason
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_holds_the_best_weights_as_tensors():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with attach(model, opt, [EarlyStopping()]) as reg:
        reg.epoch_end({"val_loss": 0.3})
        state = reg.state_dict()
    best = state["plugins"][0]["state"]["best_weights"]
    assert all(isinstance(t, torch.Tensor) for t in best.values())
    assert set(best) == set(model.state_dict())


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_changes():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with attach(model, opt, [EarlyStopping()]) as reg:
        reg.epoch_end({"val_loss": 0.3})
        state = reg.state_dict()
    other = make_model(norm=True)
    opt = torch.optim.SGD(other.parameters(), lr=0.05)
    stopper = EarlyStopping()
    with attach(other, opt, [stopper]) as reg:
        with pytest.raises(ValueError, match="missing .*running_mean"):
            reg.load_state_dict(state)
        assert stopper.best is None


def test_leaving_the_with_block_by_an_exception_keeps_the_weights_the_error_left():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stopper = EarlyStopping(patience=5)
    with pytest.raises(KeyboardInterrupt), attach(model, opt, [stopper]) as reg:
        reg.epoch_end({"val_loss": 0.1})
        with torch.no_grad():
            model[0].weight.fill_(3.0)
        raise KeyboardInterrupt
    assert torch.all(model[0].weight == 3.0) and stopper.restored_epoch is None
    assert isinstance(reg.run.exception, KeyboardInterrupt)

"""OptunaPruning in a plain PyTorch loop: the documented objective, a pruned run that leaves
model and optimizer as torch's own, and a checkpoint resumed in a new attachment."""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from _torch_models import batches, make_model, snapshot
from torch import nn

import regplug
from regplug.adapters.torch import attach
from regplug.plugins import L2, EarlyStopping, OptunaPruning

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DOC = Path(__file__).resolve().parents[2] / "docs" / "tuning-in-your-loop.md"
DATA = batches(4, seed=3)
SCRIPTED = [1.0, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]  # val_loss per epoch: best at epoch 1
PRUNED = optuna.trial.TrialState.PRUNED


def prune_at(step: int) -> optuna.pruners.BasePruner:
    """Optuna's ThresholdPruner pruning every trial at ``step``: every value is above
    ``upper=-inf``, and none is judged during the ``step`` warm-up steps."""
    return optuna.pruners.ThresholdPruner(upper=-math.inf, n_warmup_steps=step)


class EveryBatch(regplug.Plugin):
    """Acts at batch begin, so attach() also installs a forward pre-hook on the model."""

    def __init__(self) -> None:
        self.batches = 0

    @regplug.hookimpl
    def on_batch_begin(self, run, step):
        self.batches += 1


def doc_block(title: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(f"# {title}\n")]
    return block


def train(model, opt, plugins, val_losses, *, reg_state=None, start=0, per_epoch=None):
    """The README's loop, with scripted validation losses (``val_losses[epoch]``) from epoch
    ``start``; returns (epochs run, the closed attachment)."""
    ran = 0
    with attach(model, opt, plugins) as reg:
        if reg_state is not None:
            reg.load_state_dict(reg_state)
        for epoch in range(start, len(val_losses)):
            for x, y in DATA:
                opt.zero_grad()
                loss = reg.loss(nn.functional.cross_entropy(model(x), y))
                loss.backward()
                opt.step()
            ran += 1
            if per_epoch is not None:
                per_epoch(epoch)
            if reg.epoch_end({"val_loss": val_losses[epoch]}):
                break
    return ran, reg


def test_the_documented_objective_runs_a_study_and_is_pruned_at_the_pruners_epoch(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = doc_block("PyTorch loop").replace("n_trials=20", "n_trials=3")
    namespace: dict[str, object] = {"__name__": "__doc__"}
    exec(compile(code, str(DOC), "exec"), namespace)
    study = namespace["study"]
    assert len(study.trials) == 3
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, PRUNED}
    for frozen in study.trials:  # pruned ones stopped early; the others reported all 20
        if frozen.state == PRUNED:
            assert frozen.last_step < 19
        else:
            assert sorted(frozen.intermediate_values) == list(range(20))
    study = optuna.create_study(pruner=prune_at(2))
    study.optimize(namespace["objective"], n_trials=1)  # the doc's objective, pruned at 2
    (frozen,) = study.trials
    assert frozen.state == PRUNED and sorted(frozen.intermediate_values) == [0, 1, 2]


def test_a_pruned_run_stops_after_that_epoch_and_leaves_model_and_optimizer_as_torchs_own():
    trial = optuna.create_study(pruner=prune_at(2)).ask()
    model = make_model(norm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    stopper, pruning, every = EarlyStopping(patience=10), OptunaPruning(trial, "val_loss"), \
        EveryBatch()
    seen = {}
    ran, reg = train(model, opt, [L2(1e-3), every, stopper, pruning], SCRIPTED,
                     per_epoch=lambda e: seen.__setitem__(e, snapshot(model)))
    assert ran == 3 and pruning.pruned_epoch == 2 and every.batches == 3 * len(DATA)
    assert reg.history["val_loss"] == SCRIPTED[:3]
    assert [r.source for r in reg.stop_requests] == ["optuna_pruning"]
    assert trial.study.trials[0].intermediate_values == dict(enumerate(SCRIPTED[:3]))
    with pytest.raises(optuna.TrialPruned, match=r"at epoch 3 \(step 2\): val_loss = 0.7$"):
        pruning.raise_if_pruned()
    # EarlyStopping listed with it restored epoch 1's weights and buffers, not the last ones
    assert stopper.restored_epoch == 1
    for name, value in seen[1].items():
        assert torch.equal(model.state_dict()[name], value), name
    assert not torch.equal(seen[2]["0.weight"], seen[1]["0.weight"])

    # No hook, wrapper or mark of regplug is left on the optimizer or the model ...
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert "zero_grad" not in vars(opt) and not hasattr(opt, "_regplug_attached")
    assert not model._forward_pre_hooks
    # ... so a plain step from here equals torch's own on a twin that never met regplug.
    twin = make_model(norm=True)
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # its own momentum buffers
    for m, o in ((model, opt), (twin, twin_opt)):
        for x, y in DATA[:2]:
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    assert every.batches == 3 * len(DATA)  # the plugin saw none of those steps


def test_a_run_resumed_from_a_torch_checkpoint_reports_no_epoch_twice():
    study = optuna.create_study(pruner=prune_at(3))
    trial = study.ask()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = OptunaPruning(trial, monitor="val_loss")
    ran, reg = train(model, opt, [first], SCRIPTED[:2])
    assert ran == 2 and not first.pruned
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # weights_only=True: the plugin's state is plain values
    # The job died during epoch 1 (from 0) and resumes from epoch 0's end, while the
    # plugin's state (saved later, say) already holds epoch 1's report.
    state["epoch"], state["history"]["val_loss"] = 1, state["history"]["val_loss"][:1]
    resumed = OptunaPruning(trial, monitor="val_loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns about a step reported twice
        ran, reg = train(model, opt, [resumed], [1.0, 0.45, 0.4, 0.35, 0.3], reg_state=state,
                         start=1)
    assert ran == 3 and resumed.pruned_epoch == 3
    assert reg.history["val_loss"] == [1.0, 0.45, 0.4, 0.35]
    # The first value of epoch 1 stands; the repeated epoch's 0.45 was not reported.
    assert study.trials[0].intermediate_values == {0: 1.0, 1: 0.5, 2: 0.4, 3: 0.35}
    assert resumed.reported == study.trials[0].intermediate_values
    with pytest.raises(optuna.TrialPruned):  # as an objective ends (else a warning at exit)
        resumed.raise_if_pruned()

"""Hugging Face checkpoints carry regplug's state: a train() resumed from a checkpoint the
Trainer saved ends where the uninterrupted one ended, plugins and weights alike."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _hf_models import ScriptedEval, Tokens, arguments, bert, max_diff
from transformers import Trainer, TrainerCallback

from regplug.adapters.transformers import STATE_FILE, Regularize
from regplug.errors import RegplugWarning
from regplug.plugins import EMA, L2, EarlyStopping

pytestmark = pytest.mark.slow

# Epoch 2 (index 1) is the best: EarlyStopping restores it at the end, from the state it kept
# before the checkpoint after epoch 3 that the resumed run starts from.
LOSSES = [0.5, 0.3, 0.4, 0.45, 0.42]
EPOCHS = len(LOSSES)


def plugins():
    return [L2(1e-3), EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True),
            EMA(0.9, keep_raw=True)]


def trainer(out: str, callbacks: list[TrainerCallback], **overrides) -> Trainer:
    args = arguments(**{"output_dir": out, "num_train_epochs": EPOCHS, "eval_strategy": "epoch",
                        "save_strategy": "epoch", "optim": "sgd", "learning_rate": 0.1,
                        **overrides})
    return Trainer(model=bert(), args=args, train_dataset=Tokens(), eval_dataset=Tokens(8, 1),
                   callbacks=callbacks)


def timeless(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """The history without the evaluations' timings (runtime, samples per second)."""
    return {k: v for k, v in history.items() if "runtime" not in k and "per_second" not in k}


def checkpoints(out: str) -> list[Path]:
    return sorted(Path(out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def test_a_resumed_train_ends_as_the_uninterrupted_one(tmp_path):
    out = str(tmp_path)
    whole = Regularize(plugins())
    first = trainer(out, [ScriptedEval(LOSSES), whole])
    first.train()
    saved = checkpoints(out)
    assert len(saved) == EPOCHS and all((c / STATE_FILE).is_file() for c in saved)
    state = torch.load(saved[2] / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["history"]["val_loss"]) == (3, LOSSES[:3])

    resumed = Regularize(plugins())
    second = trainer(out, [ScriptedEval(LOSSES[3:]), resumed])
    second.train(resume_from_checkpoint=str(saved[2]))

    # the first three epochs came from the checkpoint
    assert timeless(resumed.history) == timeless(whole.history)
    stopper, whole_stopper = resumed.manager.plugins[1], whole.manager.plugins[1]
    assert (stopper.best_epoch, stopper.restored_epoch) == (1, 1)
    assert (stopper.best, stopper.wait) == (whole_stopper.best, whole_stopper.wait)
    assert resumed.run.step == whole.run.step
    assert max_diff(second.model, first.model) == 0.0  # epoch 2's weights, restored in both
    ema, whole_ema = resumed.manager.plugins[2].averages(), whole.manager.plugins[2].averages()
    for name, value in whole_ema.items():
        torch.testing.assert_close(torch.from_numpy(ema[name]), torch.from_numpy(value),
                                   rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_resume_true_picks_the_last_checkpoint_and_its_state(tmp_path):
    out = str(tmp_path)
    whole = Regularize(plugins())
    trainer(out, [ScriptedEval(LOSSES), whole]).train()
    resumed = Regularize(plugins())
    # The last checkpoint is the end: nothing left to train; the state is the whole run's.
    trainer(out, [ScriptedEval([]), resumed]).train(resume_from_checkpoint=True)
    assert timeless(resumed.history) == timeless(whole.history)
    assert resumed.run.step == whole.run.step


def test_a_checkpoint_written_without_regularize_resumes_with_a_warning_at_its_step(tmp_path):
    out = str(tmp_path)
    trainer(out, [ScriptedEval(LOSSES)]).train()
    start = checkpoints(out)[1]
    reg = Regularize([L2(1e-3), EarlyStopping(monitor="val_loss", patience=10)])
    with pytest.warns(RegplugWarning, match=rf"resumes at step {start.name.split('-')[1]} "
                                            rf"from .*holds no {STATE_FILE}"):
        trainer(out, [ScriptedEval(LOSSES[2:]), reg]).train(resume_from_checkpoint=str(start))
    assert reg.history["val_loss"] == LOSSES[2:]  # the plugins started fresh there


def test_no_state_file_without_a_checkpoint_and_no_warning_on_a_fresh_train(tmp_path):
    out = str(tmp_path)
    reg = Regularize([L2(1e-3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegplugWarning)
        trainer(out, [reg], save_strategy="no").train()
    assert not list(Path(out).rglob(STATE_FILE))


def test_a_checkpoint_of_other_plugins_is_refused_before_training_goes_on(tmp_path):
    out = str(tmp_path)
    trainer(out, [ScriptedEval(LOSSES), Regularize(plugins())]).train()
    start = checkpoints(out)[1]
    other = Regularize([L2(1e-3)])
    again = trainer(out, [ScriptedEval(LOSSES[2:]), other])
    with pytest.raises(ValueError, match=r"Regularize, resuming train\(resume_from_checkpoint="):
        again.train(resume_from_checkpoint=str(start))
    assert other.history == {} and other.run.step == 0  # nothing of the checkpoint taken

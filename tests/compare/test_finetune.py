"""`regplug compare --task finetune` in PyTorch: one pretraining per seed, every strategy
but scratch starting from it with a fresh head, and the command's bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from _compare_cli import assert_one_line_error, run_cli
from _finetune import backbone, head, same, train

from regplug.cli import build_parser
from regplug.experiment.finetune import load_finetune_splits


def test_every_strategy_but_scratch_starts_from_the_seeds_one_pretraining():
    splits = load_finetune_splits(None, seed=3, shots=5)
    scratch, scratch_first = train("torch", splits, "scratch", seed=3)
    assert not splits.cache  # scratch pretrains nothing
    tuned, tuned_first = train("torch", splits, "finetune", seed=3)
    _, l2_first = train("torch", splits, "l2", seed=3)
    assert list(splits.cache) == [("torch", "mlp", None, False, 3)]  # pretrained once
    assert same(backbone(tuned_first), backbone(l2_first))
    cached = splits.cache["torch", "mlp", None, False, 3]
    assert sorted(cached) == sorted(backbone(tuned_first))
    assert all(np.array_equal(cached[k].numpy(), tuned_first[k]) for k in cached)
    # the head is fresh: the same initial head as scratch's (same seed), not pretrained
    assert sorted(head(tuned_first)) == ["head.bias", "head.weight"]
    assert same(head(tuned_first), head(scratch_first))
    assert not np.array_equal(backbone(tuned_first)["layers.0.weight"],
                              backbone(scratch_first)["layers.0.weight"])
    # the same outcome whether the pretraining was cached or not
    again, again_first = train("torch", load_finetune_splits(None, seed=3, shots=5),
                               "finetune", seed=3)
    assert same(again_first, tuned_first)
    assert again.acc_test == tuned.acc_test
    assert all(np.array_equal(a.array, b.array) for a, b in zip(again.weights, tuned.weights))
    # another seed, another pretraining
    _, other_first = train("torch", load_finetune_splits(None, seed=4, shots=5), "finetune",
                           seed=4)
    assert not same(backbone(other_first), backbone(tuned_first))
    assert scratch.steps == tuned.steps == 1


def test_freeze_trains_the_head_alone_and_the_pretrained_backbone_helps():
    splits = load_finetune_splits(None, seed=0, shots=20)
    frozen, first = train("torch", splits, "freeze", epochs=20)
    final = {w.name: w.array for w in frozen.weights}
    assert same(backbone(final), backbone(first))  # bit for bit
    assert not np.array_equal(final["head.weight"], first["head.weight"])
    # a linear probe of the pretrained features beats chance by far on 5-9
    assert frozen.acc_test > 0.5


def test_the_command_runs_the_task_and_tests_the_strategies(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "--task", "finetune", "--data", "digits", "--shots", "5",
                             "--epochs", "2", "--seeds", "3", "-q", "--strategies",
                             "scratch,finetune,freeze,gradual_unfreeze,llrd,l2sp,ema,l2",
                             "--out", str(out_dir))
    assert code == 0, err
    assert "data:       digits classes 5-9, 5 shots: 25 train / " in out
    assert "(per seed: the test rows and the validation split, the shots and the pretraining)" \
        in out
    names = ["scratch", "finetune", "freeze", "gradual_unfreeze", "llrd", "l2sp", "ema", "l2"]
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("framework strategy"))
    assert [line.split()[:2] for line in lines[start + 1:start + 9]] == [
        ["torch", n] for n in names]
    payload = json.loads((out_dir / "results.json").read_text())
    assert payload["settings"]["data"].startswith("digits classes 5-9, 5 shots")
    assert "batch 25" in payload["settings"]["training"]  # the task's batch size
    assert {r["seed"] for r in payload["results"]} == {0, 1, 2}


def test_list_shows_the_tasks_strategies(capsys):
    code, out, _ = run_cli(capsys, "--task", "finetune", "--list")
    assert code == 0
    assert "* scratch" in out and "* finetune" in out and "Freeze(" in out


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--task", "fintune"], ["--task 'fintune': no task is called that (did you mean "
                             "'finetune'?)"]),
    (["--task", "finetune", "--shots", "400"], ["--shots 400: at most ", " per class"]),
    (["--task", "finetune", "--data", "digits", "--shots", "125"],
     ["--shots 125: at most ", "'digits'"]),
    (["--shots", "5"], ["--shots 5: only --task finetune has shots"]),
    (["--strategies", "none,freeze"], ["strategy 'freeze' belongs to --task finetune"]),
    (["--task", "finetune", "--preset", "overfit"], ["--preset overfit: not with --task "
                                                     "finetune"]),
    (["--task", "finetune", "--train-rows", "50"], ["--train-rows 50: not with --task "
                                                    "finetune", "--shots"]),
    (["--task", "finetune", "--model", "linear"], ["no hidden layer to pretrain"]),
    (["--task", "finetune", "--strategies", "finetune,l2sq"], ["unknown strategy 'l2sq'"]),
])
def test_bad_input_is_one_line_before_anything_is_trained_or_written(tmp_path, capsys, argv,
                                                                     fragments):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, *argv, "--out", str(out_dir))
    assert_one_line_error(code, err, *fragments)
    assert "acc_test" not in out and not out_dir.exists()


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_shots_zero_is_refused_by_the_option(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--task", "finetune", "--shots", "0"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "argument --shots: must be at least 1, got 0" in lines[0]


def test_the_torch_runner_validates_inside_the_validation_hooks():
    """EMA(evaluate_on_average=True) swaps its average in for validation: the runner has to
    say when validation runs (on_validation_begin/end), every epoch."""
    import regplug
    from regplug.experiment.finetune import FINETUNE_STRATEGIES
    from regplug.experiment.frameworks import TrainSettings, get_runner
    from regplug.experiment.models import BUILTIN_MODELS
    from regplug.experiment.training import train_strategy

    class Count(regplug.Plugin):
        def __init__(self) -> None:
            self.calls: list[str] = []

        @regplug.hookimpl
        def on_validation_begin(self, run):
            self.calls.append("begin")

        @regplug.hookimpl
        def on_validation_end(self, run):
            self.calls.append("end")

    count = Count()
    outcome, _ = train_strategy(get_runner("torch"), FINETUNE_STRATEGIES["ema"],
                                load_finetune_splits(None, seed=0, shots=5),
                                BUILTIN_MODELS["mlp"], TrainSettings(epochs=3, batch_size=25),
                                extra=[count])
    assert count.calls == ["begin", "end"] * 3 and outcome.epochs == 3

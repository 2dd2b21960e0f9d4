"""The fine-tuning task's data, strategies and option checks (regplug/experiment/finetune.py),
without a framework."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from regplug.experiment.finetune import (
    DEFAULT_SHOTS,
    FINETUNE,
    FINETUNE_BASELINE,
    FINETUNE_DEFAULT_STRATEGIES,
    FINETUNE_STRATEGIES,
    VALIDATION_PER_CLASS,
    FinetuneSplits,
    check_finetune_model,
    check_task_arguments,
    check_task_name,
    fill_training_defaults,
    finetune_splits,
    finetune_splits_per_seed,
    load_finetune_splits,
    refuse_finetune_strategies,
    select_finetune_strategies,
    starts_pretrained,
)
from regplug.experiment.loaders import Dataset
from regplug.experiment.models import BUILTIN_MODELS, ModelError
from regplug.experiment.strategies import BUILTIN_STRATEGIES, StrategyError


def numbered(rows_per_class: int = 30, test_per_class: int = 4) -> Dataset:
    """Ten classes; each row's single feature is its own row number (train: 0, 1, ...;
    test: 100000, 100001, ...), so a split's rows can be traced back."""
    y = np.repeat(np.arange(10), rows_per_class)
    y_test = np.repeat(np.arange(10), test_per_class)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    x_test = (100000 + np.arange(len(y_test), dtype=np.float32))[:, None]
    return Dataset("numbered", x, y, x_test, y_test)


def ids(x: np.ndarray) -> set[int]:
    return {int(v) for v in x[:, 0]}


def test_shots_per_class_from_classes_5_to_9_relabelled_0_to_4():
    data = numbered()
    splits = finetune_splits(data, shots=3, seed=0)
    assert isinstance(splits, FinetuneSplits) and splits.n_classes == 5
    assert sorted(np.bincount(splits.y_train).tolist()) == [3] * 5
    for x, y in ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val)):
        original = data.y_train[x[:, 0].astype(int)]
        assert (original == y + 5).all()  # the label of each row is its class minus 5
    test_original = data.y_test[(splits.x_test[:, 0] - 100000).astype(int)]
    assert (test_original == splits.y_test + 5).all() and len(splits.y_test) == 5 * 4
    # fine-tuning rows, validation rows and test rows are disjoint; validation holds the rest
    assert not ids(splits.x_train) & ids(splits.x_val)
    assert len(splits.x_val) == 5 * (30 - 3)
    # pretraining: every training row of classes 0-4, labels kept, none of 5-9
    pre = splits.pretrain
    assert pre is not None and pre.n_classes == 5
    assert ids(pre.x_train) == set(range(150)) and set(pre.y_train.tolist()) == {0, 1, 2, 3, 4}
    assert not ids(pre.x_train) & (ids(splits.x_train) | ids(splits.x_val))


def test_validation_rows_are_capped_per_class():
    splits = finetune_splits(numbered(rows_per_class=VALIDATION_PER_CLASS + 50), shots=2, seed=0)
    assert np.bincount(splits.y_val).tolist() == [VALIDATION_PER_CLASS] * 5


def test_the_shots_depend_on_the_seed_only():
    data = numbered()
    a, b = finetune_splits(data, shots=4, seed=1), finetune_splits(data, shots=4, seed=1)
    assert (a.x_train == b.x_train).all() and (a.x_val == b.x_val).all()
    c = finetune_splits(data, shots=4, seed=2)
    assert ids(a.x_train) != ids(c.x_train)
    assert a.cache is not b.cache  # each splits object caches its own pretrained weights


@pytest.mark.parametrize("shots", [0, -1, True])
def test_shots_below_one_are_refused(shots):
    with pytest.raises(ValueError, match=r"^--shots .*: must be an integer of at least 1$"):
        finetune_splits(numbered(), shots=shots, seed=0)


def test_more_shots_than_rows_names_the_most_there_can_be():
    with pytest.raises(ValueError) as info:
        finetune_splits(numbered(rows_per_class=30), shots=30, seed=0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--shots 30: at most 29 per class: class 5 of 'numbered' has 30 "
                              "training rows")
    finetune_splits(numbered(rows_per_class=30), shots=29, seed=0)  # the most: accepted


def test_data_without_the_ten_digits_is_refused():
    data = numbered()
    keep, keep_test = data.y_train < 8, data.y_test < 8
    eight = Dataset("eight", data.x_train[keep], data.y_train[keep], data.x_test[keep_test],
                    data.y_test[keep_test])
    with pytest.raises(ValueError, match="needs a data set of the 10 classes 0-9.*'eight' has "
                                         "8 classes and no rows of class 8, 9"):
        finetune_splits(eight, shots=2, seed=0)


def test_the_bundled_digits_split_and_a_file_is_read_once(tmp_path):
    splits = load_finetune_splits(None, seed=0, shots=5)
    assert splits.name == "digits" and len(splits.x_train) == 25 and splits.n_features == 64
    assert splits.describe().startswith("digits classes 5-9, 5 shots: 25 train / ")
    data = numbered()
    path = tmp_path / "ten.npz"
    np.savez(path, x_train=data.x_train * 0 + 1, y_train=data.y_train,
             x_test=data.x_test * 0 + 1, y_test=data.y_test)
    per_seed = finetune_splits_per_seed(str(path), shots=2)
    first, second = per_seed(0), per_seed(1)
    assert len(first.x_test) == len(second.x_test) == 20  # the file's own test rows
    assert first is not second and first.cache is not second.cache


def test_the_strategies_and_the_baseline():
    names = list(FINETUNE_STRATEGIES)
    assert names[:2] == ["scratch", "finetune"] and FINETUNE_BASELINE in names
    assert {"l2", "freeze", "gradual_unfreeze", "llrd", "l2sp", "ema"} <= set(names)
    assert [starts_pretrained(s) for s in FINETUNE_STRATEGIES.values()] == [
        name != "scratch" for name in names]
    assert starts_pretrained(BUILTIN_STRATEGIES["l2"])  # a plain (config) strategy: pretrained
    for strategy in FINETUNE_STRATEGIES.values():
        strategy.build_plugins()  # every plugin exists and takes its arguments
    assert [s.name for s in select_finetune_strategies(None)] == list(
        FINETUNE_DEFAULT_STRATEGIES)
    assert [s.name for s in select_finetune_strategies("l2,default")][:2] == ["l2", "scratch"]
    with pytest.raises(StrategyError, match=r"unknown strategy 'fine_tune' \(did you mean "
                                            r"'finetune'\?\)"):
        select_finetune_strategies("fine_tune")


def test_a_finetune_strategy_without_the_task_names_the_task():
    with pytest.raises(StrategyError, match=r"^strategy 'scratch' belongs to --task finetune"):
        refuse_finetune_strategies("none,scratch", {}, BUILTIN_STRATEGIES)
    refuse_finetune_strategies("none,l2", {}, BUILTIN_STRATEGIES)  # l2 is both tasks'
    refuse_finetune_strategies(None, {}, BUILTIN_STRATEGIES)


def test_task_names_and_their_options():
    assert check_task_name(None) == "classify" and check_task_name("finetune") == "finetune"
    with pytest.raises(ValueError, match=r"^--task 'finetun': no task is called that \(did you "
                                         r"mean 'finetune'\?\); give 'classify' \(default\)"):
        check_task_name("finetun")
    with pytest.raises(ValueError, match=r"no task is called that; give"):
        check_task_name("segmentation")

    def args(**given: object) -> argparse.Namespace:
        base: dict[str, object] = {"task": None, "shots": None, "preset": None,
                                   "train_rows": None, "label_noise": None}
        return argparse.Namespace(**{**base, **given})

    assert check_task_arguments(args(task="finetune", shots=5)) == "finetune"
    with pytest.raises(ValueError, match="^--shots 5: only --task finetune has shots"):
        check_task_arguments(args(shots=5))
    for option, value in (("preset", "overfit"), ("train_rows", 100), ("label_noise", 0.1)):
        with pytest.raises(ValueError, match=f"^--{option.replace('_', '-')} .*: not with "
                                             "--task finetune"):
            check_task_arguments(args(task="finetune", **{option: value}))


def test_the_task_fills_the_options_not_given():
    given = argparse.Namespace(data=None, shots=None, epochs=7, batch_size=None, lr=None,
                               seeds=None, framework="keras")
    filled = fill_training_defaults(given, "finetune")
    assert sorted(filled) == ["batch_size", "data", "lr", "seeds", "shots"]
    assert (given.data, given.shots, given.epochs, given.batch_size, given.lr, given.seeds,
            given.framework) == ("mnist", DEFAULT_SHOTS, 7, FINETUNE.batch_size,
                                 FINETUNE.learning_rate, FINETUNE.seeds, "keras")
    plain = argparse.Namespace(epochs=None, batch_size=None, lr=3.0)
    assert sorted(fill_training_defaults(plain, "classify")) == ["batch_size", "epochs"]
    assert (plain.epochs, plain.batch_size, plain.lr) == (30, 128, 3.0)


def test_a_model_without_hidden_layers_has_nothing_to_pretrain():
    with pytest.raises(ModelError, match="--model 'linear' has no hidden layer to pretrain"):
        check_finetune_model(BUILTIN_MODELS["linear"])
    check_finetune_model(BUILTIN_MODELS["mlp"])

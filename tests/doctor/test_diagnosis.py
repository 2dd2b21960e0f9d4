"""``regplug.diagnose`` as a pure function: each verdict from a hand-made history, with the
numbers in its sentences, and what it recommends (underfitting: never a regularizer)."""

from __future__ import annotations

import math

import pytest

import regplug
from regplug.doctor import BatchCheck, Thresholds, diagnose
from regplug.doctor.diagnosis import REGULARIZING_PLUGINS

OVERFIT = {"loss": [1.0, 0.5, 0.3, 0.2, 0.1, 0.05], "val_loss": [1.0, 0.6, 0.5, 0.55, 0.65, 0.8],
           "accuracy": [0.7, 0.85, 0.9, 0.95, 0.98, 0.99],
           "val_accuracy": [0.7, 0.82, 0.85, 0.85, 0.84, 0.83]}
UNDERFIT = {"loss": [2.0, 1.6, 1.5, 1.45], "val_loss": [2.0, 1.62, 1.52, 1.47],
            "accuracy": [0.3, 0.45, 0.5, 0.52], "val_accuracy": [0.3, 0.44, 0.5, 0.51]}
HEALTHY = {"loss": [1.0, 0.4, 0.2, 0.15], "val_loss": [1.0, 0.45, 0.3, 0.29],
           "accuracy": [0.7, 0.9, 0.95, 0.96], "val_accuracy": [0.7, 0.88, 0.93, 0.94]}


def test_regplug_diagnose_is_the_function():
    assert regplug.diagnose is diagnose
    assert "diagnose" in regplug.__all__


def test_overfitting_says_when_the_gap_opened_and_what_to_search():
    d = diagnose(OVERFIT)
    assert d.verdict == "overfitting" and d.onset == 3
    assert d.strategies == ["l2", "dropout"]
    assert any("GL = 60.0 > 5" in s for s in d.evidence)
    assert any("pct_diff 0.162" in s for s in d.evidence)


def test_an_early_gap_suggests_early_stopping_too():
    h = dict(OVERFIT, val_loss=[1.0, 0.5, 0.55, 0.6, 0.7, 0.8])
    assert diagnose(h).strategies == ["l2", "dropout", "early_stopping"]


def test_underfitting_recommends_less_regularization_never_a_regularizer():
    d = diagnose(UNDERFIT, regularizers=["l2"])
    assert d.verdict == "underfitting" and not d.strategies
    text = " ".join(d.recommendations)
    assert "less regularization: weaken or remove l2" in text
    assert "more capacity" in text and "larger learning rate" in text
    assert not any(f"search {name}" in text for name in REGULARIZING_PLUGINS)


def test_healthy():
    d = diagnose(HEALTHY)
    assert d.verdict == "healthy" and not d.recommendations
    assert d.numbers["pct_diff"] == pytest.approx(1 - 0.94 / 0.96)


@pytest.mark.parametrize("history", [
    {"loss": [1.0, math.nan], "val_loss": [1.0, math.nan]},
    {"loss": [1.0, 1.5, 0.9, 1.4, 0.8], "val_loss": [1.0] * 5},        # oscillating
    {"loss": [1.0, 1.2, 1.3], "val_loss": [1.0, 1.2, 1.3]},             # diverging
    {"loss": [1.0, 0.9], "val_loss": [1.0, 0.9], "weight_norm/fc.weight": [1.0, 9.0],
     "update_ratio/fc.weight": [0.5, 8.0]},                               # exploding
])
def test_unstable(history):
    d = diagnose(history)
    assert d.verdict == "unstable"
    assert any("learning rate" in r for r in d.recommendations)


def test_a_layer_that_a_penalty_shrinks_is_not_exploding():
    h = dict(UNDERFIT, **{"weight_norm/fc.weight": [1.0, 0.01, 0.005, 0.006],
                          "update_ratio/fc.weight": [0.99, 0.99, 3.0, 0.5]})
    assert diagnose(h).verdict == "underfitting"


def test_a_batch_that_does_not_learn_at_all_is_a_bug():
    d = diagnose(HEALTHY, batch=BatchCheck(2.3, 2.3, False, 100, ("none got a gradient",)))
    assert d.verdict == "bug" and "none got a gradient" in d.evidence
    slow = diagnose(UNDERFIT, batch=BatchCheck(2.3, 1.2, False))  # learns, slowly: capacity
    assert slow.verdict == "underfitting"
    assert any("only partly overfitted" in s for s in slow.evidence)


def test_chance_level_validation_while_training_fits_is_a_bug():
    h = {"loss": [2.3, 2.0, 1.5], "val_loss": [2.3, 2.4, 2.6],
         "accuracy": [0.1, 0.3, 0.5], "val_accuracy": [0.1, 0.11, 0.09]}
    d = diagnose(h, n_classes=10)
    assert d.verdict == "bug" and any("chance" in s for s in d.evidence)


def test_dead_units_are_a_bug_and_thresholds_are_arguments():
    h = dict(HEALTHY, **{"dead_units/0.weight": [0.6] * 4})
    assert diagnose(h).verdict == "bug"
    assert diagnose(h, thresholds=Thresholds(dead_units=0.7)).verdict == "healthy"


def test_noisy_labels_are_not_read_as_underfitting():
    h = {"loss": [2.0, 1.5, 1.3], "val_loss": [1.5, 0.9, 0.8],
         "accuracy": [0.5, 0.65, 0.7], "val_accuracy": [0.7, 0.85, 0.86]}
    d = diagnose(h)
    assert d.verdict == "healthy" and any("noisy training labels" in s for s in d.evidence)


def test_text_and_dict():
    d = diagnose(OVERFIT)
    assert d.text().startswith("verdict: overfitting\n  - ")
    assert d.to_dict()["verdict"] == "overfitting"


def test_a_history_without_validation_is_refused_not_called_healthy():
    # a Keras fit() without validation_data: no gap can be seen, so no verdict either
    with pytest.raises(ValueError, match="no validation series.*its keys: acc, loss"):
        diagnose({"loss": [1.0, 0.5, 0.2, 0.1], "acc": [0.6, 0.8, 0.9, 0.99]})


def test_a_history_in_other_words_names_the_keys_it_reads():
    with pytest.raises(ValueError, match="no training loss.*'loss' or 'cross_entropy'.*"
                                         "train_loss, valid_loss"):
        diagnose({"train_loss": [1.0, 0.5], "valid_loss": [1.0, 0.9]})


def test_keras_history_names_are_read():
    # what keras.callbacks.History.history holds with metrics=["acc"] or ["accuracy"]
    for acc in ("acc", "accuracy", "sparse_categorical_accuracy"):
        h = {"loss": OVERFIT["loss"], "val_loss": OVERFIT["val_loss"],
             acc: OVERFIT["accuracy"], f"val_{acc}": OVERFIT["val_accuracy"]}
        d = diagnose(h)
        assert d.verdict == "overfitting" and d.numbers["pct_diff"] is not None, acc

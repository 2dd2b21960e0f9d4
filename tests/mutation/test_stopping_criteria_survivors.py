"""Mutants of plugins/stopping_criteria.py that tests/plugins let live (issue 16, item 19):
the boundaries of Prechelt's PQ and of "strictly better" in max mode, and the 1-based epoch
in the stop reasons."""

from __future__ import annotations

from regplug.plugins import (
    DivergenceThreshold,
    MetricHistory,
    ProgressQuotient,
    RisingStrips,
    StoppingThreshold,
)


def test_pq_stops_only_when_the_quotient_exceeds_alpha_not_when_it_equals_it():
    """No generalization loss gives PQ = 0; at alpha 0 that is PQ == alpha: go on."""
    history = MetricHistory.of([0.5, 0.4], logs=[{"loss": 0.6}, {"loss": 0.5}])
    assert ProgressQuotient(0.0, strip_length=2).evaluate(history)[0] is False
    worse = MetricHistory.of([0.4, 0.5], logs=[{"loss": 0.6}, {"loss": 0.5}])
    stop, reason = ProgressQuotient(0.0, strip_length=2).evaluate(worse)
    assert stop and reason.startswith("progress quotient PQ = ") and " at epoch 2:" in reason


def test_thresholds_in_max_mode_need_a_strictly_better_or_worse_value():
    at = MetricHistory.of([0.5, 0.9], monitor="val_acc", mode="max")
    assert StoppingThreshold(0.9).evaluate(at)[0] is False
    assert DivergenceThreshold(0.9).evaluate(at)[0] is False
    above = MetricHistory.of([0.5, 0.95], monitor="val_acc", mode="max")
    assert StoppingThreshold(0.9).evaluate(above) == (
        True, "val_acc = 0.95 reached the stopping threshold 0.9 at epoch 2")
    below = MetricHistory.of([0.95, 0.5, 0.2], monitor="val_acc", mode="max")
    stop, reason = DivergenceThreshold(0.3).evaluate(below)
    assert stop and reason.startswith("val_acc = 0.2 diverged beyond 0.3 at epoch 3")


def test_stop_reasons_name_the_epoch_counting_from_one():
    history = MetricHistory.of([0.5, 0.3, 0.2, 0.25, 0.3, 0.35])
    assert StoppingThreshold(0.25).evaluate(MetricHistory.of([0.5, 0.24])) == (
        True, "val_loss = 0.24 reached the stopping threshold 0.25 at epoch 2")
    assert RisingStrips(3, strip_length=1).evaluate(history) == (
        True, "val_loss rose in 3 successive strips of 1 epochs at epoch 6; "
              "best 0.2 at epoch 3")

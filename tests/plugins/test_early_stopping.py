"""EarlyStopping without a framework: the decision rules, reasons, state and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import regplug
from regplug import functional as F
from regplug.plugins import EarlyStopping
from regplug.testing import NumpyLoop


def run_epochs(stopper: EarlyStopping, values, *, key="val_loss", extra=None, weights=None):
    """Feed one monitored value per epoch; the weight is set to the epoch index first, so the
    restored weight tells which epoch's weights came back. Returns (epochs run, loop)."""
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [stopper])
    for epoch, value in enumerate(values):
        loop.params["w"][...] = epoch if weights is None else weights[epoch]
        logs = {key: value, **((extra or {}).get(epoch, {}))}
        if loop.epoch_end(logs):
            loop.close()
            return epoch + 1, loop
    loop.close()
    return len(values), loop


class FakeKerasModel:
    """What keras.callbacks.EarlyStopping touches on a model."""

    def __init__(self):
        self.stop_training = False
        self.weights = [np.zeros(1)]
        self.metrics = []

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def keras_decision(values, **kwargs):
    """(epochs run, best epoch restored) of Keras' own EarlyStopping on the same values."""
    keras = pytest.importorskip("keras")
    callback = keras.callbacks.EarlyStopping(restore_best_weights=True, **kwargs)
    model = FakeKerasModel()
    callback.set_model(model)
    callback.on_train_begin()
    ran = len(values)
    for epoch, value in enumerate(values):
        model.weights = [np.full(1, float(epoch))]
        callback.on_epoch_end(epoch, {"val_loss": value, "val_accuracy": -value})
        if model.stop_training:
            ran = epoch + 1
            break
    callback.on_train_end()
    return ran, int(model.weights[0][0])


KERAS_CASES = [
    dict(patience=0),
    dict(patience=2),
    dict(patience=3, min_delta=0.013),  # no ties: values have 2 decimals (Keras compares in float32)
    dict(patience=2, baseline=0.3),
    dict(patience=1, start_from_epoch=3),
    dict(patience=2, mode="max", monitor="val_accuracy"),
    dict(patience=4, min_delta=0.005, baseline=0.205, start_from_epoch=2),
]


@pytest.mark.parametrize("kwargs", KERAS_CASES, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
def test_stops_and_restores_at_the_same_epochs_as_keras_early_stopping(kwargs):
    rng = np.random.default_rng(len(str(kwargs)))
    for trial in range(40):
        # A noisy U-shaped validation curve: falls, then rises; plateaus from rounding.
        t = np.arange(25)
        values = np.round(0.2 + 0.002 * (t - rng.integers(3, 15)) ** 2
                          + rng.normal(0, 0.02, t.size), 2).tolist()
        monitor = kwargs.get("monitor", "val_loss")
        ours_kwargs = dict(kwargs)
        ours_values = [-v for v in values] if monitor == "val_accuracy" else values
        stopper = EarlyStopping(**ours_kwargs)
        ran, loop = run_epochs(stopper, ours_values, key=monitor)
        expected_ran, expected_restored = keras_decision(values, **kwargs)
        assert ran == expected_ran, (trial, values)
        assert loop.params["w"].item() == expected_restored, (trial, values)


def test_reason_names_the_epoch_the_best_value_and_its_epoch():
    stopper = EarlyStopping(patience=3)
    ran, _ = run_epochs(stopper, [0.5, 0.4, 0.183, 0.19, 0.2, 0.21, 0.3])
    assert ran == 6
    assert stopper.stop_reason == ("patience exhausted at epoch 6: val_loss did not improve "
                                   "for 3 epochs; best 0.183 at epoch 3")
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.183, 2, 5)


def test_the_run_keeps_the_stop_request_with_its_source():
    stopper = EarlyStopping(patience=0)
    _, loop = run_epochs(stopper, [0.3, 0.4])
    [request] = loop.run.stop_requests
    assert request.source == "early_stopping" and request.epoch == 1
    assert "patience exhausted at epoch 2" in request.reason


def test_best_weights_are_restored_when_training_ends_without_a_stop():
    stopper = EarlyStopping(patience=10)
    ran, loop = run_epochs(stopper, [0.5, 0.2, 0.3, 0.4])
    assert ran == 4 and stopper.stop_reason is None
    assert loop.params["w"].item() == 1.0 and stopper.restored_epoch == 1


def test_restore_best_weights_false_leaves_the_last_weights():
    stopper = EarlyStopping(patience=1, restore_best_weights=False)
    ran, loop = run_epochs(stopper, [0.5, 0.2, 0.3, 0.4])
    assert ran == 3 and loop.params["w"].item() == 2.0
    assert stopper.requires == ()


def test_restore_is_bit_exact_for_values_that_do_not_round_trip_through_float32():
    weights = [np.float64(1 / 3) * (k + 1) for k in range(4)]
    stopper = EarlyStopping(patience=1)
    _, loop = run_epochs(stopper, [0.5, 0.2, 0.3, 0.4], weights=weights)
    assert loop.params["w"].item() == weights[1]


def test_the_best_copy_is_allocated_once_and_reused():
    stopper = EarlyStopping(patience=10)
    loop = NumpyLoop({"w": np.zeros((3,))}, [stopper])
    buffers = set()
    for epoch, value in enumerate([0.9, 0.8, 0.7, 0.6]):
        loop.params["w"][...] = epoch
        loop.epoch_end({"val_loss": value})
        buffers.add(id(stopper._best_weights["w"]))
    assert len(buffers) == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_metric_stops_with_a_reason_and_is_never_the_best(bad):
    stopper = EarlyStopping(patience=5)
    ran, loop = run_epochs(stopper, [0.5, 0.3, bad, 0.1])
    assert ran == 3
    assert stopper.stop_reason == f"val_loss is {bad} at epoch 3, best 0.3 at epoch 2"
    assert stopper.best == 0.3 and loop.params["w"].item() == 1.0


def test_check_finite_false_counts_non_finite_epochs_as_no_improvement_like_keras():
    stopper = EarlyStopping(patience=2, check_finite=False)
    ran, _ = run_epochs(stopper, [0.5, math.nan, 0.4, 0.6])
    assert ran == 4 and stopper.best == 0.4
    stopper = EarlyStopping(patience=2, check_finite=False)
    ran, loop = run_epochs(stopper, [0.5, math.nan, math.nan, math.nan, math.nan])
    assert ran == 3 and "did not improve for 2 epochs (it is nan)" in stopper.stop_reason
    assert loop.params["w"].item() == 0.0  # the last finite best


def test_stopping_threshold_stops_once_the_metric_is_good_enough():
    stopper = EarlyStopping(patience=10, stopping_threshold=0.25)
    ran, _ = run_epochs(stopper, [0.5, 0.3, 0.24, 0.1])
    assert ran == 3 and "reached the stopping threshold 0.25 at epoch 3" in stopper.stop_reason


def test_divergence_threshold_stops_once_the_metric_is_too_bad():
    stopper = EarlyStopping(patience=10, divergence_threshold=2.0)
    ran, _ = run_epochs(stopper, [0.5, 0.3, 2.5, 0.1])
    assert ran == 3 and "diverged beyond 2 at epoch 3" in stopper.stop_reason


# -- Prechelt's criteria -------------------------------------------------------------------
def test_prechelt_functions_follow_the_paper_definitions():
    assert F.generalization_loss(0.21, 0.20) == pytest.approx(5.0)
    assert F.training_progress([0.1, 0.1, 0.1]) == 0.0
    assert F.training_progress([0.4, 0.2]) == pytest.approx(1000 * (0.6 / 0.4 - 1))
    assert F.progress_quotient(0.22, 0.20, [0.3, 0.2]) == pytest.approx(
        10.0 / (1000 * (0.5 / 0.4 - 1)))
    assert F.progress_quotient(0.2, 0.2, [0.1, 0.1]) == 0.0  # no generalization loss
    assert F.progress_quotient(0.3, 0.2, [0.1, 0.1]) == math.inf  # stalled and worse


def test_gl_stops_when_validation_error_is_alpha_percent_above_its_best():
    stopper = EarlyStopping(criterion="gl", alpha=5.0)
    ran, loop = run_epochs(stopper, [0.30, 0.20, 0.205, 0.209, 0.211, 0.19])
    assert ran == 5  # 0.211 / 0.20 = 1.055: GL = 5.5 > 5
    assert stopper.stop_reason.startswith("generalization loss GL = 5.5% > 5% at epoch 5")
    assert loop.params["w"].item() == 1.0


def test_pq_is_evaluated_only_at_strip_ends_and_uses_training_progress():
    val = [0.3, 0.2, 0.21, 0.22, 0.23, 0.24]
    train = {e: {"loss": v} for e, v in enumerate([0.5, 0.4, 0.3, 0.2, 0.1, 0.1])}
    # strip of 2: at epoch index 3, GL = 10, P = 1000*(0.5/0.4-1) = 250 → PQ = 0.04
    # at epoch index 5: GL = 20, P = 0 (flat) → PQ = inf
    stopper = EarlyStopping(criterion="pq", alpha=0.5, strip_length=2)
    ran, _ = run_epochs(stopper, val, extra=train)
    assert ran == 6 and stopper.stop_reason.startswith("progress quotient PQ = inf > 0.5")


def test_pq_without_the_training_error_in_the_logs_is_a_clear_error():
    stopper = EarlyStopping(criterion="pq", strip_length=1)
    with pytest.raises(ValueError, match="criterion 'pq' needs the training error 'loss'"):
        run_epochs(stopper, [0.3, 0.2])


def test_up_stops_after_s_successive_rising_strips():
    # strips of 2 epochs: strip ends at indexes 1, 3, 5, 7 → 0.2, 0.25 (up), 0.3 (up), 0.35
    stopper = EarlyStopping(criterion="up", strip_length=2, strips=2)
    ran, loop = run_epochs(stopper, [0.3, 0.2, 0.1, 0.25, 0.2, 0.3, 0.3, 0.35])
    assert ran == 6 and stopper.stop_reason.startswith(
        "val_loss rose in 2 successive strips of 2 epochs at epoch 6")
    assert loop.params["w"].item() == 2.0  # the best epoch (0.1), restored


def test_up_counter_restarts_when_a_strip_does_not_rise():
    stopper = EarlyStopping(criterion="up", strip_length=1, strips=2)
    ran, _ = run_epochs(stopper, [0.3, 0.4, 0.35, 0.5, 0.45, 0.5, 0.6])
    assert ran == 7


# -- checkpoints ------------------------------------------------------------------------------
def test_state_dict_resumes_counting_and_keeps_the_best_weights():
    values = [0.5, 0.3, 0.4, 0.45, 0.5, 0.6]
    first = EarlyStopping(patience=3)
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [first])
    for epoch in range(3):
        loop.params["w"][...] = epoch
        loop.epoch_end({"val_loss": values[epoch]})
    state = first.state_dict()
    loop.close()

    second = EarlyStopping(patience=3)
    second.load_state_dict(state)  # before training begins (a Keras callback's order)
    loop = NumpyLoop({"w": np.full((1, 1), 99.0)}, [second])
    loop.run.epoch = 3
    for epoch in range(3, 6):
        loop.params["w"][...] = epoch
        if loop.epoch_end({"val_loss": values[epoch]}):
            break
    loop.close()
    assert second.stopped_epoch == 4 and loop.params["w"].item() == 1.0


def test_state_dict_refuses_a_checkpoint_of_another_mode():
    state = EarlyStopping(monitor="score", mode="min").state_dict()
    with pytest.raises(ValueError, match="written for mode='min'"):
        EarlyStopping(monitor="score", mode="max").load_state_dict(state)


def test_verbose_prints_the_stop_and_the_restore_like_keras(capsys):
    run_epochs(EarlyStopping(patience=1, verbose=1), [0.5, 0.2, 0.3, 0.4])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Epoch 3: early stopping: patience exhausted at epoch 3")
    assert out[1] == "Restoring model weights from the end of the best epoch: 2."


def test_nothing_is_restored_when_training_ends_with_an_exception():
    stopper = EarlyStopping(patience=5)
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [stopper])
    loop.epoch_end({"val_loss": 0.1})
    loop.params["w"][...] = 7.0
    loop.run.exception = KeyboardInterrupt()
    loop.close()
    assert loop.params["w"].item() == 7.0 and stopper.restored_epoch is None


def test_repr_shows_what_was_configured():
    assert repr(EarlyStopping(patience=3, min_delta=0.01, restore_best_weights=False)) == (
        "EarlyStopping(monitor='val_loss', patience=3, min_delta=0.01, "
        "restore_best_weights=False)")
    assert repr(EarlyStopping(criterion="gl", alpha=2)) == (
        "EarlyStopping(monitor='val_loss', criterion='gl', alpha=2)")


def test_state_dict_refuses_a_checkpoint_of_another_monitor():
    state = EarlyStopping(monitor="val_loss").state_dict()
    with pytest.raises(ValueError, match="written for monitor='val_loss'"):
        EarlyStopping(monitor="val_accuracy").load_state_dict(state)


def test_loaded_best_weights_of_another_model_are_refused_with_names():
    first = EarlyStopping()
    run_epochs(first, [0.5])
    state = first.state_dict()
    assert set(state["best_weights"]) == {"w"}
    state["best_weights"] = {"v": np.zeros(2)}
    second = EarlyStopping()
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [second])
    with pytest.raises(ValueError, match=r"missing \['w'\].*unknown \['v'\]"):
        second.load_state_dict(state)
    loop.close()


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(patience=-1), ValueError, "'patience' must be an integer >= 0, got -1"),
    (dict(patience=1.5), TypeError, "'patience' must be an integer"),
    (dict(min_delta=-0.1), ValueError, "'min_delta' must be a finite number >= 0"),
    (dict(mode="down"), ValueError, "'mode' must be one of 'auto', 'min', 'max'; got 'down'"),
    (dict(monitor="throughput"), ValueError, "cannot tell .* 'throughput' .* mode='min'"),
    (dict(monitor=""), TypeError, "'monitor' must be a metric name"),
    (dict(criterion="plateau"), ValueError, "'criterion' must be one of 'patience', 'gl'"),
    (dict(criterion="gl", monitor="val_accuracy"), ValueError, "measures a validation"),
    (dict(alpha=2.0), ValueError, "'alpha' applies to criterion 'gl' or 'pq', not 'patience'"),
    (dict(criterion="gl", patience=5), ValueError, "'patience' applies to criterion 'patience'"),
    (dict(criterion="up", baseline=0.3), ValueError, "'baseline' applies to criterion"),
    (dict(strips=2), ValueError, "'strips' applies to criterion 'up', not 'patience'"),
    (dict(criterion="gl", strip_length=3), ValueError, "'strip_length' applies to criterion"),
    (dict(criterion="up", train_monitor="loss"), ValueError, "'train_monitor' applies to"),
    (dict(stopping_threshold=0.5, divergence_threshold=0.1), ValueError,
     "stopping_threshold=0.5 must be better than divergence_threshold=0.1 in mode='min'"),
    (dict(verbose=-1), ValueError, "'verbose' must be an integer >= 0"),
    (dict(criterion="up", strip_length=0), ValueError, "'strip_length' must be an integer >= 1"),
    (dict(baseline=math.nan), ValueError, "'baseline' must be a finite number"),
    (dict(restore_best_weights="yes"), TypeError, "'restore_best_weights' must be True or False"),
    (dict(best_weights_on="disk"), ValueError, "'best_weights_on' must be one of"),
    (dict(start_from_epoch=-2), ValueError, "'start_from_epoch' must be an integer >= 0"),
])
def test_bad_arguments_raise_an_error_naming_plugin_and_argument(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        EarlyStopping(**kwargs)
    assert str(info.value).startswith("EarlyStopping: ")


def test_a_mode_contradicting_the_metric_name_is_a_warning():
    with pytest.warns(regplug.RegplugWarning, match="mode='max' treats higher 'val_loss' as "
                                                     "better, but its name says it should go down"):
        EarlyStopping(mode="max")


def test_a_monitor_that_never_appears_is_a_warning_listing_the_keys():
    stopper = EarlyStopping(monitor="val_los", mode="min")
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [stopper])
    with pytest.warns(regplug.RegplugWarning,
                      match=r"monitor 'val_los' is not in the logs.*val_loss.*Did you mean"):
        loop.epoch_end({"loss": 0.3, "val_loss": 0.4})
    assert stopper.best is None


def test_built_by_name_from_a_config():
    [stopper] = regplug.build_plugins([{"name": "early_stopping", "patience": 4,
                                        "criterion": "patience"}])
    assert isinstance(stopper, EarlyStopping) and stopper.patience == 4

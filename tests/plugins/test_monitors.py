"""GeneralizationGap and NonFiniteGuard: numbers, warnings, stops — numpy, torch and Keras."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import regplug
from regplug.plugins import EarlyStopping, GeneralizationGap, NonFiniteGuard
from regplug.testing import NumpyLoop


def feed(plugins, epochs):
    loop = NumpyLoop({"w": np.zeros((1, 1))}, plugins)
    ran = 0
    for ran, logs in enumerate(epochs, start=1):
        if loop.epoch_end(dict(logs)):
            break
    loop.close()
    return ran, loop


def test_gap_records_the_notebook_numbers_every_epoch_and_adds_them_to_the_logs():
    gap = GeneralizationGap()
    _, loop = feed([gap], [{"loss": 0.5, "val_loss": 0.55, "accuracy": 0.8, "val_accuracy": 0.78},
                           {"loss": 0.3, "val_loss": 0.5, "accuracy": 0.95, "val_accuracy": 0.8}])
    last = gap.records[-1]
    assert last.gap == pytest.approx(0.2) and last.pct_diff == pytest.approx(1 - 0.8 / 0.95)
    assert loop.run.history["pct_diff"] == pytest.approx([1 - 0.78 / 0.8, 1 - 0.8 / 0.95])
    assert loop.run.history["gap"] == pytest.approx([0.05, 0.2])
    assert gap.history()[0]["epoch"] == 0


def test_gap_finds_keras_accuracy_names_by_itself():
    gap = GeneralizationGap()
    feed([gap], [{"loss": 1.0, "val_loss": 1.1, "sparse_categorical_accuracy": 0.5,
                  "val_sparse_categorical_accuracy": 0.4}])
    assert gap.records[0].pct_diff == pytest.approx(0.2)


def test_gap_without_accuracies_tracks_the_losses_only():
    gap = GeneralizationGap()
    feed([gap], [{"loss": 1.0, "val_loss": 1.5}])
    assert gap.records[0].pct_diff is None and gap.records[0].gap == 0.5


def test_gap_without_validation_loss_in_the_logs_is_reported_instead_of_doing_nothing():
    gap = GeneralizationGap()
    with pytest.warns(regplug.RegplugWarning, match="generalization_gap: monitor 'val_loss' is "
                      "not in the logs.*There are no validation metrics"):
        feed([gap], [{"loss": 1.0, "accuracy": 0.5}])
    assert gap.records[0].gap is None


def test_gap_warning_names_a_renamed_validation_key():
    gap = GeneralizationGap(val_loss="valid_loss")
    with pytest.warns(regplug.RegplugWarning, match="monitor 'valid_loss'.*Did you mean 'val_loss'"):
        feed([gap], [{"loss": 1.0, "val_loss": 1.2}])


def test_gap_warns_when_it_widens_for_k_epochs_and_stops_only_when_asked(caplog):
    epochs = [{"loss": 1.0 - 0.1 * e, "val_loss": 1.0 + 0.05 * (e % 7)} for e in range(8)]
    gap = GeneralizationGap(patience=3)
    with caplog.at_level(logging.WARNING, logger="regplug.plugins.monitors"):
        ran, loop = feed([gap], epochs)
    assert ran == 8 and not loop.run.stop_requests
    assert gap.warned_at == [3, 6]
    assert "widened for 3 epochs in a row" in caplog.records[0].getMessage()

    stopping = GeneralizationGap(patience=3, stop=True)
    ran, loop = feed([stopping], epochs)
    assert ran == 4 and "overfitting" in loop.run.stop_requests[0].reason


def test_gap_counter_restarts_when_the_gap_shrinks():
    gap = GeneralizationGap(patience=2)
    feed([gap], [{"loss": 1, "val_loss": v} for v in (1.1, 1.2, 1.15, 1.2, 1.1)])
    assert gap.warned_at == []


def test_gap_state_round_trips():
    gap = GeneralizationGap()
    feed([gap], [{"loss": 1, "val_loss": 1.1}, {"loss": 0.9, "val_loss": 1.2}])
    other = GeneralizationGap()
    other.load_state_dict(gap.state_dict())
    assert other.records == gap.records and other.widening == gap.widening == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_guard_stops_on_a_non_finite_loss_with_a_reason(bad):
    guard = NonFiniteGuard()
    ran, loop = feed([guard], [{"loss": 0.4}, {"loss": 0.3, "val_loss": bad}, {"loss": 0.2}])
    assert ran == 2 and guard.stop_reason == f"val_loss is {bad} at epoch 2"
    assert loop.run.stop_requests[0].source == "non_finite_guard"


def test_guard_with_all_checks_every_logged_value():
    guard = NonFiniteGuard("all")
    ran, _ = feed([guard], [{"loss": 0.4, "l2_penalty": math.inf}])
    assert ran == 1 and guard.stop_reason == "l2_penalty is inf at epoch 1"


def test_guard_and_early_stopping_together_return_the_last_finite_best_weights():
    stopper = EarlyStopping(patience=10)
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [stopper, NonFiniteGuard()])
    for epoch, value in enumerate([0.5, 0.4, math.nan]):
        loop.params["w"][...] = epoch
        if loop.epoch_end({"loss": value, "val_loss": value}):
            break
    loop.close()
    assert loop.params["w"].item() == 1.0 and stopper.best == 0.4
    assert {r.source for r in loop.run.stop_requests} == {"early_stopping", "non_finite_guard"}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(patience=0), ValueError, "GeneralizationGap: argument 'patience' must be an integer >= 1"),
    (dict(stop="yes"), TypeError, "GeneralizationGap: argument 'stop' must be True or False"),
    (dict(val_loss=""), TypeError, "GeneralizationGap: argument 'val_loss' must be a log key"),
])
def test_gap_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeneralizationGap(**kwargs)


@pytest.mark.parametrize("monitors", [(), [""], 3])
def test_guard_bad_arguments(monitors):
    with pytest.raises((ValueError, TypeError), match="NonFiniteGuard: argument 'monitors'"):
        NonFiniteGuard(monitors)


def test_monitors_are_built_by_name():
    gap, guard = regplug.build_plugins(["generalization_gap", {"name": "non_finite_guard",
                                                               "monitors": "all"}])
    assert isinstance(gap, GeneralizationGap) and guard.monitors is None


# -- the same plugin objects in both frameworks ------------------------------------------------
def test_in_a_torch_loop_a_nan_loss_stops_and_early_stopping_restores_finite_weights():
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    gap, guard, stopper = GeneralizationGap(), NonFiniteGuard(), EarlyStopping(patience=5)
    with attach(model, opt, [gap, guard, stopper]) as reg:
        for epoch in range(10):
            opt.zero_grad()
            scale = math.inf if epoch == 3 else 1.0  # a blow-up in epoch 3
            loss = reg.loss(torch.nn.functional.mse_loss(model(x) * scale, y))
            loss.backward()
            opt.step()
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(x), y)
            if reg.epoch_end({"loss": loss.detach(), "val_loss": val}):
                break
    assert epoch == 3 and guard.stop_reason.endswith("at epoch 4")
    assert torch.isfinite(model.weight).all() and stopper.restored_epoch == 2
    assert len(gap.records) == 4


def test_in_keras_fit_the_gap_reaches_the_history():
    keras = pytest.importorskip("keras")
    from regplug.adapters.keras import Regularize

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    gap = GeneralizationGap()
    history = model.fit(x[:48], y[:48], validation_data=(x[48:], y[48:]), epochs=3, verbose=0,
                        callbacks=[Regularize([gap, NonFiniteGuard()])])
    assert history.history["pct_diff"] == pytest.approx(
        [1 - v / a for a, v in zip(history.history["accuracy"],
                                   history.history["val_accuracy"])])
    assert [r.epoch for r in gap.records] == [0, 1, 2]


def test_a_negative_gap_growing_towards_zero_is_no_overfitting_warning():
    gap = GeneralizationGap(patience=2)
    feed([gap], [{"loss": 1.0, "val_loss": v} for v in (0.6, 0.7, 0.8, 0.9, 0.95)])
    assert gap.warned_at == [] and gap.widening == 0


def test_guard_warns_about_every_explicitly_given_key_the_logs_lack():
    guard = NonFiniteGuard(("loss", "val_los"))
    with pytest.warns(regplug.RegplugWarning, match="monitor 'val_los' is not in the logs.*"
                                                     "Did you mean 'val_loss'"):
        feed([guard], [{"loss": 0.3, "val_loss": 0.4}])


def test_guard_by_default_does_not_ask_for_validation_metrics():
    feed([NonFiniteGuard()], [{"loss": 0.3}])  # RegplugWarning is an error in the tests


def test_monitor_reprs_show_their_arguments():
    assert repr(GeneralizationGap(patience=2, stop=True)) == "GeneralizationGap(patience=2, stop=True)"
    assert repr(NonFiniteGuard(["loss"])) == "NonFiniteGuard(monitors=('loss',))"
    assert repr(NonFiniteGuard("all")) == "NonFiniteGuard(monitors='all')"

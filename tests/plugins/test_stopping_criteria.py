"""Stopping criteria: each one on hand-made series, Keras' patience rule, criteria of one's
own driving EarlyStopping (NumPy and torch loops), bad arguments, and resuming."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regplug.plugins import (
    DivergenceThreshold,
    EarlyStopping,
    GeneralizationLoss,
    MetricHistory,
    NonFinite,
    Patience,
    ProgressQuotient,
    RisingStrips,
    StoppingCriterion,
    StoppingThreshold,
)
from regplug.plugins.stopping_criteria import first_stop
from regplug.testing import NumpyLoop


def stop_index(criterion, values, **kwargs):
    """The index of the first entry at which ``criterion`` says stop (None if never), fed the
    growing history as EarlyStopping feeds it."""
    history = MetricHistory(kwargs.pop("monitor", "val_loss"), **kwargs)
    for epoch, value in enumerate(values):
        history = history.append(epoch, value)
        if criterion.evaluate(history)[0]:
            return epoch
    return None


# -- the history -----------------------------------------------------------------------------
def test_history_tracks_best_and_improvements_with_keras_float32_ties():
    h = MetricHistory.of([0.4, 0.3, 0.3, 0.2], mode="min", min_delta=0.1)
    # 0.3 + 0.1 < 0.4 is false in float32 (a tie): only 0.4 and 0.2 improve
    assert h.improvements == (0, 3) and h.best == 0.2 and h.best_epoch == 3 and h.improved
    assert MetricHistory.of([0.1, 0.5, 0.4], mode="max").best == 0.5


def test_append_leaves_the_history_it_came_from_unchanged():
    h = MetricHistory.of([0.5, 0.4])
    longer = h.append(7, 0.3, {"loss": 0.2})
    assert (len(h), h.best) == (2, 0.4)
    assert longer.epoch == 7 and longer.epoch_logs == {"loss": 0.2, "val_loss": 0.3}
    assert longer.improvements == (0, 1, 2)
    with pytest.raises(AttributeError):
        longer.values = ()  # type: ignore[misc]


def test_non_finite_values_never_improve():
    h = MetricHistory.of([math.nan, 0.5, math.inf, -math.inf])
    assert h.improvements == (1,) and h.finite_indexes == (1,) and h.since_improvement() == 2


def test_history_refuses_inconsistent_fields():
    with pytest.raises(ValueError, match="'mode' must be 'min' or 'max', got 'auto'"):
        MetricHistory(mode="auto")
    with pytest.raises(ValueError, match="one entry per epoch each, got 2, 1 and 1"):
        MetricHistory(epochs=(0, 1), values=(0.3,), logs=({},))


# -- Keras' patience rule --------------------------------------------------------------------
def keras_stop_and_best(values, **kwargs):
    """(index where keras.callbacks.EarlyStopping stops or None, its best epoch)."""
    keras = pytest.importorskip("keras")

    class Model:
        stop_training = False
        metrics: tuple[object, ...] = ()

    callback = keras.callbacks.EarlyStopping(**kwargs)
    callback.set_model(Model())
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"val_loss": value})
        if callback.model.stop_training:
            return epoch, callback.best_epoch
    return None, callback.best_epoch


@pytest.mark.parametrize("kwargs", [dict(patience=0), dict(patience=2),
                                    dict(patience=3, min_delta=0.05),
                                    dict(patience=2, baseline=0.3),
                                    dict(patience=1, baseline=0.2, min_delta=0.1)])
def test_patience_stops_where_keras_early_stopping_stops(kwargs):
    rng = np.random.default_rng(sum(map(ord, str(kwargs))))
    min_delta = kwargs.get("min_delta", 0.0)
    for _ in range(60):
        values = (rng.integers(0, 10, rng.integers(2, 15)) / 10).tolist()  # a 0.1 grid: ties
        criterion = Patience(kwargs["patience"], baseline=kwargs.get("baseline"))
        ours = stop_index(criterion, values, min_delta=min_delta)
        theirs, best_epoch = keras_stop_and_best(values, **kwargs)
        assert ours == theirs, values
        if theirs is not None:
            history = MetricHistory.of(values[:theirs + 1], min_delta=min_delta)
            assert history.best_epoch == best_epoch, values


def test_patience_counts_and_says_why():
    h = MetricHistory.of([0.5, 0.4, 0.45, math.nan])
    assert Patience(2).wait(h) == 2
    assert Patience(2).evaluate(h) == (True, "patience exhausted at epoch 4: val_loss did not "
                                             "improve for 2 epochs (it is nan); best 0.4 at "
                                             "epoch 2")
    assert Patience(3).evaluate(h) == (False, None)
    assert Patience(0).evaluate(MetricHistory.of([0.5])) == (False, None)  # never at epoch 0


def test_patience_with_a_baseline_restarts_only_on_values_beating_it():
    h = MetricHistory.of([0.5, 0.4, 0.35])  # improving, but never below 0.3
    assert Patience(3, baseline=0.3).wait(h) == 3
    assert not Patience(3, baseline=0.3).evaluate(h)[0]  # never on an improvement (Keras)
    assert Patience(3, baseline=0.3).evaluate(h.append(3, 0.36))[0]
    assert Patience(3, baseline=0.38).wait(h) == 0


# -- thresholds and non-finite values --------------------------------------------------------
def test_thresholds_in_both_modes_skip_non_finite_values():
    assert StoppingThreshold(0.25).evaluate(MetricHistory.of([0.3, 0.25]))[0] is False  # strict
    assert StoppingThreshold(0.9).evaluate(MetricHistory.of([0.95], mode="max"))[0]
    assert not StoppingThreshold(0.25).evaluate(MetricHistory.of([-math.inf]))[0]
    stop, reason = DivergenceThreshold(2.0).evaluate(MetricHistory.of([0.5, 2.5]))
    assert stop and reason == "val_loss = 2.5 diverged beyond 2 at epoch 2, best 0.5 at epoch 1"
    assert DivergenceThreshold(0.5).evaluate(MetricHistory.of([0.4], mode="max"))[0]
    assert not DivergenceThreshold(2.0).evaluate(MetricHistory.of([math.inf]))[0]


def test_non_finite_stops_on_nan_and_both_infinities():
    for bad in (math.nan, math.inf, -math.inf):
        assert NonFinite().evaluate(MetricHistory.of([0.5, bad]))[0]
    assert NonFinite().evaluate(MetricHistory.of([0.5, 1e30])) == (False, None)


# -- Prechelt's criteria ---------------------------------------------------------------------
def test_gl_is_the_percent_above_the_best_so_far():
    h = MetricHistory.of([0.30, 0.20, 0.209])
    assert not GeneralizationLoss(5).evaluate(h)[0]  # GL = 4.5
    assert GeneralizationLoss(4).evaluate(h) == (
        True, "generalization loss GL = 4.5% > 4% at epoch 3: val_loss 0.209 vs best 0.2 at "
              "epoch 2")
    assert not GeneralizationLoss(0).evaluate(h.append(3, math.nan))[0]


def test_pq_only_at_strip_ends_with_the_training_progress_of_the_strip():
    val = [0.3, 0.2, 0.22, 0.24]
    train = [{"loss": v} for v in [0.5, 0.4, 0.3, 0.3]]
    pq = ProgressQuotient(0.01, strip_length=2)
    h = MetricHistory.of(val[:3], logs=train[:3])
    assert not pq.evaluate(h)[0]  # GL = 10 % but not at a strip end
    stop, reason = pq.evaluate(MetricHistory.of(val, logs=train))
    # GL = 20, P_2 = 1000 * (0.6 / (2 * 0.3) - 1) = 0: flat training, PQ = inf
    assert stop and reason.startswith("progress quotient PQ = inf > 0.01 at epoch 4")
    train[3] = {"loss": 0.2}  # P_2 = 1000 * (0.5 / 0.4 - 1) = 250, PQ = 20 / 250 = 0.08
    assert pq.evaluate(MetricHistory.of(val, logs=train))[1].startswith(
        "progress quotient PQ = 0.08 > 0.01")
    assert not ProgressQuotient(0.1, strip_length=2).evaluate(MetricHistory.of(val, logs=train))[0]


def test_pq_names_the_missing_training_error():
    with pytest.raises(ValueError, match="criterion 'pq' needs the training error 'train_err'"):
        ProgressQuotient(train_monitor="train_err").evaluate(MetricHistory.of([0.3]))


def test_up_counts_successive_rising_strip_ends_and_skips_non_finite_values():
    up = RisingStrips(2, strip_length=2)
    values = [0.3, 0.2, 0.1, 0.25, 0.2, 0.3]  # strip ends 0.2, 0.25 (up), 0.3 (up)
    assert stop_index(up, values) == 5
    assert up.rising(MetricHistory.of(values)) == 2
    assert stop_index(up, [0.3, 0.2, math.nan, 0.1, 0.25, 0.2, 0.3]) == 6  # nan not counted
    assert stop_index(RisingStrips(2, strip_length=1), [0.3, 0.4, 0.35, 0.5, 0.45]) is None


@pytest.mark.parametrize("criterion", [GeneralizationLoss(), ProgressQuotient(), RisingStrips()])
def test_prechelt_criteria_refuse_a_maximized_monitor(criterion):
    with pytest.raises(ValueError, match=r"criterion '(gl|pq|up)' \(Prechelt's\) measures a "
                                         r"validation \*error\*, but 'val_accuracy' is maximized"):
        criterion.check("val_accuracy", "max")
    criterion.check("val_loss", "min")


# -- the built-in arguments are these criteria -------------------------------------------------
@pytest.mark.parametrize("kwargs, criteria", [
    (dict(patience=2, baseline=0.25), [Patience(2, baseline=0.25)]),
    (dict(criterion="gl", alpha=3.0), [GeneralizationLoss(3.0)]),
    (dict(criterion="up", strips=2, strip_length=2), [RisingStrips(2, strip_length=2)]),
    (dict(criterion="pq", alpha=0.05, strip_length=3), [ProgressQuotient(0.05, strip_length=3)]),
])
def test_the_keyword_arguments_and_the_criteria_they_build_decide_alike(kwargs, criteria):
    rng = np.random.default_rng(5)
    for _ in range(30):
        t = np.arange(20)
        val = (0.2 + 0.002 * (t - rng.integers(3, 15)) ** 2 + rng.normal(0, 0.02, 20)).tolist()
        extra = {e: {"loss": 1.0 / (e + 1)} for e in range(20)}
        a, b = EarlyStopping(**kwargs), EarlyStopping(criteria=criteria)
        assert run(a, val, extra) == run(b, val, extra)
        assert (a.stop_reason, a.best_epoch, a.wait) == (b.stop_reason, b.best_epoch, b.wait)


def test_early_stopping_lists_its_criteria_in_the_order_it_asks_them():
    stopper = EarlyStopping(patience=3, stopping_threshold=0.1, divergence_threshold=5.0)
    assert [type(c) for c in stopper.criteria] == [NonFinite, StoppingThreshold,
                                                   DivergenceThreshold, Patience]
    assert [type(c) for c in EarlyStopping(check_finite=False, criterion="up").criteria] == [
        RisingStrips]


# -- criteria of one's own ---------------------------------------------------------------------
class GapTooWide(StoppingCriterion):
    """Stop when validation loss exceeds training loss by more than ``gap``."""

    def __init__(self, gap: float) -> None:
        self.gap = gap

    def evaluate(self, history):
        gap = history.current - history.epoch_logs["loss"]
        if gap > self.gap:
            return True, f"gap {gap:.2f} > {self.gap} at epoch {history.epoch + 1}"
        return False, None


class AfterEpochs:
    """Duck-typed (no base class): stop at the n-th recorded epoch, no reason given."""

    def __init__(self, n: int) -> None:
        self.n = n

    def evaluate(self, history):
        return len(history) >= self.n, None


def run(stopper, values, extra=None, *, key="val_loss"):
    """Epochs run in a NumpyLoop whose weight is the epoch index (so the restored weight
    names the epoch restored); returns (epochs run, restored weight)."""
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [stopper])
    ran = len(values)
    for epoch, value in enumerate(values):
        loop.params["w"][...] = epoch
        if loop.epoch_end({key: value, **(extra or {}).get(epoch, {})}):
            ran = epoch + 1
            break
    loop.close()
    return ran, loop.params["w"].item()


def test_a_criterion_of_ones_own_drives_early_stopping_in_the_numpy_loop():
    stopper = EarlyStopping(criteria=[GapTooWide(0.1)])
    val, train = [0.5, 0.4, 0.42, 0.45, 0.5], [0.45, 0.35, 0.3, 0.3, 0.3]
    ran, restored = run(stopper, val, {e: {"loss": v} for e, v in enumerate(train)})
    assert (ran, restored) == (3, 1.0)  # gap 0.12 at epoch 3; the best epoch (0.4) came back
    assert stopper.stop_reason == "gap 0.12 > 0.1 at epoch 3"
    assert stopper.criterion == "custom" and repr(stopper) == (
        "EarlyStopping(monitor='val_loss', criteria=[GapTooWide()])")


def test_criteria_are_asked_in_order_after_the_guards_and_a_missing_reason_is_filled_in():
    stopper = EarlyStopping(criteria=[AfterEpochs(3), GapTooWide(0.0)])
    assert run(stopper, [0.5, 0.4, 0.3, 0.2], {e: {"loss": 1.0} for e in range(4)})[0] == 3
    assert stopper.stop_reason == "after_epochs at epoch 3"
    stopper = EarlyStopping(criteria=[AfterEpochs(3)])
    assert run(stopper, [0.5, math.nan])[0] == 2  # check_finite still comes first
    assert stopper.stop_reason == "val_loss is nan at epoch 2, best 0.5 at epoch 1"


def test_a_criterion_returning_something_else_than_stop_and_reason_is_named():
    class Bad:
        def evaluate(self, history):
            return True

    with pytest.raises(TypeError, match=r"criterion 'bad': evaluate\(history\) must return "
                                        r"\(stop, reason\).*got True"):
        run(EarlyStopping(criteria=[Bad()]), [0.5])
    with pytest.raises(TypeError, match="criterion 'gap'"):
        first_stop([type("Gap", (), {"name": "gap", "evaluate": lambda s, h: (True, 3)})()],
                   MetricHistory.of([0.3]))


def test_a_criterion_of_ones_own_in_a_torch_loop_restores_the_best_epoch():
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    seen = {}
    stopper = EarlyStopping(criteria=[GapTooWide(0.5)])
    val = [1.0, 0.8, 0.9, 1.5, 2.0, 2.5]
    with attach(model, opt, [stopper]) as reg:
        for epoch in range(len(val)):
            opt.zero_grad()
            loss = reg.loss(torch.nn.functional.mse_loss(model(x), y))
            loss.backward()
            opt.step()
            seen[epoch] = model.weight.detach().clone()
            if reg.epoch_end({"loss": 0.8, "val_loss": val[epoch]}):
                break
    assert epoch == 3 and stopper.stop_reason == "gap 0.70 > 0.5 at epoch 4"
    assert reg.stop_requests[0].source == "early_stopping"
    assert torch.equal(model.weight, seen[1])  # the best epoch's weights came back


# -- resuming ------------------------------------------------------------------------------------
def resumed(make, values, extra, cut):
    """Run ``values`` in two NumpyLoops, with a checkpoint after ``cut`` epochs; returns
    (epochs run, restored weight, stopper)."""
    first = make()
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [first])
    for epoch in range(cut):
        loop.params["w"][...] = epoch
        loop.epoch_end({"val_loss": values[epoch], **extra.get(epoch, {})})
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    loop = NumpyLoop({"w": np.full((1, 1), 99.0)}, [second])
    loop.run.epoch = cut
    ran = len(values)
    for epoch in range(cut, len(values)):
        loop.params["w"][...] = epoch
        if loop.epoch_end({"val_loss": values[epoch], **extra.get(epoch, {})}):
            ran = epoch + 1
            break
    loop.close()
    return ran, loop.params["w"].item(), second


@pytest.mark.parametrize("make", [
    lambda: EarlyStopping(criteria=[GapTooWide(0.15), RisingStrips(2, strip_length=2)]),
    lambda: EarlyStopping(criterion="pq", alpha=0.02, strip_length=2),
    lambda: EarlyStopping(patience=3, baseline=0.35),
])
def test_a_resumed_run_decides_as_the_uninterrupted_one(make):
    values = [0.5, 0.4, 0.3, 0.33, 0.32, 0.36, 0.4, 0.45, 0.5, 0.6]
    extra = {e: {"loss": 0.3 - 0.01 * e} for e in range(len(values))}
    whole = make()
    expected = run(whole, values, extra)
    assert expected[0] < len(values), "the scenario must stop"
    for cut in range(1, expected[0]):
        ran, restored, second = resumed(make, values, extra, cut)
        assert (ran, restored) == expected, cut
        assert second.stop_reason == whole.stop_reason and second.history.values == \
            whole.history.values


def test_a_checkpoint_of_other_criteria_is_refused():
    state = EarlyStopping(criteria=[GapTooWide(0.1)]).state_dict()
    with pytest.raises(ValueError, match=r"written for criteria=\['gap_too_wide'\], this plugin "
                                         r"has criteria=\['after_epochs'\]"):
        EarlyStopping(criteria=[AfterEpochs(2)]).load_state_dict(state)
    with pytest.raises(ValueError, match="written for criterion='custom'"):
        EarlyStopping().load_state_dict(state)


@pytest.mark.parametrize("kwargs, values, cut", [
    (dict(patience=3), [0.5, 0.3, 0.4, 0.45, 0.5, 0.6], 3),
    (dict(patience=3, baseline=0.2), [0.5, 0.3, 0.25, 0.1, 0.3, 0.3, 0.3, 0.3], 5),
    (dict(patience=5, baseline=0.2), [0.5, 0.3, 0.25, 0.26, 0.27, 0.28], 3),
    (dict(criterion="up", strips=2, strip_length=2), [0.3, 0.2, 0.1, 0.25, 0.2, 0.3, 0.4], 4),
    (dict(criterion="gl", alpha=5.0), [0.30, 0.20, 0.205, 0.209, 0.211, 0.19], 3),
])
def test_a_checkpoint_in_the_0_1_0_format_resumes_exactly(kwargs, values, cut):
    whole = EarlyStopping(**kwargs)
    expected = run(whole, values)
    state = EarlyStopping(**kwargs)
    run(state, values[:cut])
    old = state.state_dict()
    finite = [v for v in old["history"]["values"] if math.isfinite(v)]
    old = {k: old[k] for k in ("monitor", "criterion", "wait", "mode", "best", "best_epoch",
                               "stopped_epoch", "stop_reason", "best_weights")}
    old.update(val=finite if kwargs.get("criterion") else [], train=[], rising=0)
    second = EarlyStopping(**kwargs)
    second.load_state_dict(old)
    assert (second.wait, second.best, second.best_epoch) == (
        old["wait"], old["best"], old["best_epoch"])
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [second])
    loop.run.epoch = cut
    ran = len(values)
    for epoch in range(cut, len(values)):
        loop.params["w"][...] = epoch
        if loop.epoch_end({"val_loss": values[epoch]}):
            ran = epoch + 1
            break
    loop.close()
    assert (ran, loop.params["w"].item()) == expected
    assert second.stop_reason == whole.stop_reason


# -- bad arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, message", [
    (lambda: Patience(-1), ValueError, "Patience: argument 'patience' must be an integer >= 0, "
                                       "got -1"),
    (lambda: Patience(2, baseline=math.inf), ValueError, "Patience: argument 'baseline' must be "
                                                         "a finite number"),
    (lambda: StoppingThreshold("0.1"), TypeError, "StoppingThreshold: argument 'threshold' must "
                                                  "be a real number"),
    (lambda: DivergenceThreshold(math.nan), ValueError, "DivergenceThreshold: argument "
                                                        "'threshold' must be a finite number"),
    (lambda: GeneralizationLoss(-1), ValueError, "GeneralizationLoss: argument 'alpha' must be a "
                                                 "finite number >= 0, got -1"),
    (lambda: ProgressQuotient(strip_length=0), ValueError, "ProgressQuotient: argument "
                                                           "'strip_length' must be an integer >= 1"),
    (lambda: ProgressQuotient(train_monitor=""), TypeError, "ProgressQuotient: argument "
                                                            "'train_monitor' must be a metric name"),
    (lambda: RisingStrips(0), ValueError, "RisingStrips: argument 'strips' must be an integer "
                                          ">= 1, got 0"),
    (lambda: RisingStrips(2, strip_length=1.5), TypeError, "RisingStrips: argument "
                                                           "'strip_length' must be an integer"),
])
def test_each_criterion_checks_its_arguments_naming_itself_and_the_range(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(criteria=GapTooWide(0.1)), TypeError, "'criteria' must be a non-empty list"),
    (dict(criteria=[]), TypeError, "'criteria' must be a non-empty list"),
    (dict(criteria=[0.5]), TypeError, "'criteria' holds 0.5, which has no evaluate"),
    (dict(criteria=[AfterEpochs(1)], criterion="gl"), ValueError,
     "pass criterion='gl' or criteria=\\[...\\], not both"),
    (dict(criteria=[AfterEpochs(1)], patience=3), ValueError,
     "'patience' applies to criterion 'patience', with criteria=\\[...\\], give it to"),
    (dict(criteria=[GeneralizationLoss()], monitor="val_accuracy"), ValueError,
     "criterion 'gl' \\(Prechelt's\\) measures a validation"),
    (dict(stopping_threshold="low"), TypeError, "'stopping_threshold' must be a real number"),
    (dict(divergence_threshold=math.inf), ValueError, "'divergence_threshold' must be a finite"),
    (dict(patience=False), TypeError, "'patience' must be an integer"),
])
def test_bad_criteria_arguments_of_early_stopping_name_the_plugin(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        EarlyStopping(**kwargs)
    assert str(info.value).startswith("EarlyStopping: ")


def test_an_epoch_check_finite_stops_on_is_left_out_of_the_history():
    stopper = EarlyStopping(patience=5)
    loop = NumpyLoop({"w": np.zeros((1, 1))}, [stopper])
    loop.epoch_end({"val_loss": 0.5})
    assert loop.epoch_end({"val_loss": math.nan})  # stops ...
    assert stopper.history.values == (0.5,) and stopper.wait == 0  # ... and is no measurement
    loop.close()
    stopper = EarlyStopping(patience=5, check_finite=False)
    run(stopper, [0.5, math.nan])
    assert len(stopper.history) == 2 and stopper.wait == 1  # counted as no improvement (Keras)

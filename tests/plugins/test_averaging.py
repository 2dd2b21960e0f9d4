"""EMA and SWA specified on NumPy: the average's formula and first-step rule, validation on
the average, the write-back, checkpoint state, bad input in one line, registry and ranges."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import regplug
from regplug.errors import RegplugWarning, UsageError
from regplug.plugins import EMA, SWA
from regplug.plugins.averaging import ema_momentum, swa_momentum
from regplug.ranges import Choice, tunable_arguments
from regplug.testing import NumpyLoop

GRAD = {"w": -np.ones(2)}  # lr 1: w grows by 1 per step


def trained(plugins, steps, *, epochs=1, validate=None):
    loop = NumpyLoop({"w": np.zeros(2)}, plugins, lr=1.0)
    for _ in range(epochs):
        for _ in range(steps):
            loop.step(GRAD)
        if validate is not None:
            validate(loop)
        loop.epoch_end({})
    return loop


def test_ema_copies_the_first_update_then_moves_by_decay():
    ema = EMA(0.9, keep_raw=True)
    loop = trained([ema], 5)
    expected = 1.0  # the first update copies w = 1
    for w in (2.0, 3.0, 4.0, 5.0):
        expected = 0.9 * expected + 0.1 * w
    np.testing.assert_allclose(ema.averages()["w"], [expected, expected], rtol=1e-12)
    np.testing.assert_array_equal(loop.params["w"], [5.0, 5.0])  # keep_raw


def test_the_model_holds_the_average_when_training_ends():
    loop = trained([EMA(0.5)], 3)
    loop.close()
    np.testing.assert_allclose(loop.params["w"], [2.25, 2.25])


def test_an_exception_leaves_the_weights_as_they_are():
    loop = trained([EMA(0.5)], 3)
    loop.run.exception = RuntimeError("boom")
    loop.close()
    np.testing.assert_array_equal(loop.params["w"], [3.0, 3.0])


def test_validation_sees_the_average_and_training_continues_from_the_raw_weights():
    seen = []
    ema = EMA(0.5, evaluate_on_average=True)

    def validate(loop):
        manager = loop.clock.manager
        manager.caller("on_validation_begin")(run=loop.run)
        seen.append(loop.params["w"].copy())
        manager.caller("on_validation_end")(run=loop.run)

    loop = trained([ema], 2, epochs=2, validate=validate)
    np.testing.assert_allclose(seen[0], [1.5, 1.5])      # average of 1, 2
    np.testing.assert_array_equal(loop.params["w"], [4.0, 4.0])  # raw: 4 steps of +1
    np.testing.assert_allclose(seen[1], [0.5 * 2.25 + 2.0] * 2)  # 2.25 then 4: 3.125


def test_swa_is_the_mean_of_the_epoch_ends_from_start():
    swa = SWA(start=2, keep_raw=True)
    trained([swa], 1, epochs=5)   # epoch ends: w = 1, 2, 3, 4, 5
    assert swa.averaged == 3
    np.testing.assert_allclose(swa.averages()["w"], [4.0, 4.0])


def test_swa_before_start_changes_nothing_and_says_so():
    loop = trained([SWA(start=5)], 1, epochs=2)
    with pytest.warns(RegplugWarning, match="SWA: training ended before epoch start=5"):
        loop.close()
    np.testing.assert_array_equal(loop.params["w"], [2.0, 2.0])


def test_swa_folds_before_validation_so_validation_includes_the_epoch():
    seen = []

    def validate(loop):
        loop.clock.manager.caller("on_validation_begin")(run=loop.run)
        seen.append(loop.params["w"].copy())
        loop.clock.manager.caller("on_validation_end")(run=loop.run)

    swa = SWA(start=0, evaluate_on_average=True)
    trained([swa], 1, epochs=3, validate=validate)
    assert [float(s[0]) for s in seen] == [1.0, 1.5, 2.0]
    assert swa.averaged == 3  # folded once per epoch, not again at the epoch's end


def test_a_state_loaded_before_training_starts_is_applied_when_it_starts():
    first = EMA(0.5, keep_raw=True)
    trained([first], 3)
    state = first.state_dict()
    assert state["started"] is True and set(state["averages"]) == {"w"}
    second = EMA(0.5, keep_raw=True)
    second.load_state_dict(state)
    assert second.state_dict()["averages"]["w"].tolist() == [2.25, 2.25]
    loop = NumpyLoop({"w": np.full(2, 3.0)}, [second], lr=1.0)
    loop.step(GRAD)  # w = 4: the average continues (no copy): 0.5·2.25 + 0.5·4
    np.testing.assert_allclose(second.averages()["w"], [3.125, 3.125])


def test_a_state_of_another_configuration_or_model_is_refused():
    state = trained([EMA(0.5)], 1).clock.manager.plugins[0].state_dict()
    with pytest.raises(ValueError, match="configured differently"):
        EMA(0.9).load_state_dict(state)
    other = EMA(0.5)
    NumpyLoop({"w": np.zeros(3)}, [other])
    with pytest.raises(ValueError, match=r"EMA: the checkpoint's averages do not fit .*w: "
                                         r"saved \(2,\), model \(3,\)"):
        other.load_state_dict(state)


def test_a_parameter_whose_shape_changed_is_refused_before_the_write_back():
    loop = trained([EMA(0.5)], 1)
    handle = loop.run.params[0]
    object.__setattr__(handle, "tensor", np.zeros(5))
    with pytest.raises(UsageError, match=r"^EMA: parameter 'w' changed shape from \(2,\) to "
                                         r"\(5,\)"):
        loop.close()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan")])
def test_a_decay_outside_0_1_is_refused_in_one_line(bad):
    with pytest.raises(ValueError) as err:
        EMA(bad)
    message = str(err.value)
    assert message.startswith(f"EMA: argument 'decay' must be in (0, 1), exclusive, got {bad!r}")
    assert "decay=0.999" in message and "\n" not in message


@pytest.mark.parametrize("bad", ["0.9", True, None])
def test_a_decay_that_is_no_number_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"^EMA: argument 'decay' must be a number in \(0, 1\)"):
        EMA(bad)


def test_other_bad_arguments_name_plugin_and_argument():
    with pytest.raises(ValueError, match=r"^SWA: argument 'start' must be an integer >= 0, got -1"):
        SWA(start=-1)
    with pytest.raises(TypeError, match="SWA: argument 'start'"):
        SWA(start=1.5)
    with pytest.raises(TypeError, match="EMA: argument 'keep_raw'"):
        EMA(0.9, keep_raw="yes")


def test_the_pure_momenta():
    assert ema_momentum(0.9, first=True) == 0.0 and ema_momentum(0.9, first=False) == 0.9
    assert [swa_momentum(n) for n in range(3)] == [0.0, 0.5, 2 / 3]


def test_registered_by_name_tunable_and_described():
    ema = regplug.build_plugins([{"name": "ema", "decay": 0.99}])[0]
    swa = regplug.build_plugins([{"name": "swa", "start": 3}])[0]
    assert repr(ema) == "EMA(decay=0.99)" and repr(swa) == "SWA(start=3)"
    decays = tunable_arguments(EMA)["decay"]
    assert isinstance(decays, Choice) and (min(decays.options), max(decays.options)) == (
        0.9, 0.9999)
    for decay in decays.options:
        assert repr(regplug.build_plugins([{"name": "ema", "decay": decay}])[0]) == (
            f"EMA(decay={decay!r})")
    described = repr(EMA(0.9, include="head.*", evaluate_on_average=True))
    assert described.startswith("EMA(decay=0.9, ") and "include=['head.*']" in described
    assert described.endswith(", evaluate_on_average=True)")


def test_only_the_selected_parameters_are_averaged():
    loop = NumpyLoop({"w": np.zeros(2), "head.w": np.zeros(2)}, [EMA(0.5, include="head.*")],
                     lr=1.0)
    for _ in range(3):
        loop.step({"w": -np.ones(2), "head.w": -np.ones(2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.close()
    np.testing.assert_array_equal(loop.params["w"], [3.0, 3.0])
    np.testing.assert_allclose(loop.params["head.w"], [2.25, 2.25])


def test_the_average_is_written_after_early_stopping_restores_its_best_weights():
    from regplug.plugins import EarlyStopping

    for order in ("ema first", "early stopping first"):
        ema, stop = EMA(0.5), EarlyStopping(monitor="val_loss", patience=10)
        loop = NumpyLoop({"w": np.zeros(2)}, [ema, stop] if order == "ema first" else
                         [stop, ema], lr=1.0)
        for val_loss in (1.0, 2.0, 3.0):  # the best epoch is the first (w = 1)
            loop.step(GRAD)
            loop.epoch_end({"val_loss": val_loss})
        loop.close()
        np.testing.assert_allclose(loop.params["w"], [2.25, 2.25], err_msg=order)


def test_a_new_run_first_puts_back_the_weights_a_run_abandoned_in_validation_swapped_out():
    # The Hugging Face Trainer and Keras call no callback when an exception ends training:
    # a run that raised inside a validation on the average is abandoned with the averages
    # swapped in. The same plugin starting the next train() must put the trained weights
    # back before it takes them as its own.
    ema = EMA(0.5, evaluate_on_average=True)
    loop = trained([ema], 3)  # raw w = 3, average 2.25
    loop.clock.manager.caller("on_validation_begin")(run=loop.run)
    np.testing.assert_allclose(loop.params["w"], [2.25, 2.25])
    loop.clock.abandon()  # what the adapters do when they find the training gone
    NumpyLoop(loop.params, [ema], lr=1.0)  # the next train() with the same plugin
    np.testing.assert_array_equal(loop.params["w"], [3.0, 3.0])

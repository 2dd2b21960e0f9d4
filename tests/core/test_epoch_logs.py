"""An epoch's logs are checked in one place, the epoch clock, for every adapter: a bad key or
value is named with what is allowed, before any plugin sees the epoch."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import regplug
from regplug.clock import EpochClock, Wording, check_logs
from regplug.manager import PluginManager
from regplug.testing import NumpyLoop, numpy_run

ALLOWED = ("a real number (a float, an int, a NumPy scalar or a one-element array or tensor; "
           "NaN and inf are allowed)")


def numpy_loop() -> NumpyLoop:
    return NumpyLoop({"fc.weight": np.ones((2, 2))}, [regplug.plugins.EarlyStopping(patience=2)])


@pytest.mark.parametrize(("value", "got"), [
    ("abc", "'abc' of type str"),
    (None, "None of type NoneType"),
    (True, "True of type bool"),
    (b"0.5", "b'0.5' of type bytes"),
    ([0.5], "[0.5] of type list"),
    (np.array([0.5, 0.4]), "an array of shape (2,); reduce it to one number first"),
    (np.zeros((1, 2)), "an array of shape (1, 2); reduce it to one number first"),
    (1 + 2j, "(1+2j) of type complex"),
])
def test_a_bad_value_is_named_with_its_key_and_what_is_allowed(value, got):
    loop = numpy_loop()
    message = f"NumpyLoop.epoch_end: logs['val_loss'] must be {ALLOWED}, got {got}"
    with pytest.raises(TypeError, match=re.escape(message)):
        loop.epoch_end({"loss": 0.3, "val_loss": value})
    assert loop.run.epoch == 0 and loop.run.history == {}  # nothing recorded, no epoch ran


@pytest.mark.parametrize("key", [1, "", None, ("val", "loss")])
def test_a_key_that_is_not_a_metric_name_is_named(key):
    with pytest.raises(TypeError, match=re.escape(
            f"NumpyLoop.epoch_end: every key of logs must be a non-empty metric name (a str), "
            f"got {key!r} of type {type(key).__name__} (value 0.5)")):
        numpy_loop().epoch_end({key: 0.5})


def test_non_mappings_are_refused_by_name():
    with pytest.raises(TypeError, match=r"NumpyLoop.epoch_end: 'logs' must be a mapping"):
        numpy_loop().epoch_end([("val_loss", 0.5)])  # type: ignore[arg-type]


def test_numbers_of_every_kind_are_accepted_as_floats_non_finite_included():
    loop = numpy_loop()
    loop.epoch_end({"val_loss": np.float32(0.5), "loss": np.array(0.25), "n": 3,
                    "bad": float("nan"), "worse": -math.inf})
    assert loop.run.history["val_loss"] == [0.5] and loop.run.history["loss"] == [0.25]
    assert loop.run.history["n"] == [3.0] and math.isnan(loop.run.history["bad"][0])


def test_the_clock_checks_the_logs_of_every_adapter_and_names_the_adapter():
    """An adapter calling the clock directly (Keras' callback does) gets the same check."""
    run = numpy_run({"w": np.ones(2)})
    clock = EpochClock(run, PluginManager([]), Wording(adapter="Regularize"))
    clock.train_begin()
    with pytest.raises(TypeError, match=r"^Regularize's epoch logs: logs\['val_loss'\] must be"):
        clock.epoch_end({"val_loss": "abc"})  # type: ignore[dict-item]
    logs = {"val_loss": np.float64(0.5)}
    clock.epoch_end(logs)  # type: ignore[arg-type]
    assert type(logs["val_loss"]) is float  # plugins see plain floats


def test_the_torch_adapter_names_the_key():
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import attach

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, opt, [regplug.plugins.L2(0.1)]) as reg:
        for logs, message in [
            ({"val_loss": "abc"}, r"reg.epoch_end: logs\['val_loss'\] must be a real number"),
            ({"val_loss": None}, r"logs\['val_loss'\] must be .*got None of type NoneType"),
            ({"val_loss": torch.ones(3)}, r"logs\['val_loss'\].*array of shape \(3,\)"),
            ({1: 0.5}, r"reg.epoch_end: every key of logs must be a non-empty metric name"),
        ]:
            with pytest.raises(TypeError, match=message):
                reg.epoch_end(logs)  # type: ignore[arg-type]
        reg.epoch_end({"val_loss": torch.tensor(0.5)})
        assert reg.history["val_loss"] == [0.5] and reg.run.epoch == 1


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                   st.binary(max_size=3), st.lists(st.floats(), max_size=2),
                   st.complex_numbers(), st.builds(np.float32, st.floats(width=32)))
keys = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.floats())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=4))
def test_any_logs_give_floats_or_a_type_error_naming_the_offending_key(logs):
    try:
        clean = check_logs(logs, where="reg.epoch_end")
    except TypeError as err:
        text = str(err)
        assert text.startswith("reg.epoch_end: ")
        assert any(f"logs[{k!r}]" in text or f"got {k!r} of type" in text for k in logs)
    else:
        assert list(clean) == list(logs)
        assert all(type(v) is float for v in clean.values())


@pytest.mark.parametrize("shape", [(1,), (1, 1), (1, 1, 1)])
def test_a_one_element_metric_of_any_shape_is_that_number(shape):
    # Lightning's EarlyStopping squeezes a metric of shape (1, 1, 1); Keras hands (1,) arrays.
    loop = numpy_loop()
    loop.epoch_end({"val_loss": np.full(shape, 0.25, dtype=np.float32)})
    assert loop.run.history["val_loss"] == [0.25]

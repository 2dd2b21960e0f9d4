"""Schedules and DropoutSchedule without a framework: the math, the configs, the bad input,
and what the plugin hands the adapter's dropout handles at each moment of the clock."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import regplug
from regplug import (
    Constant,
    Cosine,
    DropoutHandle,
    EarlyDropout,
    ExponentialRamp,
    LateDropout,
    Linear,
    LinearWarmup,
    Piecewise,
    Step,
)
from regplug.clock import EpochClock, Wording
from regplug.manager import PluginManager
from regplug.plugins import DropoutSchedule
from regplug.plugins.dropout import select_dropout_layers
from regplug.schedules import as_schedule
from regplug.testing import numpy_run
from regplug.window import StepWindow

# -- the schedules' math ----------------------------------------------------------------------

# (schedule, the value at clock t written out independently)
FORMULAS = [
    (Linear(0.1, 0.5, span=8, per="step"), lambda t: 0.1 + 0.4 * min(t, 8) / 8),
    (Linear(0.6, 0.0, span=5, per="epoch"), lambda t: 0.6 - 0.6 * min(t, 5) / 5),
    (Cosine(0.4, 0.1, span=6, per="step"),
     lambda t: 0.1 + 0.3 * (1 + math.cos(math.pi * min(t, 6) / 6)) / 2),
    (Cosine(0.0, 0.3, span=3, per="epoch"),
     lambda t: 0.3 - 0.3 * (1 + math.cos(math.pi * min(t, 3) / 3)) / 2),
    (Step(0.4, every=3, gamma=0.5, per="step"), lambda t: 0.4 * 0.5 ** (t // 3)),
    (Step(0.2, every=1, gamma=0.0, per="epoch"), lambda t: 0.2 if t == 0 else 0.0),
    (Piecewise([0.0, 0.25, 0.1], boundaries=[2, 7], per="step"),
     lambda t: 0.0 if t < 2 else 0.25 if t < 7 else 0.1),
    (ExponentialRamp(0.5, gamma=0.3, per="step"), lambda t: 0.5 * (1 - math.exp(-0.3 * t))),
    (ExponentialRamp(0.2, gamma=2.0, per="epoch"), lambda t: 0.2 * (1 - math.exp(-2.0 * t))),
    (EarlyDropout(0.15, cutoff=4, per="step"), lambda t: 0.15 if t < 4 else 0.0),
    (LateDropout(0.35, cutoff=2, per="epoch"), lambda t: 0.0 if t < 2 else 0.35),
    (LinearWarmup(0.3, warmup_steps=4, start=0.1), lambda t: 0.1 + 0.2 * min(t, 4) / 4),
    (LinearWarmup(0.3, warmup_epochs=3), lambda t: 0.3 * min(t, 3) / 3),
    (Constant(0.25), lambda t: 0.25),
]
IDS = [repr(s) for s, _ in FORMULAS]


def _clock(schedule):
    """Which argument of schedule(step, epoch) the schedule reads."""
    return "epoch" if schedule.varies_per == "epoch" else "step"


@pytest.mark.parametrize("schedule,formula", FORMULAS, ids=IDS)
def test_each_schedule_gives_its_formula_on_its_own_clock_and_ignores_the_other(schedule, formula):
    for t in range(40):
        expected = pytest.approx(formula(t), rel=1e-12, abs=1e-15)
        if _clock(schedule) == "step":
            assert schedule(t, 0) == expected and schedule(t, 17) == expected
        else:
            assert schedule(0, t) == expected and schedule(1234, t) == expected


@pytest.mark.parametrize("schedule,formula", FORMULAS, ids=IDS)
def test_bounds_are_the_smallest_and_largest_value_the_schedule_takes(schedule, formula):
    values = [schedule(t, t) for t in list(range(2000)) + [10**6, 10**9]]
    assert schedule.bounds() == (min(values), max(values))


def test_varies_per_says_how_often_the_value_can_change():
    assert Constant(0.1).varies_per is None
    assert LinearWarmup(0.1, warmup_steps=3).varies_per == "step"
    assert LinearWarmup(0.1, warmup_epochs=3).varies_per == "epoch"
    for schedule, _ in FORMULAS[:-3]:
        assert schedule.varies_per == schedule.per


def test_ramps_end_exactly_at_their_end_value():
    # start + (end - start) · 1 would give 0.30000000000000004 here
    assert Linear(0.1, 0.3, span=7, per="step")(7, 0) == 0.3
    assert LinearWarmup(0.3, warmup_steps=7, start=0.1)(100, 0) == 0.3
    assert Cosine(0.1, 0.3, span=7, per="step")(7, 0) == 0.3


@pytest.mark.parametrize("schedule", [s for s, _ in FORMULAS], ids=IDS)
def test_to_config_round_trips_through_json_and_as_schedule(schedule):
    config = json.loads(json.dumps(schedule.to_config()))
    assert isinstance(config["schedule"], str)  # a registered name: as_schedule takes it
    rebuilt = as_schedule(config, owner="test", arg="x")
    assert rebuilt == schedule and type(rebuilt) is type(schedule)
    assert rebuilt.to_config() == config


def test_a_schedule_table_in_a_toml_config_builds_the_plugin(tmp_path):
    path = tmp_path / "reg.toml"
    path.write_text('[[plugins]]\nname = "dropout_schedule"\nlayers = ["Dropout", "Dropout2d"]\n'
                    'exclude = "head.*"\n'
                    'rate = {schedule = "piecewise", values = [0.0, 0.2], boundaries = [3], '
                    'per = "epoch"}\n')
    [plugin] = regplug.load_config(path)
    assert isinstance(plugin, DropoutSchedule)
    assert plugin.schedule == Piecewise([0.0, 0.2], boundaries=[3], per="epoch")
    assert plugin.config() == {
        "rate": {"schedule": "piecewise", "values": [0.0, 0.2], "boundaries": [3],
                 "per": "epoch"},
        "layers": ["Dropout", "Dropout2d"], "include": [], "exclude": ["head.*"]}


# -- bad input ------------------------------------------------------------------------------

BAD = [
    (lambda: DropoutSchedule(1.0), ValueError,
     r"^DropoutSchedule: argument 'rate' must be a finite number in \[0, 1\), got 1.0$"),
    (lambda: DropoutSchedule(-0.1), ValueError,
     r"^DropoutSchedule: argument 'rate' must be a finite number in \[0, 1\), got -0.1$"),
    (lambda: DropoutSchedule(math.nan), ValueError,
     r"^DropoutSchedule: argument 'rate' must be a finite number in \[0, 1\), got nan$"),
    (lambda: DropoutSchedule("0.3"), TypeError,
     r"^DropoutSchedule: argument 'rate' must be a real number in \[0, 1\), got '0.3' of type str$"),
    (lambda: DropoutSchedule(Linear(0.0, 1.0, span=5, per="step")), ValueError,
     r"^DropoutSchedule: argument 'rate' must be a finite number in \[0, 1\), got 1.0 "
     r"\(a value of the schedule Linear\(start=0.0, end=1.0, span=5, per='step'\)\)$"),
    (lambda: DropoutSchedule(Piecewise([0.1, -0.2], boundaries=[3], per="epoch")), ValueError,
     r"^DropoutSchedule: argument 'rate' must be a finite number in \[0, 1\), got -0.2 "
     r"\(a value of the schedule Piecewise"),
    (lambda: DropoutSchedule({"schedule": "cosine_restarts", "start": 0.1}), ValueError,
     r"^DropoutSchedule: argument 'rate.schedule' must be one of 'constant', 'linear_warmup', "
     r"'linear', 'cosine', 'step', 'piecewise', 'exponential_ramp', 'early_dropout', "
     r"'late_dropout'; got 'cosine_restarts'$"),
    (lambda: DropoutSchedule({"start": 0.1}), ValueError,
     r"^DropoutSchedule: argument 'rate.schedule' must be one of .*; got None$"),
    (lambda: DropoutSchedule({"schedule": "linear", "start": 0.0, "end": 0.5, "span": 4}),
     TypeError, r"^DropoutSchedule: argument 'rate': schedule 'linear' takes start, end, span, "
                r"per; missing a required argument: 'per'$"),
    (lambda: DropoutSchedule({"schedule": "early_dropout", "value": 0.1, "cutoff": 0,
                              "per": "epoch"}), ValueError,
     r"^DropoutSchedule: argument 'rate': EarlyDropout: argument 'cutoff' must be an integer "
     r">= 1, got 0$"),
    (lambda: DropoutSchedule(0.1, layers=3), TypeError,
     r"^DropoutSchedule: argument 'layers' must be a name pattern or a list of them"),
    (lambda: DropoutSchedule(0.1, include=[""]), TypeError,
     r"^DropoutSchedule: argument 'include' must be a name pattern"),
    (lambda: Linear(0.0, 0.3, span=0, per="step"), ValueError,
     r"^Linear: argument 'span' must be an integer >= 1, got 0$"),
    (lambda: Linear(0.0, 0.3, span=5, per="batch"), ValueError,
     r"^Linear: argument 'per' must be one of 'step', 'epoch'; got 'batch'$"),
    (lambda: Linear(0.0, 0.3, span=5), TypeError, "missing 1 required keyword-only argument: 'per'"),
    (lambda: Cosine(math.inf, 0.0, span=5, per="step"), ValueError,
     r"^Cosine: argument 'start' must be a finite number"),
    (lambda: Step(0.4, every=2, gamma=1.5, per="epoch"), ValueError,
     r"^Step: argument 'gamma' must be a finite number in \[0, 1\], got 1.5$"),
    (lambda: Step(0.4, every=0, gamma=0.5, per="epoch"), ValueError,
     r"^Step: argument 'every' must be an integer >= 1, got 0$"),
    (lambda: Piecewise([0.1, 0.2], boundaries=[1, 2], per="step"), ValueError,
     r"^Piecewise: 'values' must have one entry more than 'boundaries' \(got 2 values and 2 "
     r"boundaries\)$"),
    (lambda: Piecewise([0.1, 0.2, 0.3], boundaries=[5, 5], per="step"), ValueError,
     r"^Piecewise: argument 'boundaries' must be strictly increasing, got \[5, 5\]$"),
    (lambda: Piecewise("0.1", boundaries=[], per="step"), TypeError,
     r"^Piecewise: argument 'values' must be a list, got '0.1'$"),
    (lambda: Piecewise([0.1, "x"], boundaries=[2], per="step"), TypeError,
     r"^Piecewise: argument 'values\[1\]' must be a real number"),
    (lambda: ExponentialRamp(0.5, gamma=0.0, per="step"), ValueError,
     r"^ExponentialRamp: argument 'gamma' must be a finite number > 0, got 0.0$"),
    (lambda: EarlyDropout(0.1, cutoff=2.5, per="epoch"), TypeError,
     r"^EarlyDropout: argument 'cutoff' must be an integer >= 1, got 2.5 of type float$"),
    (lambda: LateDropout(0.1, cutoff=-1, per="epoch"), ValueError,
     r"^LateDropout: argument 'cutoff' must be an integer >= 1, got -1$"),
]


@pytest.mark.parametrize("build,error,message", BAD, ids=[m[:60] for _, _, m in BAD])
def test_bad_arguments_are_refused_naming_the_class_the_argument_and_the_range(build, error,
                                                                               message):
    with pytest.raises(error, match=message):
        build()


def test_the_plugin_is_available_by_name():
    plugin = regplug.create_plugin("dropout_schedule", rate=0.2, include="enc.*")
    assert repr(plugin) == "DropoutSchedule(rate=0.2, include=['enc.*'])"
    assert plugin.name == "dropout_schedule" and plugin.requires == ("dropout_layers",)


# -- the plugin on a run without a framework --------------------------------------------------

class FakeLayers:
    """Dropout 'layers' that are plain numbers: records every rate the plugin hands over."""

    def __init__(self, **layers: tuple[str, float]) -> None:
        self.types = {name: kind for name, (kind, _) in layers.items()}
        self.built = {name: rate for name, (_, rate) in layers.items()}
        self.rates = dict(self.built)
        self.writes: list[tuple[str, float]] = []

    def handles(self) -> list[DropoutHandle]:
        return [DropoutHandle(name, self.types[name], self.rates[name],
                              lambda rate, name=name: self._write(name, rate))
                for name in self.rates]

    def _write(self, name: str, rate: float) -> None:
        self.rates[name] = rate
        self.writes.append((name, rate))


def _train(plugin, layers: FakeLayers, *, epochs: int, steps: int, start_step: int = 0,
           start_epoch: int = 0) -> list[dict[str, float]]:
    """Drive the hooks as an adapter does; return the layers' rates at each batch."""
    run = numpy_run({"w": np.ones((2, 2))})
    run.dropout_layers_provider = layers.handles
    run.step, run.epoch = start_step, start_epoch
    clock = EpochClock(run, PluginManager([plugin]), Wording(adapter="test"))
    window = StepWindow(clock)
    clock.train_begin()
    seen = []
    for _ in range(epochs):
        for _ in range(steps):
            clock.batch_begin()
            seen.append(dict(layers.rates))  # what the forward pass of this batch uses
            window.before_step()
            window.after_step()
        clock.epoch_end({})
    clock.train_end()
    return seen


def test_a_per_epoch_schedule_sets_the_rate_before_each_epoch_and_writes_only_changes():
    layers = FakeLayers(drop=("Dropout", 0.0))
    schedule = Piecewise([0.1, 0.3, 0.0], boundaries=[2, 3], per="epoch")
    plugin = DropoutSchedule(schedule)
    assert plugin.hooks() == ("on_train_begin", "on_epoch_begin", "on_train_end")
    seen = _train(plugin, layers, epochs=4, steps=3)
    assert [s["drop"] for s in seen] == [schedule(0, e) for e in range(4) for _ in range(3)]
    assert layers.writes == [("drop", 0.1), ("drop", 0.3), ("drop", 0.0)]  # 0.0 = built: no restore write


def test_a_per_step_schedule_sets_the_rate_before_every_batch():
    layers = FakeLayers(drop=("Dropout", 0.5))
    schedule = ExponentialRamp(0.6, gamma=0.4, per="step")
    plugin = DropoutSchedule(schedule)
    assert plugin.hooks() == ("on_train_begin", "on_batch_begin", "on_train_end")
    seen = _train(plugin, layers, epochs=3, steps=4)
    assert [s["drop"] for s in seen] == [schedule(t, 0) for t in range(12)]
    assert [r for _, r in layers.writes] == [schedule(t, 0) for t in range(12)] + [0.5]


def test_a_constant_rate_is_set_once_and_the_plugin_does_no_per_batch_work():
    layers = FakeLayers(a=("Dropout", 0.0), b=("Dropout2d", 0.5))
    plugin = DropoutSchedule(0.25)
    assert plugin.hooks() == ("on_train_begin", "on_train_end")
    seen = _train(plugin, layers, epochs=2, steps=3)
    assert seen == [{"a": 0.25, "b": 0.25}] * 6
    assert layers.writes == [("a", 0.25), ("b", 0.25), ("a", 0.0), ("b", 0.5)]


def test_training_end_gives_every_layer_back_the_rate_it_started_with():
    layers = FakeLayers(a=("Dropout", 0.1), b=("AlphaDropout", 0.0), c=("Dropout", 0.7))
    _train(DropoutSchedule(LateDropout(0.4, cutoff=1, per="epoch"), exclude="c"), layers,
           epochs=2, steps=2)
    assert layers.rates == layers.built
    assert ("c", 0.4) not in layers.writes


def test_a_resumed_run_starts_from_the_rate_of_its_clock():
    layers = FakeLayers(drop=("Dropout", 0.0))
    schedule = Linear(0.0, 0.4, span=4, per="epoch")
    seen = _train(DropoutSchedule(schedule), layers, epochs=2, steps=2, start_step=20,
                  start_epoch=2)
    assert [s["drop"] for s in seen] == pytest.approx([0.2, 0.2, 0.3, 0.3])
    assert layers.writes[0] == ("drop", 0.2)  # at on_train_begin: no batch with a stale rate


SELECTION = [
    ({}, ["enc.drop", "enc.drop2d", "head.drop", "alpha"]),
    ({"layers": "Dropout"}, ["enc.drop", "head.drop"]),
    ({"layers": ["Dropout2d", "AlphaDropout"]}, ["enc.drop2d", "alpha"]),
    ({"layers": "Dropout*d"}, ["enc.drop2d"]),
    ({"include": "enc.*"}, ["enc.drop", "enc.drop2d"]),
    ({"exclude": ["enc.*", "alpha"]}, ["head.drop"]),
    ({"layers": "Dropout", "include": "*drop", "exclude": "head.*"}, ["enc.drop"]),
]


@pytest.mark.parametrize("kwargs,expected", SELECTION, ids=[str(k) for k, _ in SELECTION])
def test_layers_are_chosen_by_type_and_by_name(kwargs, expected):
    layers = FakeLayers(**{"enc.drop": ("Dropout", 0.1), "enc.drop2d": ("Dropout2d", 0.0),
                           "head.drop": ("Dropout", 0.0), "alpha": ("AlphaDropout", 0.2)})
    seen = _train(DropoutSchedule(0.35, **kwargs), layers, epochs=1, steps=1)
    assert sorted(n for n, r in seen[0].items() if r == 0.35) == sorted(expected)
    plugin = DropoutSchedule(0.35, **kwargs)
    chosen = select_dropout_layers(layers.handles(), layers=plugin.layers,
                                   include=plugin.include, exclude=plugin.exclude)
    assert [h.name for h in chosen] == [n for n in layers.rates if n in expected]


def test_a_selection_matching_no_layer_warns_listing_the_layers_found():
    layers = FakeLayers(**{"enc.drop": ("Dropout", 0.1), "sd": ("Dropout2d", 0.0)})
    with pytest.warns(regplug.RegplugWarning, match=(
            r"^DropoutSchedule: the selection \(layers=\['Dropout3d'\], include=\['enc.\*'\]\) "
            r"matches none of the model's dropout layers, so it changes nothing. Dropout layers "
            r"found: 'enc.drop' \(Dropout, rate 0.1\), 'sd' \(Dropout2d, rate 0\).$")):
        _train(DropoutSchedule(0.2, layers="Dropout3d", include="enc.*"), layers, epochs=1,
               steps=1)
    assert layers.writes == []


def test_a_model_without_dropout_layers_is_warned_about():
    with pytest.warns(regplug.RegplugWarning, match=(
            r"DropoutSchedule: the selection \(all\) matches none .* The model has no dropout "
            "layer the numpy adapter can schedule.")):
        _train(DropoutSchedule(0.2), FakeLayers(), epochs=1, steps=1)


def test_an_adapter_without_dropout_handles_refuses_the_plugin():
    run = numpy_run({"w": np.ones((2, 2))})  # no dropout_layers_provider
    with pytest.raises(regplug.UnsupportedPluginError, match="does not hand out dropout layers"):
        EpochClock(run, PluginManager([DropoutSchedule(0.1)]), Wording(adapter="test")).train_begin()


def test_state_dict_holds_the_config_and_refuses_a_different_schedule():
    plugin = DropoutSchedule(Cosine(0.3, 0.0, span=10, per="step"), layers="Dropout")
    state = json.loads(json.dumps(plugin.state_dict()))
    twin = DropoutSchedule(Cosine(0.3, 0.0, span=10, per="step"), layers="Dropout")
    twin.load_state_dict(state)
    other = DropoutSchedule(Cosine(0.3, 0.0, span=20, per="step"), layers="Dropout")
    with pytest.raises(ValueError, match=r"DropoutSchedule\(rate=Cosine.*configured differently"):
        other.load_state_dict(state)

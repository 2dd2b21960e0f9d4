"""Schedules: how a strength or a rate changes during training.

A schedule is a pure function of the training clock, ``schedule(step, epoch) -> float``.
Plugins accept a plain number (a :class:`Constant`) or a schedule wherever they take a
strength or a rate; :func:`as_schedule` turns a number, a schedule or a config table into one
and checks its range. :class:`Schedule` describes the two clocks, lists every schedule with
its formula and shows the config form.

Docs: docs/plugins/dropout.md (schedules for every plugin's strengths and rates).
"""

from __future__ import annotations

import bisect
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from .validation import check_choice, check_int, check_real

__all__ = ["Schedule", "Constant", "LinearWarmup", "Linear", "Cosine", "Step", "Piecewise",
           "ExponentialRamp", "EarlyDropout", "LateDropout", "CLOCKS", "as_schedule"]

#: The clocks a schedule can follow (its ``per`` argument).
CLOCKS: tuple[str, ...] = ("step", "epoch")


class Schedule(ABC):
    """A value that depends on the training clock: ``schedule(step, epoch) -> float``.

    ``step`` counts optimizer updates and ``epoch`` counts epochs, both from 0. Adapters
    evaluate the schedules of a run before every training batch and hand the value to the
    compiled step (a Python float in PyTorch, a non-trainable variable in Keras), so a
    schedule takes effect from the step it is due.

    Every schedule below except :class:`Constant` and :class:`LinearWarmup` follows one
    clock, named explicitly with ``per="step"`` (lengths count optimizer updates; the value
    may change at every batch) or ``per="epoch"`` (lengths count epochs; the value changes
    only between epochs). There is no default: ``cutoff=50`` means something very different
    in steps and in epochs.

    ====================  ===================================  ==============================
    config name           class                                value at clock ``t``
    ====================  ===================================  ==============================
    ``constant``          ``Constant(value)``                  ``value``
    ``linear_warmup``     ``LinearWarmup(value, warmup_*=n)``  ``start → value`` over ``n``, held
    ``linear``            ``Linear(start, end, span=n)``       ``start → end`` over ``n``, held
    ``cosine``            ``Cosine(start, end, span=n)``       half a cosine, ``start → end``
    ``step``              ``Step(value, every=k, gamma=g)``    ``value · g^⌊t/k⌋``
    ``piecewise``         ``Piecewise(values, boundaries=b)``  ``values[i]``, ``b[i-1] ≤ t < b[i]``
    ``exponential_ramp``  ``ExponentialRamp(value, gamma=g)``  ``value · (1 − e^(−g·t))``
    ``early_dropout``     ``EarlyDropout(value, cutoff=c)``    ``value`` while ``t < c``, then 0
    ``late_dropout``      ``LateDropout(value, cutoff=c)``     0 while ``t < c``, then ``value``
    ====================  ===================================  ==============================

    In a config (TOML, or a dict) a schedule is a table naming it:
    ``rate = {schedule = "linear", start = 0.0, end = 0.3, span = 10, per = "epoch"}``;
    :meth:`to_config` writes that form back and :func:`as_schedule` reads it.

    >>> warm = LinearWarmup(0.01, warmup_steps=100)
    >>> warm(0, 0), warm(50, 0), warm(500, 3)
    (0.0, 0.005, 0.01)
    >>> as_schedule({"schedule": "early_dropout", "value": 0.1, "cutoff": 2, "per": "epoch"},
    ...             owner="demo", arg="rate")
    EarlyDropout(value=0.1, cutoff=2, per='epoch')
    """

    @abstractmethod
    def __call__(self, step: int, epoch: int) -> float:
        """The value in force during optimizer step ``step`` of epoch ``epoch``."""

    @abstractmethod
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value the schedule takes, counting a limit it only
        approaches (the ramp's end of :class:`ExponentialRamp`, the 0 of a decaying
        :class:`Step`): floating point reaches it. :func:`as_schedule` checks both."""

    @property
    def varies_per(self) -> str | None:
        """How often the value can change: ``"step"``, ``"epoch"``, or ``None`` (never).

        Plugins that push a value into the model (a dropout rate) use it to update only as
        often as needed. ``"step"``, the default for schedules that do not say, is always
        correct.
        """
        return "step"

    def to_config(self) -> dict[str, Any]:
        """A plain description, as a config writes it: :func:`as_schedule` rebuilds the
        schedule from it (for the schedules registered by name)."""
        out: dict[str, Any] = {"schedule": _config_name(type(self))}
        for key, value in vars(self).items():
            if value is not None:  # an optional argument left out
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class Constant(Schedule):
    """The same value at every step."""

    def __init__(self, value: float) -> None:
        self.value = check_real("Constant", "value", value, low=-math.inf)

    def __call__(self, step: int, epoch: int) -> float:
        return self.value

    def bounds(self) -> tuple[float, float]:
        return (self.value, self.value)

    @property
    def varies_per(self) -> str | None:
        return None


class LinearWarmup(Schedule):
    """Ramp linearly from ``start`` to ``value`` over the first steps (or epochs), then hold.

    Exactly one of ``warmup_steps`` and ``warmup_epochs`` is given. With ``warmup_epochs`` the
    value changes once per epoch: epoch ``e`` gets ``start + (value - start) * e / warmup_epochs``.
    """

    def __init__(self, value: float, *, warmup_steps: int | None = None,
                 warmup_epochs: int | None = None, start: float = 0.0) -> None:
        self.value = check_real("LinearWarmup", "value", value, low=-math.inf)
        self.start = check_real("LinearWarmup", "start", start, low=-math.inf)
        if (warmup_steps is None) == (warmup_epochs is None):
            raise ValueError("LinearWarmup: give exactly one of 'warmup_steps' and "
                             f"'warmup_epochs' (got warmup_steps={warmup_steps!r}, "
                             f"warmup_epochs={warmup_epochs!r})")
        self.warmup_steps = None if warmup_steps is None else check_int(
            "LinearWarmup", "warmup_steps", warmup_steps, low=1)
        self.warmup_epochs = None if warmup_epochs is None else check_int(
            "LinearWarmup", "warmup_epochs", warmup_epochs, low=1)

    def __call__(self, step: int, epoch: int) -> float:
        if self.warmup_steps is not None:
            return _linear(self.start, self.value, step / self.warmup_steps)
        return _linear(self.start, self.value, epoch / self.warmup_epochs)  # type: ignore[operator]

    def bounds(self) -> tuple[float, float]:
        return _ordered(self.start, self.value)

    @property
    def varies_per(self) -> str | None:
        return "step" if self.warmup_steps is not None else "epoch"


class _Clocked(Schedule):
    """A schedule following one clock, chosen by ``per``: ``"step"`` (optimizer updates)
    or ``"epoch"``. Subclasses call :meth:`_set_clock` last in ``__init__``."""

    per: str

    def _set_clock(self, per: str) -> None:
        self.per = check_choice(type(self).__name__, "per", per, CLOCKS)

    def _t(self, step: int, epoch: int) -> int:
        return step if self.per == "step" else epoch

    @property
    def varies_per(self) -> str | None:
        return self.per


class _Ramp(_Clocked):
    """From ``start`` to ``end`` over ``span`` clock units, then ``end``."""

    def __init__(self, start: float, end: float, *, span: int, per: str) -> None:
        self.start = check_real(type(self).__name__, "start", start, low=-math.inf)
        self.end = check_real(type(self).__name__, "end", end, low=-math.inf)
        self.span = check_int(type(self).__name__, "span", span, low=1)
        self._set_clock(per)

    def bounds(self) -> tuple[float, float]:
        return _ordered(self.start, self.end)


class Linear(_Ramp):
    """Go linearly from ``start`` to ``end`` over ``span`` steps (or epochs), then hold ``end``.

    Clock ``t`` gets ``start + (end - start) · t / span``; from ``t = span`` on, ``end``.
    ``Linear(p, 0.0, span=n, per=...)`` is the linearly decreasing *early dropout* of Liu et
    al. (2023).

    >>> ramp = Linear(0.0, 0.3, span=3, per="epoch")
    >>> [round(ramp(0, epoch), 2) for epoch in range(5)]
    [0.0, 0.1, 0.2, 0.3, 0.3]
    """

    def __call__(self, step: int, epoch: int) -> float:
        return _linear(self.start, self.end, self._t(step, epoch) / self.span)


class Cosine(_Ramp):
    """Half a cosine from ``start`` to ``end`` over ``span`` steps (or epochs), then hold ``end``.

    Clock ``t`` gets ``end + (start - end) · (1 + cos(π·t/span)) / 2``: flat at both ends,
    steepest in the middle (cosine annealing without restarts).

    >>> anneal = Cosine(0.4, 0.0, span=4, per="epoch")
    >>> [round(anneal(0, epoch), 3) for epoch in range(6)]
    [0.4, 0.341, 0.2, 0.059, 0.0, 0.0]
    """

    def __call__(self, step: int, epoch: int) -> float:
        done = self._t(step, epoch) / self.span
        if done >= 1.0:
            return self.end
        value = self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * done))
        return _clamp(value, self.start, self.end)


class Step(_Clocked):
    """Multiply ``value`` by ``gamma`` every ``every`` steps (or epochs).

    Clock ``t`` gets ``value · gamma^⌊t/every⌋``.

    ``gamma`` lies in ``[0, 1]``, so the value decays toward 0 (as
    ``torch.optim.lr_scheduler.StepLR`` does a learning rate); for a value that rises, or any
    other staircase, use :class:`Piecewise`. :meth:`bounds` include 0, which floating point reaches.

    >>> halve = Step(0.4, every=2, gamma=0.5, per="epoch")
    >>> [halve(0, epoch) for epoch in range(6)]
    [0.4, 0.4, 0.2, 0.2, 0.1, 0.1]
    """

    def __init__(self, value: float, *, every: int, gamma: float, per: str) -> None:
        self.value = check_real("Step", "value", value, low=-math.inf)
        self.every = check_int("Step", "every", every, low=1)
        self.gamma = check_real("Step", "gamma", gamma, low=0.0, high=1.0)
        self._set_clock(per)

    def __call__(self, step: int, epoch: int) -> float:
        return self.value * self.gamma ** (self._t(step, epoch) // self.every)

    def bounds(self) -> tuple[float, float]:
        return (self.value, self.value) if self.gamma == 1.0 else _ordered(self.value, 0.0)


class Piecewise(_Clocked):
    """A staircase: ``values[0]`` until ``boundaries[0]``, then ``values[1]`` until
    ``boundaries[1]``, …, and the last value from the last boundary on.

    ``boundaries`` are strictly increasing clock values ``>= 1``, one fewer than ``values``
    (as in ``keras.optimizers.schedules.PiecewiseConstantDecay``, but the value changes *at*
    each boundary).

    >>> stairs = Piecewise([0.0, 0.1, 0.3], boundaries=[2, 5], per="epoch")
    >>> [stairs(0, epoch) for epoch in range(6)]
    [0.0, 0.0, 0.1, 0.1, 0.1, 0.3]
    """

    def __init__(self, values: Sequence[float], *, boundaries: Sequence[int], per: str) -> None:
        self.values = tuple(check_real("Piecewise", f"values[{i}]", v, low=-math.inf)
                            for i, v in enumerate(_sequence("Piecewise", "values", values)))
        self.boundaries = tuple(check_int("Piecewise", f"boundaries[{i}]", b, low=1)
                                for i, b in enumerate(_sequence("Piecewise", "boundaries",
                                                                boundaries)))
        if not self.values or len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"Piecewise: 'values' must have one entry more than 'boundaries' "
                             f"(got {len(self.values)} values and {len(self.boundaries)} "
                             "boundaries)")
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError("Piecewise: argument 'boundaries' must be strictly increasing, "
                             f"got {list(self.boundaries)}")
        self._set_clock(per)

    def __call__(self, step: int, epoch: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, self._t(step, epoch))]

    def bounds(self) -> tuple[float, float]:
        return (min(self.values), max(self.values))


class ExponentialRamp(_Clocked):
    """Rise from 0 toward ``value``: ``value · (1 − e^(−gamma·t))``.

    The *curriculum dropout* schedule of Morerio et al. (2017): with ``value`` a dropout rate
    p̄ the retain probability decays from 1 to ``1 − p̄``, so the network first learns from
    the clean signal and meets ever harder noise. After ``t = 3/gamma`` the rate is at 95 %
    of ``value``; choose ``gamma`` so that happens well within training. :meth:`bounds` are
    ``0`` and ``value``, which floating point reaches.

    >>> curriculum = ExponentialRamp(0.5, gamma=1.0, per="epoch")
    >>> [round(curriculum(0, epoch), 3) for epoch in range(4)]
    [0.0, 0.316, 0.432, 0.475]
    """

    def __init__(self, value: float, *, gamma: float, per: str) -> None:
        self.value = check_real("ExponentialRamp", "value", value, low=-math.inf)
        self.gamma = check_real("ExponentialRamp", "gamma", gamma, low=0.0, low_open=True)
        self._set_clock(per)

    def __call__(self, step: int, epoch: int) -> float:
        return self.value * -math.expm1(-self.gamma * self._t(step, epoch))

    def bounds(self) -> tuple[float, float]:
        return _ordered(0.0, self.value)


class _Switch(_Clocked):
    """``value`` on one side of ``cutoff`` on the clock, 0 on the other."""

    def __init__(self, value: float, *, cutoff: int, per: str) -> None:
        self.value = check_real(type(self).__name__, "value", value, low=-math.inf)
        self.cutoff = check_int(type(self).__name__, "cutoff", cutoff, low=1)
        self._set_clock(per)

    def bounds(self) -> tuple[float, float]:
        return _ordered(0.0, self.value)


class EarlyDropout(_Switch):
    """``value`` while the clock is below ``cutoff``, then 0.

    *Early dropout* (Liu et al., 2023, "Dropout Reduces Underfitting"): dropout only in the
    first phase of training helps underfitting models fit better. Works for any strength.

    >>> early = EarlyDropout(0.1, cutoff=2, per="epoch")
    >>> [early(0, epoch) for epoch in range(4)]
    [0.1, 0.1, 0.0, 0.0]
    """

    def __call__(self, step: int, epoch: int) -> float:
        return self.value if self._t(step, epoch) < self.cutoff else 0.0


class LateDropout(_Switch):
    """0 while the clock is below ``cutoff``, then ``value``.

    *Late dropout* (Liu et al., 2023): no dropout in the first phase, dropout afterwards, to
    regularize models that overfit. Works for any strength.

    >>> late = LateDropout(0.3, cutoff=2, per="epoch")
    >>> [late(0, epoch) for epoch in range(4)]
    [0.0, 0.0, 0.3, 0.3]
    """

    def __call__(self, step: int, epoch: int) -> float:
        return 0.0 if self._t(step, epoch) < self.cutoff else self.value


def _ordered(a: float, b: float) -> tuple[float, float]:
    return (a, b) if a <= b else (b, a)


def _clamp(value: float, a: float, b: float) -> float:
    """``value`` within the interval spanned by ``a`` and ``b`` (undoes rounding overshoot)."""
    low, high = _ordered(a, b)
    return min(max(value, low), high)


def _linear(start: float, end: float, done: float) -> float:
    """The point ``done`` (a fraction, held at 1 past the end) of the way from start to end."""
    if done >= 1.0:
        return end
    return _clamp(start + (end - start) * done, start, end)


def _sequence(owner: str, arg: str, value: object) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{owner}: argument {arg!r} must be a list, got {value!r}")
    return value


#: The schedules a config may name (``{"schedule": "<name>", ...}``).
_BY_NAME: dict[str, type[Schedule]] = {
    "constant": Constant, "linear_warmup": LinearWarmup, "linear": Linear, "cosine": Cosine,
    "step": Step, "piecewise": Piecewise, "exponential_ramp": ExponentialRamp,
    "early_dropout": EarlyDropout, "late_dropout": LateDropout,
}


def _config_name(cls: type[Schedule]) -> str:
    for name, registered in _BY_NAME.items():
        if registered is cls:
            return name
    return cls.__name__  # a schedule defined elsewhere: described, not rebuilt by name


def as_schedule(value: float | Schedule | Mapping[str, Any], *, owner: str, arg: str,
                low: float = 0.0, high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> Schedule:
    """Turn a plugin argument into a schedule whose every value lies in the allowed range.

    Accepts a number, a :class:`Schedule`, or a config mapping such as
    ``{"schedule": "linear_warmup", "value": 0.01, "warmup_steps": 500}`` (as written in TOML).
    Errors name ``owner`` and ``arg``; a schedule is checked over all its values
    (:meth:`Schedule.bounds`), and the message names the offending value and the schedule.

    >>> as_schedule(0.1, owner="L2", arg="l2")
    Constant(value=0.1)
    >>> as_schedule(Linear(0.0, 1.0, span=10, per="step"), owner="DropoutSchedule", arg="rate",
    ...             high=1.0, high_open=True)
    Traceback (most recent call last):
    ValueError: DropoutSchedule: argument 'rate' must be a finite number in [0, 1), got 1.0 (a value
    of the schedule Linear(start=0.0, end=1.0, span=10, per='step'))
    """
    if isinstance(value, Mapping):
        spec = dict(value)
        name = spec.pop("schedule", None)
        check_choice(owner, f"{arg}.schedule", name, tuple(_BY_NAME))
        factory = _BY_NAME[name]
        try:
            inspect.signature(factory).bind(**spec)
        except TypeError as err:
            accepted = ", ".join(inspect.signature(factory).parameters)
            raise TypeError(f"{owner}: argument {arg!r}: schedule {name!r} takes {accepted}; "
                            f"{err}") from None
        try:
            value = factory(**spec)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{owner}: argument {arg!r}: {err}") from None
    if not isinstance(value, Schedule):
        return Constant(check_real(owner, arg, value, low=low, high=high, low_open=low_open,
                                     high_open=high_open))
    for bound in value.bounds():
        try:
            check_real(owner, arg, bound, low=low, high=high, low_open=low_open,
                       high_open=high_open)
        except ValueError as err:
            raise ValueError(f"{err} (a value of the schedule {value!r})") from None
    return value

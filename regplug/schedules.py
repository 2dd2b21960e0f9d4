"""Schedules: how a strength or a rate changes during training.

A schedule is a pure function of the training clock: ``schedule(step, epoch) -> float``, where
``step`` counts optimizer updates and ``epoch`` counts epochs, both from 0. Plugins accept a
plain number (a :class:`Constant`) or a schedule wherever they take a strength. Adapters
evaluate the schedules of a run before every training batch and hand the value to the
compiled step (a Python float in PyTorch, a non-trainable variable in Keras), so a schedule
takes effect from the step it is due.

>>> warm = LinearWarmup(0.01, warmup_steps=100)
>>> warm(0, 0), warm(50, 0), warm(500, 3)
(0.0, 0.005, 0.01)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from .validation import check_choice, check_int, check_real

__all__ = ["Schedule", "Constant", "LinearWarmup", "as_schedule"]


class Schedule(ABC):
    """A value that depends on the training clock."""

    @abstractmethod
    def __call__(self, step: int, epoch: int) -> float:
        """The value in force during optimizer step ``step`` of epoch ``epoch``."""

    @abstractmethod
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value the schedule can take (used for validation)."""

    def to_config(self) -> dict[str, Any]:
        """A plain description, stored in checkpoints and shown in reprs."""
        return {"schedule": type(self).__name__, **vars(self)}

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
            done = min(step / self.warmup_steps, 1.0)
        else:
            done = min(epoch / self.warmup_epochs, 1.0)  # type: ignore[operator]
        return self.start + (self.value - self.start) * done

    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.value), max(self.start, self.value))


_BY_NAME: dict[str, type[Schedule]] = {"constant": Constant, "linear_warmup": LinearWarmup}


def as_schedule(value: float | Schedule | dict[str, Any], *, owner: str, arg: str,
                low: float = 0.0, high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> Schedule:
    """Turn a plugin argument into a schedule whose every value lies in the allowed range.

    Accepts a number, a :class:`Schedule`, or a config mapping such as
    ``{"schedule": "linear_warmup", "value": 0.01, "warmup_steps": 500}`` (as written in TOML).

    >>> as_schedule(0.1, owner="L2", arg="l2")
    Constant(value=0.1)
    """
    if isinstance(value, dict):
        spec = dict(value)
        name = spec.pop("schedule", None)
        check_choice(owner, f"{arg}.schedule", name, tuple(_BY_NAME))
        try:
            value = _BY_NAME[name](**spec)  # type: ignore[index]
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

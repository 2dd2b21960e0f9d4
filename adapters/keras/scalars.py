"""Scheduled strengths inside Keras' compiled train step: values held in variables.

Docs: docs/keras-internals.md
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from regplug.run import ScheduledValue
from regplug.schedules import Schedule

__all__ = ["KerasScheduledValue"]


class KerasScheduledValue(ScheduledValue):
    """A scheduled strength held in a non-trainable ``keras.Variable``.

    ``value`` is the variable: plugin math such as ``l2.value * ops.sum_squares(params)``
    traces a *read* of it into the step, so a new value assigned between batches is in
    force from the next batch without retracing. :meth:`update` assigns only when the
    schedule's value changes.
    """

    __slots__ = ("_last", "_before_assign")

    def __init__(self, schedule: Schedule, *, name: str = "regplug_scalar",
                 before_assign: Callable[[], None] | None = None) -> None:
        first = float(schedule(0, 0))
        self.schedule = schedule
        self.value = keras.Variable(first, dtype="float32", trainable=False, name=name)
        self._last = first
        self._before_assign = before_assign

    def update(self, step: int, epoch: int) -> None:
        new = float(self.schedule(step, epoch))
        if new != self._last:
            if self._before_assign is not None:
                self._before_assign()
            self.value.assign(new)
            self._last = new

    def current(self) -> float:
        """The value last assigned (no device read)."""
        return self._last

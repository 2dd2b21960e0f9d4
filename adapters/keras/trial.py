"""Training a Keras model on one fixed batch without leaving a trace (``run.trial_training``).

The trial uses the model's compiled loss and optimizer through ``model.train_on_batch``,
with every ``Dropout`` layer at rate 0 (Keras decides ``rate > 0`` in Python while tracing,
so the trial traces its own train function and the model's is put back afterwards). All of
``model.variables`` (weights, batch-norm statistics, random seed states) and
``optimizer.variables`` (iterations, slots) are restored exactly afterwards.

Docs: docs/plugins/monitors.md
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from regplug.run import TrialReport

from .discovery import DROPOUT_TYPES, all_layers


class KerasTrial:
    """:class:`regplug.run.TrialTraining` for a compiled Keras model.

    :param before_read: called first (the adapter syncs JAX's training state there).
    """

    def __init__(self, model: Any, before_read: Callable[[], None] | None = None) -> None:
        self.model = model
        self.before_read = before_read

    def _state(self) -> list[Any]:
        seen: set[int] = set()
        out = []
        for v in [*self.model.variables, *self.model.optimizer.variables]:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def train(self, x: Any, y: Any, steps: int) -> TrialReport:
        model = self.model
        if self.before_read is not None:
            self.before_read()
        optimizer = model.optimizer
        if not optimizer.built:  # else train_on_batch would create its slots, unsaved
            optimizer.build(model.trainable_variables)
        variables = self._state()
        saved = [np.array(ops.convert_to_numpy(v.value)) for v in variables]
        trainable = list(model.trainable_variables)
        before = [np.array(ops.convert_to_numpy(v.value)) for v in trainable]
        rates = [(layer, layer.rate) for layer in all_layers(model)
                 if isinstance(layer, DROPOUT_TYPES)]
        functions = (model.train_function, model.test_function)
        losses: list[float] = []
        error = None
        try:
            for layer, _ in rates:
                layer.rate = 0.0
            model.train_function = None  # trace the trial's own step (dropout off)
            for _ in range(steps):
                logs = model.train_on_batch(x, y, return_dict=True)
                losses.append(float(logs["loss"]))
            y_pred = model(x, training=True)
            losses.append(float(ops.convert_to_numpy(model.compute_loss(x, y, y_pred))))
        except Exception as err:  # reported as the check's finding, not raised
            error = f"{type(err).__name__}: {err}"
        finally:
            unchanged = [v.path for v, b in zip(trainable, before)
                         if np.array_equal(ops.convert_to_numpy(v.value), b)]
            for layer, rate in rates:
                layer.rate = rate
            for v, value in zip(variables, saved):
                v.assign(value)
            model.train_function, model.test_function = functions
        lr = float(ops.convert_to_numpy(model.optimizer.learning_rate))
        return TrialReport(losses, no_gradient=None, unchanged=unchanged,
                           parameters=len(trainable), learning_rates=[lr], error=error)

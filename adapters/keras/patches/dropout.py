"""The dropout layers handed to plugins: a ``call`` that reads its rate from a variable.

Keras' own ``Dropout.call`` tests ``self.rate > 0`` in Python and passes the float to the
backend: the rate is baked in when the step is traced, and a layer built with ``rate=0``
never drops at all. :class:`DropoutPatch` gives each layer a plugin asks for
(``run.dropout_layers()``) a rate variable and :func:`rate_reading_call`, which draws its mask
from the layer's seed generator (a new one for rate-0 layers) and honours any rate, 0 and 1
included, with Keras' formula: each element (or, for ``SpatialDropout*``, each channel) is
kept with probability ``1 − rate`` and scaled by ``1 / (1 − rate)``.

Docs: ``docs/keras-internals.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from regplug.run import DropoutHandle

from .. import _compat
from ..discovery import KERAS_DROPOUT_CALLS, SCHEDULABLE_DROPOUT_TYPES, all_layers
from .jax_step import StepVariables

__all__ = ["DropoutPatch", "rate_reading_call"]

log = logging.getLogger(__name__)


def rate_reading_call(layer: Any, rate: Any, seed: Any) -> Callable[..., Any]:
    """A ``call`` for ``layer`` (a ``Dropout`` or ``SpatialDropout*``) that drops with the
    rate held in the variable ``rate``, drawing from the seed generator ``seed``."""
    noise_shape = _compat.spatial_noise_shape(layer)

    def call(inputs: Any, training: bool | None = False) -> Any:
        if not training:
            return inputs
        x = ops.convert_to_tensor(inputs)
        if noise_shape is not None:
            shape = noise_shape(x)
        elif layer.noise_shape is not None:
            dims = ops.shape(x)
            shape = tuple(dims[i] if d is None else d for i, d in enumerate(layer.noise_shape))
        else:
            shape = ops.shape(x)
        r = rate.value
        keep = keras.random.uniform(shape, dtype="float32", seed=seed) >= r
        keep_prob = 1.0 - r
        scale = ops.where(keep_prob > 0.0, 1.0 / ops.maximum(keep_prob, 1e-12), 0.0)
        return x * ops.cast(keep, x.dtype) * ops.cast(scale, x.dtype)

    return call


class DropoutPatch:
    """The model's dropout layers as handles whose rate a plugin sets between batches.

    ``live()``: whether the patches act (their fit is running). ``changed()``: called when
    a layer's ``call`` is replaced (the traced step predates it: a retrace is due).
    """

    def __init__(self, model: Any, variables: StepVariables, *, live: Callable[[], bool],
                 changed: Callable[[], None]) -> None:
        self.model = model
        self.variables = variables
        self.live = live
        self.changed = changed
        self.patched: list[tuple[Any, DropoutHandle]] = []

    def handles(self) -> list[DropoutHandle]:
        """The run's ``dropout_layers()``: every schedulable dropout layer, patched."""
        handles = []
        for layer in all_layers(self.model):
            if not isinstance(layer, SCHEDULABLE_DROPOUT_TYPES):
                continue
            if type(layer).call not in KERAS_DROPOUT_CALLS:
                log.warning("regplug: %s %r overrides Dropout.call; its rate cannot be "
                            "scheduled, so it is not handed to plugins", type(layer).__name__,
                            layer.name)
                continue
            handles.append(self.patch(layer))
        return handles

    def patch(self, layer: Any) -> DropoutHandle:
        """Shadow ``layer.call`` with one reading the rate from a variable; its handle."""
        rate = keras.Variable(float(layer.rate), dtype="float32", trainable=False,
                              name=f"regplug_rate_{layer.name}")
        self.variables.add(rate)
        seed = getattr(layer, "seed_generator", None)
        if seed is None:  # built with rate=0: Keras made no generator
            seed = keras.random.SeedGenerator(layer.seed)
            self.variables.add(seed.state)
        reading = rate_reading_call(layer, rate, seed)
        keras_call = layer.call

        def call(inputs: Any, training: bool | None = False) -> Any:
            if self.live():
                return reading(inputs, training=training)
            return keras_call(inputs, training=training)  # its fit is gone: Keras' own

        layer.call = call
        self.changed()

        def set_rate(value: float) -> None:
            self.variables.sync()
            rate.assign(value)

        handle = DropoutHandle(layer.name, type(layer).__name__, float(layer.rate), set_rate)
        self.patched.append((layer, handle))
        return handle

    def detach(self) -> None:
        """Give every patched layer Keras' own ``call`` back."""
        for layer, _ in self.patched:
            if "call" in vars(layer):
                del layer.call
        self.patched = []

"""A dropout ``call`` that reads its rate from a variable, so a rate set between batches is
honoured by Keras' compiled train step.

Keras' own ``Dropout.call`` tests ``self.rate > 0`` in Python and passes the float to the
backend: the rate is baked in when the step is traced, and a layer built with ``rate=0``
never drops at all. The replacement draws its mask from the layer's seed generator (a new one
for rate-0 layers) and honours any rate, 0 and 1 included, with Keras' formula: each element
(or, for ``SpatialDropout*``, each channel) is kept with probability ``1 − rate`` and scaled
by ``1 / (1 − rate)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from . import _compat

__all__ = ["rate_reading_call"]


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

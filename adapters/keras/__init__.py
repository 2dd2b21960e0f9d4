"""regplug in Keras 3: :class:`Regularize`, one callback for ``model.fit``, on the TensorFlow,
torch and JAX backends::

    model.fit(x, y, epochs=10, callbacks=[Regularize([L2(1e-4), EarlyStopping(patience=3)])])

One module per job. :mod:`.callback`: :class:`Regularize` and :func:`detach`, the Python-side
events of ``fit``. :mod:`.patches`: what regplug traces into the train step for one ``fit``
(loss, optimizer, dropout, JAX step, guards, one module each) and its removal. :mod:`.ops`:
:class:`KerasOps`, written with ``keras.ops``. :mod:`.discovery`: parameters, kinds, dropout
layers. :mod:`.scalars`: :class:`KerasScheduledValue`. :mod:`.state`: :class:`KerasModelState`.
:mod:`.trial`: :class:`KerasTrial`. :mod:`.uncertainty`: :func:`mc_predict`. :mod:`.compare`:
the runner of ``regplug compare``. :mod:`._compat`: every use of Keras API that is not public.

Docs: docs/loops/keras.md; inside the compiled step: docs/keras-internals.md.
"""

from __future__ import annotations

from .callback import SUPPORTED_BACKENDS, Regularize, detach
from .discovery import discover_parameters
from .ops import KerasOps
from .scalars import KerasScheduledValue
from .state import KerasModelState
from .trial import KerasTrial
from .uncertainty import is_dropout_layer, mc_predict

__all__ = ["Regularize", "detach", "mc_predict", "is_dropout_layer", "SUPPORTED_BACKENDS",
           "KerasOps", "KerasModelState", "KerasTrial", "KerasScheduledValue",
           "discover_parameters"]

"""regplug in Keras 3: :class:`Regularize`, one callback for ``model.fit``.

::

    model.fit(x, y, epochs=10, callbacks=[Regularize([L2(1e-4), EarlyStopping(patience=3)])])

Runs on the TensorFlow, torch and JAX backends. One module per job (how they act inside the
compiled train step: ``docs/keras-internals.md``):

- :mod:`.callback` — :class:`Regularize` and :func:`detach`, the Python-side events of ``fit``;
- :mod:`.patches` — what regplug traces into the train step for one ``fit``, and its removal:
  one module per job (loss, optimizer, dropout, JAX step, guards) and the attachment of all;
- :mod:`.ops` — :class:`KerasOps`, the operations plugins call, written with ``keras.ops``;
- :mod:`.discovery` — parameter handles, their kinds, the dropout layers;
- :mod:`.scalars` — :class:`KerasScheduledValue`, strengths held in variables;
- :mod:`.state` — :class:`KerasModelState`, snapshots of ``model.weights``;
- :mod:`.trial` — :class:`KerasTrial`, side-effect-free training on one batch;
- :mod:`.uncertainty` — :func:`mc_predict`, MC-dropout predictions;
- :mod:`.compare` — the Keras runner of ``regplug compare``;
- :mod:`._compat` — every use of Keras API that is not public.
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

"""regplug in PyTorch: :func:`attach` wires plugins into a hand-written training loop.

One module per job; the trainer callbacks (:mod:`regplug.adapters.lightning`,
:mod:`regplug.adapters.transformers`) are thin event sources over them. :mod:`.loop`:
:func:`attach`, :class:`TorchRegularizer`. :mod:`.build`: :func:`build_run`, the
:class:`regplug.Run` of a model and its optimizer. :mod:`.ops`: :class:`TorchOps`, the fused
in-place operations plugins call. :mod:`.grads`: penalties' gradients added outside the
loss. :mod:`.discovery`: parameter handles, their kinds, dropout modules. :mod:`.state`:
:class:`TorchModelState`. :mod:`.world`: :class:`TorchWorld`, collective stop votes.
:mod:`.results`: the callbacks' history and stop requests. :mod:`.trial`: :class:`TorchTrial`.
:mod:`.uncertainty`: :func:`mc_predict`. :mod:`.compare`: the runner of ``regplug compare``.
:mod:`._compat`: every use of torch API that is not public.

Docs: docs/loops/torch.md (API: docs/api/torch.md).
"""

from __future__ import annotations

from .build import LearningRates, build_run
from .discovery import discover_dropout, discover_parameters, unwrap
from .loop import TorchRegularizer, attach
from .ops import TorchOps
from .state import TorchModelState
from .trial import TorchTrial
from .uncertainty import is_dropout_module, mc_predict
from .world import TorchWorld, vote_device

__all__ = ["attach", "TorchRegularizer", "mc_predict", "is_dropout_module", "TorchOps",
           "TorchModelState", "TorchTrial", "TorchWorld", "vote_device", "discover_parameters",
           "discover_dropout", "unwrap", "build_run", "LearningRates"]

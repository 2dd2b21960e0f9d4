"""regplug in PyTorch: :func:`attach` wires plugins into a hand-written training loop.

::

    with attach(model, optimizer, [L2(1e-4), EarlyStopping(patience=3)]) as reg:
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = reg.loss(criterion(model(x), y))
                loss.backward()
                optimizer.step()
            if reg.epoch_end({"val_loss": evaluate(model)}):
                break

One module per job; an adapter for a trainer built on torch is a thin event source over them:

- :mod:`.loop` — :func:`attach` and :class:`TorchRegularizer`, the hand-written loop's events;
- :mod:`.run` — :func:`build_run`, the :class:`regplug.Run` of a model and its optimizer;
- :mod:`.ops` — :class:`TorchOps`, the fused in-place operations plugins call;
- :mod:`.grads` — :func:`add_autograd_grads`, penalties' gradients added outside the loss;
- :mod:`.discovery` — parameter handles, their kinds, the dropout modules;
- :mod:`.state` — :class:`TorchModelState`, snapshots of parameters and buffers;
- :mod:`.world` — :class:`TorchWorld`, collective votes under ``torch.distributed``;
- :mod:`.trial` — :class:`TorchTrial`, side-effect-free training on one batch;
- :mod:`.uncertainty` — :func:`mc_predict`, MC-dropout predictions;
- :mod:`.compare` — the PyTorch runner of ``regplug compare``;
- :mod:`._compat` — every use of torch API that is not public.
"""

from __future__ import annotations

from .discovery import discover_dropout, discover_parameters, unwrap
from .loop import TorchRegularizer, attach
from .ops import TorchOps
from .run import LearningRates, build_run
from .state import TorchModelState
from .trial import TorchTrial
from .uncertainty import is_dropout_module, mc_predict
from .world import TorchWorld, vote_device

__all__ = ["attach", "TorchRegularizer", "mc_predict", "is_dropout_module", "TorchOps",
           "TorchModelState", "TorchTrial", "TorchWorld", "vote_device", "discover_parameters",
           "discover_dropout", "unwrap", "build_run", "LearningRates"]

"""Training a PyTorch model on one fixed batch without leaving a trace (``run.trial_training``).

Used by sanity checks such as :class:`regplug.plugins.OverfitBatch`: everything the trial
touches — parameters, buffers, gradients, optimizer state and hyper-parameters, the random
number generators, the modules' train/eval flags — is put back exactly afterwards.

Docs: docs/plugins/monitors.md
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from regplug.run import TrialReport

from .discovery import DROPOUT_TYPES, unwrap
from .state import TorchModelState


class TorchTrial:
    """:class:`regplug.run.TrialTraining` for a module, its optimizer and a loss function.

    :param pause: a context manager factory that switches regplug's own hooks off for the
        duration (the adapter removes its optimizer and module hooks).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any, Any], torch.Tensor],
                 pause: Callable[[], Any]) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.pause = pause

    def train(self, x: Any, y: Any, steps: int) -> TrialReport:
        model, opt = self.model, self.optimizer
        params = dict(unwrap(model).named_parameters())
        device = next(iter(params.values())).device if params else torch.device("cpu")
        x, y = _to_device(x, device), _to_device(y, device)
        got_grad: set[str] = set()
        losses: list[float] = []
        error = None
        with self.pause(), _everything_restored(model, opt):
            before = {name: p.detach().clone() for name, p in params.items()}
            _dropout_off(model)
            try:
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss_fn(model(x), y)
                    losses.append(float(loss.detach()))
                    loss.backward()
                    for name, p in params.items():
                        if p.grad is not None and bool(p.grad.ne(0).any()):
                            got_grad.add(name)
                    opt.step()
                with torch.no_grad():
                    losses.append(float(self.loss_fn(model(x), y)))
            except Exception as err:  # reported as the check's finding, not raised
                error = f"{type(err).__name__}: {err}"
            unchanged = [name for name, p in params.items() if torch.equal(p, before[name])]
        learning_rates = [float(g["lr"]) for g in opt.param_groups if "lr" in g]
        return TrialReport(losses, no_gradient=[n for n in params if n not in got_grad],
                           unchanged=unchanged, parameters=len(params),
                           learning_rates=learning_rates, error=error)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return torch.as_tensor(value, device=device)


def _dropout_off(model: nn.Module) -> None:
    model.train()
    for module in model.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.eval()


@contextmanager
def _everything_restored(model: nn.Module, opt: torch.optim.Optimizer) -> Iterator[None]:
    state = TorchModelState(model)
    saved = state.snapshot()
    grads = {p: (None if p.grad is None else p.grad.detach().clone())
             for p in model.parameters()}
    opt_state = copy.deepcopy(opt.state_dict())
    flags = {m: m.training for m in model.modules()}
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        state.restore(saved)
        opt.load_state_dict(opt_state)
        for p, g in grads.items():
            p.grad = g
        for m, training in flags.items():
            m.training = training
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

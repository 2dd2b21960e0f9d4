"""The PyTorch side of ``regplug compare``: an ordinary training loop with regplug attached.

The loop is the one the README shows — ``attach``, ``reg.loss``, ``reg.epoch_end`` — so it
doubles as a complete example. Hyper-parameters come from
:class:`regplug.experiment.TrainSettings`, identical to the Keras runner's: SGD with momentum,
cross-entropy on logits, Glorot-uniform weights and zero biases (Keras' defaults, so both
frameworks start from the same kind of network), batch normalization with Keras' momentum
and epsilon.

Docs: docs/compare.md
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TypeVar, cast

import numpy as np
import torch
from torch import nn

from regplug.experiment.datasets import Splits
from regplug.experiment.finetune import (
    HEAD,
    FinetuneSplits,
    check_finetune_model,
    starts_pretrained,
)
from regplug.experiment.frameworks import EpochCallback, TrainSettings
from regplug.experiment.models import FactoryCheck, ModelChoice, ModelError, ModelSpec
from regplug.experiment.strategies import Strategy
from regplug.experiment.toy import (
    TOY_DROPOUT,
    TOY_EPOCHS,
    TOY_HIDDEN,
    TOY_LEARNING_RATE,
    TOY_SAMPLES,
    RegressionToy,
)
from regplug.experiment.training import TrainOutcome, WeightArray
from regplug.uncertainty import MCPrediction

from .discovery import SCHEDULABLE_DROPOUT_TYPES, is_batch_norm
from .loop import attach
from .uncertainty import mc_predict

__all__ = ["TorchRunner", "describe", "build_mlp", "build_model", "make_optimizer",
           "train_strategy", "mc_dropout", "FinetuneMLP", "head_prefix"]

_EVAL_ROWS = 8192
_M = TypeVar("_M", bound=nn.Module)
#: Below this many parameters a model trains on one CPU thread: its matrix products are
#: too small for intra-op threads to pay off, and on a busy machine threads waiting on each
#: other made the default run's torch half several times slower (measured: 2 s vs 20 s
#: for 30 epochs of the notebook MLP with the two cores shared).
SINGLE_THREAD_BELOW = 1_000_000


@contextlib.contextmanager
def _threads_for(model: nn.Module) -> Iterator[None]:
    size = sum(p.numel() for p in model.parameters())
    previous = torch.get_num_threads()
    if size >= SINGLE_THREAD_BELOW or model_device(model).type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without parameters)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def describe() -> str:
    """The framework and its version, for the results' settings."""
    return f"torch {torch.__version__}"


def _glorot(model: _M) -> _M:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def build_mlp(hidden: Sequence[int], spec: ModelSpec) -> nn.Sequential:
    """Dense layers of widths ``hidden`` with ReLU, then batch norm and dropout (when the
    spec asks) after the last hidden layer, then a linear layer to the class logits.

    >>> build_mlp((50, 250), ModelSpec("torch", 64, 10, dropout=0.2, batch_norm=True))
    Sequential(
      (0): Linear(in_features=64, out_features=50, bias=True)
      (1): ReLU()
      (2): Linear(in_features=50, out_features=250, bias=True)
      (3): ReLU()
      (4): BatchNorm1d(250, eps=0.001, momentum=0.01, ...)
      (5): Dropout(p=0.2, inplace=False)
      (6): Linear(in_features=250, out_features=10, bias=True)
    )
    """
    layers: list[nn.Module] = []
    width = spec.n_features
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    if spec.batch_norm:  # Keras' BatchNormalization defaults: momentum 0.99, epsilon 1e-3
        layers.append(nn.BatchNorm1d(width, eps=1e-3, momentum=0.01))
    if spec.dropout is not None:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(width, spec.n_classes))
    return _glorot(nn.Sequential(*layers))


def build_model(choice: ModelChoice, spec: ModelSpec, *, strategy: str) -> nn.Module:
    """The built-in MLP, or the user's factory's module, checked against the spec."""
    if choice.factory is None:
        return build_mlp(choice.hidden, spec)
    model = choice.factory(spec)
    check = FactoryCheck(f"--model {choice.name!r} (strategy {strategy!r}, torch)",
                         "torch.nn.Module", "torch.nn.Dropout", "BatchNorm")
    if not isinstance(model, nn.Module):
        raise check.wrong_type(model)
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        raise check.nothing_to_train(f"{len(params)} parameters, all requires_grad=False"
                                     if params else "it has no parameters")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, spec.n_features, device=model_device(model)))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise check.failed_forward(spec, err) from err
    model.train()
    modules = list(model.modules())
    check.verify(spec, has_dropout=any(isinstance(m, SCHEDULABLE_DROPOUT_TYPES) for m in modules),
                 has_batch_norm=any(is_batch_norm(m) for m in modules),
                 output_shape=tuple(out.shape) if isinstance(out, torch.Tensor)
                 else type(out).__name__)
    return model


class FinetuneMLP(nn.Module):
    """The built-in MLP of ``--task finetune``, its layers named for the fine-tuning plugins:
    hidden layers ``layers.0``, ``layers.1``, ... (ReLU), then batch norm (``norm``) and
    dropout (``dropout``) when the spec asks, then the output layer ``head``, the one
    replaced after pretraining. Glorot-uniform weights, zero biases.

    >>> [name for name, _ in FinetuneMLP((50, 250), ModelSpec("torch", 64, 5)).named_parameters()]
    ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias', 'head.weight', 'head.bias']
    """  # noqa: E501

    def __init__(self, hidden: Sequence[int], spec: ModelSpec) -> None:
        super().__init__()
        widths = [spec.n_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.norm = (nn.BatchNorm1d(widths[-1], eps=1e-3, momentum=0.01) if spec.batch_norm
                     else None)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout is not None else None
        self.head = nn.Linear(widths[-1], spec.n_classes)
        _glorot(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        if self.norm is not None:
            x = self.norm(x)
        if self.dropout is not None:
            x = self.dropout(x)
        out: torch.Tensor = self.head(x)
        return out


def head_prefix(model: nn.Module, *, where: str = "--task finetune") -> str:
    """The state-dict prefix of ``model``'s output layer, replaced after pretraining: the
    module named ``head`` where there is one, else the last module that holds parameters
    of its own (``"4."`` in an ``nn.Sequential`` ending in ``Linear``).

    >>> head_prefix(FinetuneMLP((50,), ModelSpec("torch", 4, 5)))
    'head.'
    """
    owners = [name for name, module in model.named_modules()
              if next(module.parameters(recurse=False), None) is not None]
    if HEAD in owners:
        return f"{HEAD}."
    if len(owners) < 2:
        raise ModelError(f"{where}: the model has {'one layer' if owners else 'no layer'} with "
                         "parameters; fine-tuning replaces the last one (the head) and needs "
                         "layers below it to pretrain")
    return f"{owners[-1]}."


def _finetune_model(choice: ModelChoice, spec: ModelSpec, *, strategy: str) -> nn.Module:
    """The fine-tuning task's model: :class:`FinetuneMLP`, or the user's factory's."""
    if choice.factory is not None:
        return build_model(choice, spec, strategy=strategy)
    check_finetune_model(choice)
    return FinetuneMLP(choice.hidden, spec)


def _pretrained(task: FinetuneSplits, choice: ModelChoice, spec: ModelSpec, *, strategy: str,
                seed: int) -> dict[str, torch.Tensor]:
    """The state of a model pretrained on ``task.pretrain`` (classes 0-4) with the run's
    ``seed``, without its head: trained once per seed, model and model options, then kept
    in ``task.cache`` for every strategy of that seed."""
    key = ("torch", choice.name, spec.dropout, spec.batch_norm, seed)
    cached = task.cache.get(key)
    if cached is not None:
        return cast(dict[str, torch.Tensor], cached)
    pre = task.pretrain
    assert pre is not None  # finetune_splits always sets it
    settings = replace(task.pretrain_settings, seed=seed)
    torch.manual_seed(seed)
    model = _finetune_model(choice, replace(spec, n_classes=pre.n_classes), strategy=strategy)
    device = model_device(model)
    optimizer = make_optimizer(model, settings)
    x, y = torch.from_numpy(pre.x_train).to(device), torch.from_numpy(pre.y_train).to(device)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    with _threads_for(model):
        for _ in range(settings.epochs):
            order = torch.randperm(len(x), generator=shuffle).to(device)
            for i in range(0, len(x), settings.batch_size):
                idx = order[i:i + settings.batch_size]
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
    head = head_prefix(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if not k.startswith(head)}
    task.cache[key] = state
    return state


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD with momentum, as :class:`regplug.experiment.TrainSettings` describes (Keras' update)."""
    return torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                           momentum=settings.momentum)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), _EVAL_ROWS):
            correct += int((model(x[i:i + _EVAL_ROWS]).argmax(1) == y[i:i + _EVAL_ROWS]).sum())
    model.train(was_training)
    return correct / len(x)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in inference mode."""
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), _EVAL_ROWS):
            logits = model(x[i:i + _EVAL_ROWS])
            target = y[i:i + _EVAL_ROWS]
            total += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    model.train()
    return total / len(x), correct / len(x)


def train_strategy(splits: Splits, strategy: Strategy, plugins: list[object],
                   model_choice: ModelChoice, settings: TrainSettings,
                   on_epoch: EpochCallback | None = None) -> TrainOutcome:
    """Train a fresh model under ``strategy`` (its model options and ``plugins``).

    With :class:`~regplug.experiment.finetune.FinetuneSplits` (``--task finetune``) the
    model starts from the weights pretrained on classes 0-4 (cached per seed), its head
    fresh, unless the strategy starts from scratch."""
    dropout, batch_norm = strategy.model_options(plugins)
    spec = ModelSpec("torch", splits.n_features, splits.n_classes, dropout, batch_norm,
                     settings.seed)
    task = splits if isinstance(splits, FinetuneSplits) else None
    backbone = None
    if task is not None and starts_pretrained(strategy):  # before the seed: cached or not
        backbone = _pretrained(task, model_choice, spec, strategy=strategy.name,
                               seed=settings.seed)
    torch.manual_seed(settings.seed)
    if task is None:
        model = build_model(model_choice, spec, strategy=strategy.name)
    else:
        model = _finetune_model(model_choice, spec, strategy=strategy.name)
    if backbone is not None:
        model.load_state_dict(backbone, strict=False)  # all but the head, fresh
    optimizer = make_optimizer(model, settings)
    device = model_device(model)  # a factory may build its model on a GPU

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    x_train, y_train = tensors(splits.x_train, splits.y_train)
    x_val, y_val = tensors(splits.x_val, splits.y_val)
    shuffle = torch.Generator().manual_seed(settings.seed)
    n, batch = len(x_train), settings.batch_size
    start = time.perf_counter()
    model.train()
    # loss_fn: the loop's loss, for sanity checks that train on one batch (OverfitBatch)
    with _threads_for(model), attach(model, optimizer, plugins,
                                     loss_fn=nn.functional.cross_entropy) as reg:
        for epoch in range(settings.epochs):
            order = torch.randperm(n, generator=shuffle).to(device)
            # cross-entropy, objective, correct predictions: summed on the device
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            for i in range(0, n, batch):
                idx = order[i:i + batch]
                optimizer.zero_grad()
                logits = model(x_train[idx])
                cross_entropy = nn.functional.cross_entropy(logits, y_train[idx])
                loss = reg.loss(cross_entropy)
                loss.backward()
                with torch.no_grad():  # the objective as Keras reports it: data + penalties
                    objective = cross_entropy + reg.penalty()
                    sums += torch.stack([cross_entropy.double() * len(idx),
                                         objective.double() * len(idx),
                                         (logits.argmax(1) == y_train[idx]).sum().double()])
                optimizer.step()
            with reg.validation():  # a plugin may validate other weights (EMA's average)
                val_ce, val_acc = _evaluate(model, x_val, y_val)
            train_ce, train_objective, train_correct = (sums / n).tolist()
            logs = {"loss": train_objective, "accuracy": train_correct,
                    "cross_entropy": train_ce,
                    "val_loss": val_ce + float(reg.penalty()), "val_accuracy": val_acc,
                    "val_cross_entropy": val_ce}
            stop = reg.epoch_end(logs)
            if on_epoch is not None:
                on_epoch(epoch, logs)
            if stop:
                break
    # Leaving the block fired on_train_end: early stopping has put its best weights back.
    seconds = time.perf_counter() - start
    weights = [WeightArray(h.name, h.kind, h.layer_type, h.unit_axis,
                           h.tensor.detach().cpu().numpy().copy()) for h in reg.run.params]
    return TrainOutcome(
        history={k: list(v) for k, v in reg.history.items()},
        acc_train=_accuracy(model, x_train, y_train),
        acc_test=_accuracy(model, *tensors(splits.x_test, splits.y_test)),
        weights=weights, steps=reg.run.step, seconds=seconds,
        stop_reason="; ".join(str(r) for r in reg.stop_requests) or None)


def mc_dropout(toy: RegressionToy, *, seed: int = 0) -> MCPrediction:
    """Train the toy regression network with dropout, then predict the grid with dropout on."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 1
    for units in TOY_HIDDEN:
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(TOY_DROPOUT)]
        width = units
    model = nn.Sequential(*layers, nn.Linear(width, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=TOY_LEARNING_RATE)
    x, y = torch.from_numpy(toy.x_train), torch.from_numpy(toy.y_train)
    model.train()
    with _threads_for(model):
        for _ in range(TOY_EPOCHS):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
        return mc_predict(model, np.asarray(toy.x_grid), samples=TOY_SAMPLES, seed=seed)


class TorchRunner:
    """The PyTorch runner of ``regplug compare``
    (:class:`regplug.experiment.frameworks.FrameworkRunner`), registered as entry point
    ``torch`` of group ``regplug.frameworks``."""

    name = "torch"
    describe = staticmethod(describe)
    train_strategy = staticmethod(train_strategy)
    mc_dropout = staticmethod(mc_dropout)

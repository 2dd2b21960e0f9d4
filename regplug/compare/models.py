"""The model ``regplug compare`` trains: a built-in MLP, or a factory of your own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RegplugError
from .loading import is_reference, load_reference

__all__ = ["ModelSpec", "ModelChoice", "BUILTIN_MODELS", "resolve_model", "ModelError"]


class ModelError(RegplugError, ValueError):
    """A model name or factory that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model factory is asked to build, once per strategy and framework.

    :param framework: ``"torch"`` (return a ``torch.nn.Module`` producing logits) or
        ``"keras"`` (return an uncompiled ``keras.Model`` producing logits).
    :param n_features: width of the (flattened) input rows.
    :param n_classes: number of classes (width of the logits).
    :param dropout: the strategy's dropout rate, or ``None`` for no dropout layer. Put a
        dropout layer with this rate where it should act; a rate of 0 still needs the layer
        (a dropout schedule drives its rate).
    :param batch_norm: whether the strategy wants batch normalization.
    :param seed: the run's seed (the runner seeds the framework before calling the factory).

    A factory for ``--model my_models:factory``::

        def factory(spec):
            import torch
            layers = [torch.nn.Linear(spec.n_features, 128), torch.nn.ReLU()]
            if spec.batch_norm:
                layers.append(torch.nn.BatchNorm1d(128))
            if spec.dropout is not None:
                layers.append(torch.nn.Dropout(spec.dropout))
            return torch.nn.Sequential(*layers, torch.nn.Linear(128, spec.n_classes))
    """

    framework: str
    n_features: int
    n_classes: int
    dropout: float | None = None
    batch_norm: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ModelChoice:
    """A built-in MLP (``hidden`` layer widths) or a user ``factory(spec)``."""

    name: str
    hidden: tuple[int, ...] = ()
    factory: Callable[[ModelSpec], Any] | None = None

    def describe(self) -> str:
        """What the model is, e.g. ``"Dense 50 → 250 → classes, ReLU"``."""
        if self.factory is not None:
            return "a model factory"
        if not self.hidden:
            return "logistic regression, no hidden layer"
        return f"Dense {' → '.join(map(str, self.hidden))} → classes, ReLU"

    def __str__(self) -> str:
        return f"{self.name} ({self.describe()})"


#: Built-in models. ``mlp`` is the comparison notebook's: Dense 50 → 250 → classes, with
#: batch normalization and dropout (when a strategy asks) after the last hidden layer.
BUILTIN_MODELS: dict[str, ModelChoice] = {m.name: m for m in (
    ModelChoice("mlp", (50, 250)),
    ModelChoice("wide_mlp", (512, 512)),
    ModelChoice("linear", ()),
)}


def resolve_model(text: str | None) -> ModelChoice:
    """A built-in model name or ``module:factory`` (``file.py:factory`` works too).

    >>> resolve_model("mlp").hidden
    (50, 250)
    >>> resolve_model("cnn")
    Traceback (most recent call last):
    regplug.compare.models.ModelError: unknown model 'cnn'; built-in models: mlp, wide_mlp, linear, or give module:factory
    """
    if text is None:
        return BUILTIN_MODELS["mlp"]
    if text in BUILTIN_MODELS:
        return BUILTIN_MODELS[text]
    if is_reference(text):
        return ModelChoice(text, factory=load_reference(text, option="--model"))
    raise ModelError(f"unknown model {text!r}; built-in models: {', '.join(BUILTIN_MODELS)}, "
                     "or give module:factory")

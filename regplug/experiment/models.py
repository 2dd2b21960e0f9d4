"""The model an experiment trains: a built-in MLP, or a factory of your own (``--model``).

Docs: docs/compare.md
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RegplugError
from .references import is_reference, load_reference

__all__ = ["ModelSpec", "ModelChoice", "BUILTIN_MODELS", "resolve_model", "ModelError",
           "FactoryCheck"]


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
    regplug.experiment.models.ModelError: unknown model 'cnn'; built-in models: mlp, wide_mlp,
    linear, or give module:factory
    """
    if text is None:
        return BUILTIN_MODELS["mlp"]
    if text in BUILTIN_MODELS:
        return BUILTIN_MODELS[text]
    if is_reference(text):
        return ModelChoice(text, factory=load_reference(text, option="--model"))
    raise ModelError(f"unknown model {text!r}; built-in models: {', '.join(BUILTIN_MODELS)}, "
                     "or give module:factory")


@dataclass(frozen=True)
class FactoryCheck:
    """What a framework's runner found in a model a factory built, checked against the spec.

    :param where: how messages name the factory, the strategy and the framework.
    :param model_type: what a factory must return there (``"torch.nn.Module"``).
    :param dropout_layer: the layer to suggest when dropout is missing.
    :param batch_norm_layer: the layer type to name when batch normalization is missing.

    >>> check = FactoryCheck("--model 'm:f' (strategy 'dropout', torch)", "torch.nn.Module",
    ...                      "torch.nn.Dropout", "BatchNorm")
    >>> check.verify(ModelSpec("torch", 4, 3, dropout=0.2), has_dropout=False,
    ...              has_batch_norm=False, output_shape=(2, 3))
    Traceback (most recent call last):
    regplug.experiment.models.ModelError: --model 'm:f' (strategy 'dropout', torch): the strategy
    needs a dropout layer (spec.dropout=0.2) but the model has none; add
    torch.nn.Dropout(spec.dropout) where it should act
    """

    where: str
    model_type: str
    dropout_layer: str
    batch_norm_layer: str

    def failed_forward(self, spec: ModelSpec, err: BaseException) -> ModelError:
        """The model could not run on a trial batch (one line: the error's first line)."""
        first = (str(err).strip().splitlines() or [""])[0]
        return ModelError(f"{self.where}: the model fails on a batch of 2 rows of "
                          f"{spec.n_features} features: {type(err).__name__}: {first}")

    def nothing_to_train(self, detail: str) -> ModelError:
        """The model has no trainable parameter (all frozen, or none at all).

        >>> check = FactoryCheck("--model 'm:f' (strategy 'l2', torch)", "torch.nn.Module",
        ...                      "torch.nn.Dropout", "BatchNorm")
        >>> print(check.nothing_to_train("3 parameters, all requires_grad=False"))
        --model 'm:f' (strategy 'l2', torch): the model has nothing to train (3 parameters,
        all requires_grad=False); unfreeze at least one parameter
        """
        return ModelError(f"{self.where}: the model has nothing to train ({detail}); "
                          "unfreeze at least one parameter")

    def wrong_type(self, model: object) -> ModelError:
        return ModelError(f"{self.where}: the factory returned a {type(model).__name__}; "
                          f"return a {self.model_type}")

    def verify(self, spec: ModelSpec, *, has_dropout: bool, has_batch_norm: bool,
               output_shape: object) -> None:
        """Refuse a model that ignores the strategy's options or gives the wrong output."""
        if spec.dropout is not None and not has_dropout:
            raise ModelError(f"{self.where}: the strategy needs a dropout layer (spec.dropout="
                             f"{spec.dropout:g}) but the model has none; add "
                             f"{self.dropout_layer}(spec.dropout) where it should act")
        if spec.batch_norm and not has_batch_norm:
            raise ModelError(f"{self.where}: the strategy asks for batch normalization "
                             f"(spec.batch_norm) but the model has no {self.batch_norm_layer} "
                             "layer")
        if output_shape != (2, spec.n_classes):
            raise ModelError(f"{self.where}: for 2 input rows the model returned "
                             f"{output_shape}; it must return logits of shape (rows, "
                             f"{spec.n_classes})")

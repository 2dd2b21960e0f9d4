"""What an ``on_loss`` hook returns: a term added to the training objective.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, eq=False)
class Penalty:
    """A differentiable term of the objective, as a plugin describes it to the adapter.

    :param name: the key under which the penalty's value is logged (e.g. ``"l2_penalty"``).
    :param value: returns the term as a framework scalar, differentiable with respect to the
        parameters; built from ``run.ops`` so that it works in every framework and inside
        Keras' traced train step.
    :param add_grad: optional closed form of the term's gradient: adds ``d value / d θ`` to
        the parameters' gradients in place. Adapters that can (PyTorch) apply it as a fused
        update right before the optimizer step instead of differentiating ``value`` — the same
        number, without an autograd graph over every parameter. Give it only when it is
        exactly the gradient of ``value``; tests compare the two.

    >>> import numpy as np
    >>> Penalty("zero", value=lambda: np.float32(0.0)).name
    'zero'
    """

    name: str
    value: Callable[[], Any]
    add_grad: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if not callable(self.value):
            raise TypeError(f"Penalty {self.name!r}: 'value' must be a function of no arguments "
                            f"returning the term (e.g. value=lambda: ...), got "
                            f"{type(self.value).__name__}")
        if self.add_grad is not None and not callable(self.add_grad):
            raise TypeError(f"Penalty {self.name!r}: 'add_grad' must be None or a function of "
                            f"no arguments, got {type(self.add_grad).__name__}")


def unique_names(names: Iterable[str]) -> list[str]:
    """Log keys for penalties: repeated names get ``_2``, ``_3``, ... (two ``L2`` plugins).

    >>> unique_names(["l2_penalty", "l1_penalty", "l2_penalty"])
    ['l2_penalty', 'l1_penalty', 'l2_penalty_2']
    """
    out: list[str] = []
    for base in names:
        name, n = base, 2
        while name in out:
            name, n = f"{base}_{n}", n + 1
        out.append(name)
    return out


def check_penalties(results: Iterable[object]) -> list[Penalty]:
    """The results of an ``on_loss`` call, refusing anything that is not a :class:`Penalty`."""
    penalties = list(results)
    for penalty in penalties:
        if not isinstance(penalty, Penalty):
            raise TypeError(f"regplug: on_loss must return a regplug.Penalty or None; a "
                            f"plugin returned {type(penalty).__name__}: {penalty!r}")
    return penalties  # type: ignore[return-value]

"""A third-party penalty without a closed-form gradient, for the accumulation tests of every
adapter (issue 16, item 19; imported by them; not a test module)."""

from __future__ import annotations

from typing import Any

import regplug


class SmoothNorm(regplug.Plugin):
    """``s·sqrt(1 + Σθ²)`` over the weights (regplug's default selection), built from
    ``run.ops`` only: no ``add_grad``, so every adapter must differentiate it (autograd, or
    Keras' traced loss). ``calls`` records ``run.step`` at each ``on_loss`` (once per optimizer
    update in the adapters that call it per step; once per trace in Keras)."""

    name = "smooth_norm"

    def __init__(self, strength: float) -> None:
        self.strength = strength
        self.calls: list[int] = []

    @regplug.hookimpl
    def on_loss(self, run: regplug.Run) -> regplug.Penalty:
        self.calls.append(run.step)
        weights = run.parameters()
        ops = run.ops
        return regplug.Penalty(
            "smooth_norm_penalty",
            value=lambda: self.strength * (1.0 + ops.sum_squares(weights)) ** 0.5)


def smooth_norm(strength: float, squares: Any) -> Any:
    """The same penalty written by hand from the sum of squares of the weights."""
    return strength * (1.0 + squares) ** 0.5

"""Norm constraints: keep each unit's incoming weight vector within a ball.

Docs: docs/plugins/update-rules.md
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar

from regplug.hookspecs import hookimpl
from regplug.ranges import FloatRange, SearchRange
from regplug.run import Run

from ._base import Binding, ParameterPlugin, Strength


class MaxNorm(ParameterPlugin):
    """After every optimizer update, rescale each unit's weights to L2 norm ``<= max_value``.

    A unit is one output neuron (a row of a PyTorch ``Linear`` weight, a column of a Keras
    ``Dense`` kernel, one output channel of a convolution); the norm runs over its incoming
    weights. Units within the bound are left untouched. Often paired with dropout
    (Srivastava et al., 2014, used 3–4).

    :param max_value: the bound, ``> 0`` or a schedule (default 2.0, as
        ``keras.constraints.MaxNorm``).
    :param kinds, include, exclude: parameter selection, as for :class:`~regplug.plugins.L2`.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.array([[3.0, 4.0], [0.3, 0.4]])}, [MaxNorm(1.0)])
    >>> loop.step({"w": np.zeros((2, 2))}); np.round(loop.params["w"], 6).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
    """

    # A unit's incoming weights start with norm ~0.58 (PyTorch's and Glorot's uniform
    # initializations, whatever the fan-in): a bound of 0.1 pins every unit far below that
    # (too strong), 10 is never reached by the notebook MLP (no effect). Log: it is a scale.
    tunable: ClassVar[Mapping[str, SearchRange]] = {
        "max_value": FloatRange(0.1, 10.0, log=True)}

    def __init__(self, max_value: Strength = 2.0, *, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("max_value", max_value, low_open=True)

    @hookimpl
    def on_step(self, run: Run) -> None:
        self._prepared(run)["on_step"]()

    def _prepare(self, bound: Binding) -> dict[str, Callable[[], object]]:
        params, ops, max_value = bound.params, bound.run.ops, bound.values["max_value"]

        def clip() -> None:
            ops.clip_unit_norms_(params, max_value.value)

        return {"on_step": clip}

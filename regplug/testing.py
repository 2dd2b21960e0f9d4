"""Test plugins without a framework: a Run over NumPy arrays and a tiny SGD loop.

>>> import numpy as np, regplug
>>> loop = NumpyLoop({"fc.weight": np.ones((2, 2))}, [regplug.plugins.L2(0.5)], lr=0.1)
>>> loop.step({"fc.weight": np.zeros((2, 2))})   # data gradient 0: only the penalty acts
>>> loop.params["fc.weight"].tolist()             # 1 - 0.1 * (2 * 0.5 * 1)
[[0.9, 0.9], [0.9, 0.9]]

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .clock import EpochClock, Wording, check_logs
from .conventions import is_lora_name
from .manager import PluginManager
from .numpy_ops import NumpyOps
from .run import ParamHandle, Run, check_state_arrays
from .window import StepWindow


def _guess_kind(name: str) -> str:
    if is_lora_name(name):
        return "lora"
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return "bias"
    if leaf in ("gamma", "beta"):
        return "normalization"
    return "embedding" if leaf.startswith("embedding") else "weight"


class NumpyModelState:
    """:class:`regplug.run.ModelState` over a dict of NumPy arrays (changed in place)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.arrays = arrays

    def snapshot(self, into: dict[str, np.ndarray] | None = None, *,
                 host: bool = False) -> dict[str, np.ndarray]:
        if into is None:
            return {k: v.copy() for k, v in self.arrays.items()}
        for k, v in self.arrays.items():
            np.copyto(into[k], v)
        return into

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        for k, v in self.arrays.items():
            np.copyto(v, snapshot[k])

    def to_numpy(self, snapshot: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in snapshot.items()}

    def from_numpy(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_state_arrays("numpy", arrays, {k: v.shape for k, v in self.arrays.items()})
        return {k: np.array(arrays[k], dtype=v.dtype) for k, v in self.arrays.items()}


def numpy_run(params: Mapping[str, np.ndarray], *, kinds: Mapping[str, str] | None = None,
              lr: float = 0.01) -> Run:
    """A :class:`Run` over NumPy arrays (changed in place by the plugins).

    Kinds come from ``kinds`` where given, else from the name: LoRA names are ``lora``, then
    its last part (``bias``, ``embedding*``; ``gamma``/``beta`` count as normalization; the
    rest are weights). The unit
    axis is 0, as in PyTorch's ``(out, in)`` layout.
    """
    kinds = dict(kinds or {})
    handles = []
    for name, array in params.items():
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"numpy_run: parameter {name!r} must be a float numpy array")
        handles.append(ParamHandle(name, kinds.get(name) or _guess_kind(name), array,
                                   "numpy", 0 if array.ndim > 1 else None, array.shape))
    return Run(params=handles, ops=NumpyOps(),
               learning_rate_groups=lambda ps: [(lr, list(ps))] if ps else [],
               model_state_provider=NumpyModelState(params))


class NumpyLoop:
    """Plain SGD over NumPy parameters, driving plugins exactly as an adapter does.

    :meth:`step` takes the data gradients of one batch and performs: ``on_loss`` (penalties
    with a closed-form gradient add it; others are rejected: NumPy has no autograd),
    ``on_before_step``, ``θ ← θ − lr·g``, ``on_step``.
    """

    def __init__(self, params: Mapping[str, np.ndarray], plugins: Iterable[object], *,
                 lr: float = 0.01, kinds: Mapping[str, str] | None = None) -> None:
        self.params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
        self.lr = lr
        self.run = numpy_run(self.params, kinds=kinds, lr=lr)
        self.ops: NumpyOps = self.run.ops  # type: ignore[assignment]
        self.clock = EpochClock(self.run, PluginManager(plugins), Wording(
            adapter="NumpyLoop", step="NumpyLoop.step()", loss_call="on_loss",
            loss_fix="", validation_hint="pass validation metrics to NumpyLoop.epoch_end",
            logs_call="NumpyLoop.epoch_end"))
        self.window = StepWindow(self.clock)
        self.clock.train_begin()

    def penalty(self) -> float:
        """The sum of the penalties' values at the current parameters."""
        return sum(float(p.value())
                   for p in self.clock.manager.caller("on_loss")(run=self.run, loss=0.0))

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        self.clock.batch_begin()
        self.ops.grads = {k: np.array(v, dtype=np.float64) for k, v in grads.items()}
        leftover = self.window.collect_penalties(loss=0.0)
        if leftover:
            raise TypeError("NumpyLoop: penalties without add_grad need autograd: "
                            + ", ".join(p.name for p in leftover))
        self.window.before_step()
        for name, grad in self.ops.grads.items():
            self.params[name] -= self.lr * grad
        self.window.after_step()

    def epoch_end(self, logs: Mapping[str, float] | None = None) -> bool:
        return self.clock.epoch_end(check_logs({} if logs is None else logs,
                                               where="NumpyLoop.epoch_end"))

    def close(self) -> None:
        self.clock.train_end()

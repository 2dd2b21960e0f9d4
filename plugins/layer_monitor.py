"""Per-layer health at every epoch end: weight and gradient norms, update/weight ratio, exact
zeros and dead units, logged in the epoch's logs (and so the history) per parameter.

Docs: docs/doctor.md
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from regplug.hookspecs import hookimpl
from regplug.plugin import Plugin
from regplug.run import ParamHandle, Run
from regplug.selection import Selection
from regplug.validation import check_int

#: The quantities, in the order of the small-multiples figure; a key is ``quantity/param``.
QUANTITIES = ("weight_norm", "grad_norm", "update_ratio", "zeros", "dead_units")
#: Steps at each epoch's start whose gradients count dead units (the least share is kept).
DEAD_STEPS = 2


def layer_stats(before: np.ndarray, after: np.ndarray, unit_axis: int | None, *,
                units: bool = True) -> dict[str, float]:
    """The epoch's numbers of one parameter from its values at the epoch's start and end.

    ``update_ratio`` is ``‖after − before‖ / ‖before‖`` (the whole epoch's update, relative);
    ``dead_units`` the share of units (indices along ``unit_axis``) whose incoming weights did
    not move at all: no gradient reached them in any step of the epoch — a ReLU unit that is 0
    on every training row (or a frozen one). Without a unit axis, or with ``units=False`` (the
    caller counts dead units from the gradient instead), it is left out.

    >>> w0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> w1 = np.array([[1.0, 2.0], [3.0, 0.0]])
    >>> s = layer_stats(w0, w1, unit_axis=0)
    >>> round(s["weight_norm"], 4), round(s["update_ratio"], 4), s["zeros"], s["dead_units"]
    (3.7417, 0.7303, 0.25, 0.5)
    """
    a = np.asarray(after, dtype=np.float32)
    b = np.asarray(before, dtype=np.float32)
    diff = a - b
    flat, start, moved_flat = a.ravel(), b.ravel(), diff.ravel()
    # float32 dot products (BLAS): a few microseconds per layer, where float64 copies and
    # np.linalg.norm took a millisecond per epoch for the notebook MLP
    norm_before = math.sqrt(max(float(np.dot(start, start)), 0.0))
    update = math.sqrt(max(float(np.dot(moved_flat, moved_flat)), 0.0))
    out = {"weight_norm": math.sqrt(max(float(np.dot(flat, flat)), 0.0)),
           "update_ratio": update / norm_before if norm_before > 0
           else (0.0 if update == 0 else math.inf),
           "zeros": float(flat.size - np.count_nonzero(flat)) / max(flat.size, 1)}
    if units and unit_axis is not None and a.ndim >= 2:
        axes = tuple(i for i in range(a.ndim) if i != unit_axis % a.ndim)
        moved = np.any(diff != 0, axis=axes)
        out["dead_units"] = float(moved.size - np.count_nonzero(moved)) / max(moved.size, 1)
    return out


class LayerMonitor(Plugin):
    """Per parameter, at every epoch end: weight norm, gradient norm, update/weight ratio,
    share of exact zeros and share of dead units, added to the epoch's logs.

    Keys are ``quantity/parameter`` (``"dead_units/0.weight"``): they land in
    ``run.history``, Keras' ``History`` and the applications' histories like a penalty's
    values. :func:`regplug.doctor.plots.plot_monitor` draws them as small multiples.

    How each is measured (the per-step path does nothing but, once per epoch, take the
    gradient norms on the device):

    * ``weight_norm``: ‖θ‖ at the epoch's end; ``zeros``: the share of entries exactly 0.
    * ``update_ratio``: ‖θ_end − θ_start‖ / ‖θ_start‖ over the epoch, from a host copy of
      the selected parameters taken at each epoch's end (one copy per epoch).
    * ``dead_units``: the share of units (rows of a ``Linear``, filters of a convolution)
      that no gradient reached — a ReLU unit that outputs 0 on every row. Where the loop
      runs ``on_before_step`` eagerly (PyTorch, Lightning, Hugging Face), from the gradient
      of the epoch's first 2 steps (units whose gradient is exactly 0 on a whole batch: the
      least share of the 2, an upper bound of the units dead on both batches);
      in Keras, from the weights: units whose incoming weights did not move during the
      epoch. The weights alone lag: momentum and Adam keep moving a dead unit for several
      epochs (6 to 7 on an MLP that lost half its units), and decoupled weight decay
      (AdamW) moves it forever. A penalty in the loss (L2) gives every weight a gradient
      and hides dead units either way; a frozen layer counts as dead.
    * ``grad_norm``: ‖∂L/∂θ‖ at the first optimizer step of the epoch, where the loop runs
      ``on_before_step`` eagerly (PyTorch, Lightning, Hugging Face). Keras runs that hook
      inside its compiled step, where no value can be kept: its logs have no ``grad_norm``.

    :param kinds, include, exclude: which parameters (default: weights, as the penalties).
    :param every: measure every N-th epoch (default 1).

    >>> from regplug.testing import NumpyLoop
    >>> monitor = LayerMonitor()
    >>> loop = NumpyLoop({"fc.weight": np.ones((2, 3))}, [monitor], lr=0.5)
    >>> loop.step({"fc.weight": np.array([[0.0, 0, 0], [3.0, 0, 0]])})  # unit 0 gets none
    >>> _ = loop.epoch_end({"loss": 1.0})
    >>> h = loop.run.history
    >>> h["dead_units/fc.weight"], h["zeros/fc.weight"], h["grad_norm/fc.weight"]
    ([0.5], [0.0], [3.0])
    """

    def __init__(self, *, kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None, every: int = 1) -> None:
        owner = type(self).__name__
        self.selection = Selection.build(owner, kinds=kinds, include=include, exclude=exclude)
        self.every = check_int(owner, "every", every, low=1)
        self.records: list[dict[str, float]] = []
        self._params: list[ParamHandle] = []
        self._start: list[np.ndarray] = []
        self._grads: list[Any] | None = None
        self._dead: list[list[Any]] = []  # per measured step, per unit-indexed parameter
        self._dead_steps = 0
        self._units: list[int] = []
        self._want_grads = False

    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        if run.epoch == 0:
            self.records = []
        self._params = run.parameters(self.selection)
        self._start = list(run.ops.to_numpy(self._params))
        self._grads, self._dead = None, []
        self._units = [i for i, p in enumerate(self._params)
                       if p.unit_axis is not None and len(p.shape) >= 2]
        self._arm(run, run.epoch)

    def _arm(self, run: Run, epoch: int) -> None:
        """Take the gradients at ``epoch``'s first steps if it is measured. Called at the
        start and at each epoch's end for the next, not from ``on_epoch_begin``: a plugin
        acting there makes the PyTorch adapter hook every forward pass of the model."""
        self._want_grads = getattr(run.ops, "eager_gradients", True) and epoch % self.every == 0
        self._dead_steps = DEAD_STEPS if self._want_grads else 0

    @hookimpl
    def on_before_step(self, run: Run, step: int) -> None:
        if self._want_grads:  # once per epoch: the first update's gradients, left on device
            self._want_grads = False
            self._grads = list(run.ops.grad_norms(self._params))
        if self._dead_steps:  # the epoch's first DEAD_STEPS steps, left on device
            self._dead_steps -= 1
            count = getattr(run.ops, "zero_grad_units", None)  # an Ops without it: weights
            if count is not None and self._units:
                self._dead.append(list(count([self._params[i] for i in self._units])))

    @hookimpl
    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, float]) -> None:
        self._arm(run, epoch + 1)
        if epoch % self.every:
            return
        now = list(run.ops.to_numpy(self._params))
        values: dict[str, float] = {}
        # a unit dead on every row is dead on each batch: the least share over the batches
        # measured bounds the share of units dead on all of them from above
        dead = {i: min(run.ops.to_float(step[k]) for step in self._dead)
                for k, i in enumerate(self._units)} if self._dead else {}
        for i, (p, before, after) in enumerate(zip(self._params, self._start, now)):
            counted = math.isfinite(dead.get(i, math.nan))
            stats = layer_stats(before, after, p.unit_axis, units=not counted)
            if self._grads is not None:
                stats["grad_norm"] = run.ops.to_float(self._grads[i])
            if counted:
                stats["dead_units"] = dead[i]  # the gradient's count, where it could be read
            for quantity in QUANTITIES:
                if quantity in stats:
                    values[f"{quantity}/{p.name}"] = stats[quantity]
        self._start, self._grads, self._dead = now, None, []
        self.records.append({"epoch": float(epoch), **values})
        for key, value in values.items():
            logs.setdefault(key, value)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state.get("records", [])]

    def __repr__(self) -> str:
        return f"LayerMonitor(every={self.every})"


def monitor_series(history: Mapping[str, Sequence[float]]
                   ) -> dict[str, dict[str, list[float]]]:
    """``{quantity: {parameter: values}}`` from a history holding LayerMonitor's keys.

    >>> monitor_series({"loss": [1.0], "zeros/fc.weight": [0.0], "dead_units/fc.weight": [0.5]})
    {'zeros': {'fc.weight': [0.0]}, 'dead_units': {'fc.weight': [0.5]}}
    """
    out: dict[str, dict[str, list[float]]] = {}
    for key, values in history.items():
        quantity, sep, name = key.partition("/")
        if sep and quantity in QUANTITIES:
            out.setdefault(quantity, {})[name] = [float(v) for v in values]
    return {q: out[q] for q in QUANTITIES if q in out}

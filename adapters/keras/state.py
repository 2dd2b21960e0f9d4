"""Snapshots of a Keras model's whole state (``model.weights``: parameters and
non-trainable variables such as batch-norm statistics).

Docs: docs/loops/keras.md
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from regplug.run import check_state_arrays

__all__ = ["KerasModelState"]


class KerasModelState:
    """:class:`regplug.run.ModelState` over ``model.weights`` (trainable and non-trainable
    variables, e.g. batch-norm moving statistics — what ``get_weights`` covers).

    Device snapshots are non-trainable ``keras.Variable`` buffers created once and assigned
    at later snapshots; host snapshots are NumPy arrays. ``before_read`` is called first
    (the adapter writes JAX's running training state back into the variables there).

    On JAX, ``Variable.assign`` stores the array it is given, it does not copy it; and
    ``fit``'s jitted train step *donates* the buffers of the model's state (they are deleted
    when the step runs). A snapshot assigned ``v.value`` would share the model's buffer and
    die with it at the next step; a restore assigning the snapshot's array would hand the
    snapshot's buffer to the step. So on JAX every device copy is a new buffer
    (``ops.copy``), in both directions. (TensorFlow and torch copy into the variable's own
    buffer on ``assign``.)
    """

    def __init__(self, model: Any, before_read: Any = None) -> None:
        self.variables: dict[str, Any] = {}
        for i, v in enumerate(model.weights):
            name = v.path if v.path not in self.variables else f"{v.path}#{i}"
            self.variables[name] = v
        self._before_read = before_read
        self._copy = keras.backend.backend() == "jax"  # assign aliases; fit donates buffers

    def _sync(self) -> None:
        if self._before_read is not None:
            self._before_read()

    def snapshot(self, into: dict[str, Any] | None = None, *, host: bool = False
                 ) -> dict[str, Any]:
        self._sync()
        if into is None:
            if host:
                return {k: np.array(ops.convert_to_numpy(v.value)) for k, v in
                        self.variables.items()}
            # From a host copy: a Variable built from another Variable's value may alias
            # it on TensorFlow (the snapshot would follow the model). Happens once.
            return {k: keras.Variable(np.array(ops.convert_to_numpy(v.value)), dtype=v.dtype,
                                      trainable=False, name=f"regplug_snapshot_{i}")
                    for i, (k, v) in enumerate(self.variables.items())}
        for k, v in self.variables.items():
            target = into[k]
            if isinstance(target, np.ndarray):
                np.copyto(target, ops.convert_to_numpy(v.value))
            else:
                target.assign(self._fresh(v.value))
        return into

    def _fresh(self, value: Any) -> Any:
        """``value`` in a buffer of its own where ``assign`` would share it (JAX)."""
        return ops.copy(value) if self._copy else value

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._sync()
        for k, v in self.variables.items():
            saved = snapshot[k]
            v.assign(saved if isinstance(saved, np.ndarray) else self._fresh(saved.value))

    def to_numpy(self, snapshot: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.array(s if isinstance(s, np.ndarray) else ops.convert_to_numpy(s.value))
                for k, s in snapshot.items()}

    def from_numpy(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        check_state_arrays("keras", arrays,
                           {k: tuple(int(d) for d in v.shape) for k, v in self.variables.items()})
        return {k: np.array(arrays[k], dtype=keras.backend.standardize_dtype(v.dtype))
                for k, v in self.variables.items()}

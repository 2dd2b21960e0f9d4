"""Keras 3 side of the ops protocol: parameter discovery and operations on ``keras.Variable``.

Everything here is written with ``keras.ops`` so that it runs unchanged on every Keras
backend and, above all, *inside* the train step Keras traces (``tf.function``, ``jax.jit``,
``torch.compile``): values are read with ``variable.value`` (which, inside Keras' stateless
scopes, is the traced current value) and written with ``variable.assign``. Nothing on the
per-step path reads a value back to the host or branches in Python on a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from regplug.errors import UsageError
from regplug.run import ParamHandle, check_state_arrays

_MAX_NORM_EPS = 1e-7


def _layer_types(*names: str) -> tuple[type, ...]:
    # Some layer classes are recent (RMSNormalization); take those this Keras has.
    return tuple(t for t in (getattr(keras.layers, n, None) for n in names)
                 if isinstance(t, type))


_NORM_TYPES = _layer_types("BatchNormalization", "LayerNormalization", "GroupNormalization",
                           "UnitNormalization", "RMSNormalization")
_EMBEDDING_TYPES = _layer_types("Embedding")
_TRANSPOSED_CONV = _layer_types("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
DROPOUT_TYPES = _layer_types("Dropout")
"""Layer types handed to plugins as dropout layers: ``Dropout`` and its subclasses
(``SpatialDropout1D/2D/3D``). ``GaussianDropout``/``AlphaDropout`` follow other formulas and
are left alone."""

KERAS_DROPOUT_CALLS = frozenset(
    t.call for t in _layer_types("Dropout", "SpatialDropout1D", "SpatialDropout2D",
                                 "SpatialDropout3D"))
"""Keras' own ``call`` implementations of those layers: a subclass that overrides ``call``
does something regplug cannot know, so it is not handed out."""


def param_kind(layer: Any, variable: Any) -> str:
    """Kind of ``variable`` owned by ``layer``: from the layer's type first, then the name."""
    if isinstance(layer, _NORM_TYPES):
        return "normalization"
    if isinstance(layer, _EMBEDDING_TYPES):
        return "embedding"
    name = variable.name.rsplit("/", 1)[-1]
    if name == "bias" or name.endswith("_bias") or name.startswith("bias_"):
        return "bias"
    return "weight"


def unit_axis(layer: Any, variable: Any) -> int | None:
    """The axis indexing output units: last for Dense/Conv kernels (Keras' ``(…, in, out)``
    layout), the one before for transposed convolutions (``(…, out, in)``), 0 (one row per
    token) for embeddings; ``None`` for vectors and scalars."""
    ndim = len(variable.shape)
    if ndim < 2:
        return None
    if isinstance(layer, _EMBEDDING_TYPES):
        return 0
    if isinstance(layer, _TRANSPOSED_CONV):
        return ndim - 2
    return ndim - 1


def all_layers(model: Any) -> list[Any]:
    """``model`` and every layer nested in it, parents before children."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    out, todo, seen = [], [model], set()
    while todo:
        layer = todo.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        todo.extend(getattr(layer, "layers", []))
    return out


def discover_parameters(model: Any) -> list[ParamHandle]:
    """Handles for the model's trainable variables, named by path and typed by owning layer.

    A variable belongs to the innermost layer holding it. Frozen variables (``trainable =
    False``) are not handed to plugins, as the optimizer does not update them either. The
    order is that of ``model.trainable_variables``.
    """
    trainable = list(model.trainable_variables)
    wanted = {id(v) for v in trainable}
    owner: dict[int, Any] = {}
    for layer in reversed(all_layers(model)):  # children before their parents
        for v in layer.trainable_variables:
            if id(v) in wanted and id(v) not in owner:
                owner[id(v)] = layer
    handles, seen = [], set()
    for v in trainable:
        if id(v) in seen:
            continue  # shared variable: once, under its first path
        seen.add(id(v))
        layer = owner.get(id(v), model)
        handles.append(ParamHandle(v.path, param_kind(layer, v), v, type(layer).__name__,
                                   unit_axis(layer, v), tuple(int(d) for d in v.shape)))
    return handles


def _value(p: ParamHandle) -> Any:
    return p.tensor.value


def _as(value: Any, dtype: Any) -> Any:
    return ops.cast(value, dtype)


class KerasOps:
    """:class:`regplug.Ops` over ``keras.Variable`` with ``keras.ops``.

    Gradients are reachable only while the adapter runs ``on_before_step`` inside the train
    step (between the backward pass and the optimizer update): the adapter opens that
    window with :meth:`gradient_window` and hands the possibly changed gradients on to the
    optimizer.
    """

    framework = "keras"

    def __init__(self) -> None:
        self._grads: list[Any] | None = None
        self._index: dict[int, int] = {}

    # -- the gradient window (used by the adapter) --------------------------------------
    def open_gradients(self, grads: Sequence[Any], variables: Sequence[Any]) -> None:
        self._grads = list(grads)
        self._index = {id(v): i for i, v in enumerate(variables)}

    def close_gradients(self) -> list[Any]:
        grads, self._grads, self._index = self._grads or [], None, {}
        return grads

    # -- values ----------------------------------------------------------------------------
    # Each term is ``sum(square(x))`` of one variable, exactly as keras.regularizers.L2
    # computes it, so gradients match Keras' own regularizers bit for bit.
    def sum_squares(self, params: Sequence[ParamHandle]) -> Any:
        return self._sum([ops.sum(ops.square(self._f32(p))) for p in params])

    def sum_abs(self, params: Sequence[ParamHandle]) -> Any:
        return self._sum([ops.sum(ops.absolute(self._f32(p))) for p in params])

    @staticmethod
    def _f32(p: ParamHandle) -> Any:
        x = _value(p)
        return x if keras.backend.standardize_dtype(x.dtype) == "float32" else _as(x, "float32")

    @staticmethod
    def _sum(terms: list[Any]) -> Any:
        if not terms:
            return ops.zeros((), dtype="float32")
        if len(terms) == 1:
            return terms[0]
        return ops.sum(ops.stack(terms))

    # -- gradients ---------------------------------------------------------------------
    def _grad_slots(self, params: Sequence[ParamHandle]) -> list[tuple[int, ParamHandle]]:
        if self._grads is None:
            raise UsageError(
                "regplug: gradients are only reachable from on_before_step (inside Keras' "
                "train step, between the backward pass and the optimizer update)")
        out = []
        for p in params:
            i = self._index.get(id(p.tensor))
            if i is not None and self._grads[i] is not None:
                out.append((i, p))
        return out

    def add_to_grad_(self, params: Sequence[ParamHandle], alpha: Any) -> None:
        for i, p in self._grad_slots(params):
            self._add_to_grad(i, alpha, lambda dtype: _as(_value(p), dtype))

    def add_sign_to_grad_(self, params: Sequence[ParamHandle], alpha: Any) -> None:
        for i, p in self._grad_slots(params):
            self._add_to_grad(i, alpha, lambda dtype: ops.sign(_as(_value(p), dtype)))

    def _add_to_grad(self, i: int, alpha: Any, term: Any) -> None:
        grads: list[Any] = self._grads  # type: ignore[assignment]
        g = ops.convert_to_tensor(grads[i])  # dense (TensorFlow may hand IndexedSlices)
        # Under a tf.distribute strategy this is one replica's share of the gradient, and
        # the optimizer sums the shares: the term is divided by the number of replicas so
        # that it counts once (a no-op on one device and on the other backends).
        grads[i] = g + scale_loss_for_distribution(_as(alpha, g.dtype) * term(g.dtype))

    # -- parameters ----------------------------------------------------------------------
    def scale_(self, params: Sequence[ParamHandle], factor: Any) -> None:
        for p in params:
            x = _value(p)
            p.tensor.assign(x * _as(factor, x.dtype))

    def soft_threshold_(self, params: Sequence[ParamHandle], threshold: Any) -> None:
        # x − clip(x, −t, t) is sign(x)·max(|x|−t, 0), and exactly 0 wherever |x| <= t.
        for p in params:
            x = _value(p)
            t = _as(threshold, x.dtype)
            p.tensor.assign(x - ops.minimum(ops.maximum(x, -t), t))

    def clip_unit_norms_(self, params: Sequence[ParamHandle], max_norm: Any) -> None:
        for p in params:
            x = _value(p)
            xf = _as(x, "float32")
            if p.unit_axis is None:
                norms = ops.sqrt(ops.sum(ops.square(xf)))
            else:
                axes = tuple(a for a in range(len(p.shape)) if a != p.unit_axis)
                norms = ops.sqrt(ops.sum(ops.square(xf), axis=axes, keepdims=True))
            m = _as(max_norm, "float32")
            scale = ops.where(norms > m, m / (norms + _MAX_NORM_EPS), ops.ones_like(norms))
            p.tensor.assign(x * _as(scale, x.dtype))

    # -- reporting (host reads: never on the per-step path) --------------------------------
    def to_float(self, value: Any) -> float:
        try:
            return float(ops.convert_to_numpy(value))
        except Exception as err:  # a symbolic tensor inside the traced step
            raise UsageError(
                "regplug: to_float() reads a value on the host; inside Keras' compiled train "
                "step (on_loss, on_before_step, on_step) there is no value to read. Call it "
                "from on_epoch_end or on_train_end, or train with run_eagerly=True") from err

    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        zeros = total = 0
        for p in params:
            array = ops.convert_to_numpy(p.tensor)
            zeros += int((array == 0).sum())
            total += int(array.size)
        return zeros, total


class KerasModelState:
    """:class:`regplug.run.ModelState` over ``model.weights`` (trainable and non-trainable
    variables, e.g. batch-norm moving statistics — what ``get_weights`` covers).

    Device snapshots are non-trainable ``keras.Variable`` buffers created once and assigned
    at later snapshots; host snapshots are NumPy arrays. ``before_read`` is called first
    (the adapter writes JAX's running training state back into the variables there).
    """

    def __init__(self, model: Any, before_read: Any = None) -> None:
        self.variables: dict[str, Any] = {}
        for i, v in enumerate(model.weights):
            name = v.path if v.path not in self.variables else f"{v.path}#{i}"
            self.variables[name] = v
        self._before_read = before_read

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
            return {k: keras.Variable(ops.convert_to_numpy(v.value), dtype=v.dtype,
                                      trainable=False, name=f"regplug_snapshot_{i}")
                    for i, (k, v) in enumerate(self.variables.items())}
        for k, v in self.variables.items():
            target = into[k]
            if isinstance(target, np.ndarray):
                np.copyto(target, ops.convert_to_numpy(v.value))
            else:
                target.assign(v.value)
        return into

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._sync()
        for k, v in self.variables.items():
            saved = snapshot[k]
            v.assign(saved if isinstance(saved, np.ndarray) else saved.value)

    def to_numpy(self, snapshot: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.array(s if isinstance(s, np.ndarray) else ops.convert_to_numpy(s.value))
                for k, s in snapshot.items()}

    def from_numpy(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        check_state_arrays("keras", arrays,
                           {k: tuple(int(d) for d in v.shape) for k, v in self.variables.items()})
        return {k: np.array(arrays[k], dtype=keras.backend.standardize_dtype(v.dtype))
                for k, v in self.variables.items()}

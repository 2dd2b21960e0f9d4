"""Keras 3 side of the ops protocol: operations on ``keras.Variable``.

Everything here is written with ``keras.ops`` so that it runs unchanged on every Keras
backend and, above all, *inside* the train step Keras traces (``tf.function``, ``jax.jit``,
``torch.compile``): values are read with ``variable.value`` (which, inside Keras' stateless
scopes, is the traced current value) and written with ``variable.assign``. Nothing on the
per-step path reads a value back to the host or branches in Python on a tensor.

Docs: docs/keras-internals.md
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from regplug.conventions import MAX_NORM_EPS
from regplug.errors import UsageError
from regplug.ops import check_copies
from regplug.run import ParamHandle

from . import _compat

__all__ = ["KerasOps", "scale_for_replicas"]

def scale_for_replicas(value: Any) -> Any:
    """``value / replicas`` inside a ``tf.distribute`` strategy's replica context, else ``value``.

    Under a strategy Keras divides each replica's loss by the number of replicas, because the
    replicas' gradients are summed, and divides its own regularizers' terms the same way
    (``TensorFlowTrainer`` does it for ``model.losses``); regplug's terms follow the same rule,
    so each counts once. A no-op on one device and on the other backends.
    """
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        value = ops.multiply(value, ops.cast(1.0 / replicas, value.dtype))
    return value


def _tracing() -> bool:
    """Whether Keras is tracing (or, on JAX, running) its compiled train step right now."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.inside_function())
    if backend == "jax":
        return _compat.stateless_scope() is not None
    if backend == "torch":
        import torch

        return bool(torch.compiler.is_compiling())
    return False


def _unshared(x: Any) -> Any:
    """JAX: a copy, so two variables never hold one buffer (a jitted step donates each
    variable's buffer, and one buffer donated twice is an error); elsewhere ``x``."""
    return ops.copy(x) if keras.backend.backend() == "jax" else x


def _value(p: ParamHandle) -> Any:
    return p.tensor.value


def _read(copy: Any) -> Any:
    """The value of a copy from ``clone`` (a variable) or of a plain tensor."""
    return copy.value if isinstance(copy, keras.Variable) else copy


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
    #: ``on_before_step`` runs inside Keras' traced train step: a gradient norm taken there
    #: is symbolic, so monitors that keep values for later do not take them.
    eager_gradients = False

    def __init__(self) -> None:
        #: Called with each variable :meth:`clone` creates; the adapter sets it during a
        #: ``fit`` so that the traced step carries the copies as state (JAX).
        self.register: Callable[[Any], None] | None = None
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
            self._add_to_grad(i, alpha, lambda dtype, p=p: _as(_value(p), dtype))

    def add_sign_to_grad_(self, params: Sequence[ParamHandle], alpha: Any) -> None:
        for i, p in self._grad_slots(params):
            self._add_to_grad(i, alpha, lambda dtype, p=p: ops.sign(_as(_value(p), dtype)))

    def _add_to_grad(self, i: int, alpha: Any, term: Any) -> None:
        grads: list[Any] = self._grads  # type: ignore[assignment]
        g = ops.convert_to_tensor(grads[i])  # dense (TensorFlow may hand IndexedSlices)
        # Under a tf.distribute strategy this is one replica's share of the gradient, and
        # the optimizer sums the shares: the term is divided by the number of replicas so
        # that it counts once (a no-op on one device and on the other backends).
        grads[i] = g + scale_for_replicas(_as(alpha, g.dtype) * term(g.dtype))

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
            scale = ops.where(norms > m, m / (norms + MAX_NORM_EPS), ops.ones_like(norms))
            p.tensor.assign(x * _as(scale, x.dtype))

    # -- copies ------------------------------------------------------------------------
    def clone(self, params: Sequence[ParamHandle]) -> list[Any]:
        """New non-trainable ``keras.Variable`` objects holding the parameters' values.

        Creates variables, so it must be called outside the compiled train step (from
        ``on_train_begin``, ``on_epoch_end``, ...); inside it raises a
        :class:`~regplug.UsageError`. During a ``fit`` the adapter registers the copies as
        state of the step (:attr:`register`), so on JAX the traced step reads their current
        values rather than constants captured at trace time, and what the step writes into
        them (:meth:`copy_into_` in ``on_before_step``/``on_step``) is kept
        (``tests/keras/test_copy_ops.py``).
        """
        if _tracing():
            raise UsageError(
                "regplug: ops.clone() creates variables, which Keras cannot do inside its "
                "compiled train step (on_loss, on_before_step, on_step); clone in "
                "on_train_begin and update the copies in the step with copy_into_()")
        copies = []
        for p in params:
            var = p.tensor
            # ops.copy: a new buffer (on torch a variable would otherwise alias the tensor)
            copy = keras.Variable(ops.copy(var.value), dtype=var.dtype, trainable=False,
                                  name=f"regplug_copy_{var.name}")
            if self.register is not None:
                self.register(copy)
            copies.append(copy)
        return copies

    def copy_into_(self, dst: Sequence[Any], params: Sequence[ParamHandle]) -> None:
        check_copies("copy_into_", dst, params)
        for target, p in zip(dst, params):
            target.assign(_unshared(_value(p)))

    def copy_from_(self, params: Sequence[ParamHandle], src: Sequence[Any]) -> None:
        check_copies("copy_from_", src, params)
        for p, source in zip(params, src):
            p.tensor.assign(_unshared(source.value if isinstance(source, keras.Variable)
                                      else source))

    def scale_update_(self, params: Sequence[ParamHandle], before: Sequence[Any],
                      factors: Sequence[float]) -> None:
        check_copies("scale_update_", before, params)
        for p, b, f in zip(params, before, factors):
            x = _value(p)
            start = b.value if isinstance(b, keras.Variable) else b
            p.tensor.assign(start + _as(f, x.dtype) * (x - start))

    # -- freezing ----------------------------------------------------------------------
    def set_trainable_(self, params: Sequence[ParamHandle], trainable: bool) -> bool:
        """Nothing changes: Keras traces the trained variables into its compiled step, and
        on JAX ``stateless_apply`` must update every variable the optimizer was built with.
        The plugin keeps frozen variables in place inside the step (returns ``False``)."""
        return False

    def zero_grads_(self, params: Sequence[ParamHandle], where: Any) -> None:
        grads: list[Any] = self._grads  # type: ignore[assignment]
        for i, _ in self._grad_slots(params):
            g = ops.convert_to_tensor(grads[i])
            grads[i] = ops.where(_as(where, "float32") > 0.5, ops.zeros_like(g), g)

    def hold(self, params: Sequence[ParamHandle]) -> list[Any]:
        # A copy: on the torch backend the variable's tensor is updated in place.
        return [ops.copy(_value(p)) for p in params]

    def put_back_(self, params: Sequence[ParamHandle], held: Sequence[Any],
                  where: Any) -> None:
        check_copies("put_back_", held, params)
        for p, value in zip(params, held):
            x = _value(p)
            p.tensor.assign(ops.where(_as(where, "float32") > 0.5, value, x))

    # -- running averages --------------------------------------------------------------
    def moving_average_(self, averages: Sequence[ParamHandle], params: Sequence[ParamHandle],
                        momentum: Any) -> None:
        # The formula of the optimizers' use_ema (BaseOptimizer's moving-average update),
        # term for term, so the averages equal Keras' own.
        for a, p in zip(averages, params, strict=True):
            x = _value(p)
            m = _as(momentum, x.dtype)
            a.tensor.assign(ops.add(ops.multiply(m, a.tensor.value),
                                    ops.multiply(ops.subtract(1, m), x)))

    def load_copies_(self, copies: Sequence[ParamHandle], arrays: Sequence[Any]) -> None:
        for c, array in zip(copies, arrays, strict=True):
            c.tensor.assign(ops.convert_to_tensor(array, dtype=c.tensor.dtype))

    # -- distance to a reference point ------------------------------------------------
    def sum_squares_diff(self, params: Sequence[ParamHandle], reference: Sequence[Any]) -> Any:
        check_copies("sum_squares_diff", reference, params)
        return self._sum([ops.sum(ops.square(self._f32(p) - _as(_read(r), "float32")))
                          for p, r in zip(params, reference)])

    def add_diff_to_grad_(self, params: Sequence[ParamHandle], reference: Sequence[Any],
                          alpha: Any) -> None:
        check_copies("add_diff_to_grad_", reference, params)
        at = {id(p): r for p, r in zip(params, reference)}
        for i, p in self._grad_slots(params):
            r = at[id(p)]
            self._add_to_grad(i, alpha, lambda dtype, p=p, r=r: _as(_value(p), dtype)
                              - _as(_read(r), dtype))

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

    def to_numpy(self, params: Sequence[ParamHandle]) -> list[Any]:
        return [ops.convert_to_numpy(p.tensor).astype("float32", copy=True) for p in params]

    def grad_norms(self, params: Sequence[ParamHandle]) -> list[Any]:
        """Inside the traced train step these are symbolic: :class:`LayerMonitor` reads no
        gradient in Keras (:attr:`eager_gradients`)."""
        out = []
        for p in params:
            slots = dict(self._grad_slots([p]))
            if not slots:
                out.append(ops.zeros((), dtype="float32"))
                continue
            g = ops.convert_to_tensor(self._grads[next(iter(slots))])  # type: ignore[index]
            out.append(ops.sqrt(ops.sum(ops.square(_as(g, "float32")))))
        return out

    def zero_grad_units(self, params: Sequence[ParamHandle]) -> list[Any]:
        """NaN for each: a symbolic gradient cannot be read per unit (:attr:`eager_gradients`);
        :class:`LayerMonitor` reads Keras' dead units from the weights."""
        return [ops.full((), float("nan"), dtype="float32") for _ in params]

"""The array operations plugins may use, implemented once per framework by each adapter.

Plugins never import a framework: they call these on lists of :class:`regplug.ParamHandle`
(or on framework scalars they got from other ops). Each adapter implements the protocol with
its fastest primitives (``torch._foreach_*`` in PyTorch, variable assignments inside the
compiled step in Keras); :class:`regplug.numpy_ops.NumpyOps` is the plain reference that
defines the semantics and lets plugins be tested without any framework.

Conventions: methods ending in ``_`` change parameters or gradients in place and return
``None``; ``factor``/``alpha``/``threshold`` arguments may be Python floats or framework
scalars (e.g. a Keras variable holding a scheduled strength); nothing on the per-step path
may copy a value to the host. Frozen parameters: see :class:`Ops`.

Docs: docs/plugin-guide.md (the table of ``run.ops``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .run import ParamHandle

Scalar = Any  # a Python float or a framework scalar (tensor, variable)


@runtime_checkable
class Ops(Protocol):
    """Array operations over parameter handles.

    Frozen parameters follow the framework's own optimizers: the in-place ops never touch a
    parameter that does not train (``requires_grad=False`` in PyTorch; Keras hands out
    trainable variables only), and during an optimizer update (``on_before_step``/``on_step``)
    they skip a parameter that got no gradient in this step, as ``torch.optim.AdamW`` does.
    The values (``sum_squares``, ``sum_abs``) leave frozen parameters out too.
    """

    framework: str

    # -- values (differentiable: used for penalties that go through autograd) -----------
    def sum_squares(self, params: Sequence[ParamHandle]) -> Scalar:
        """``Σ θ²`` over every element of every parameter, as a float32 scalar."""

    def sum_abs(self, params: Sequence[ParamHandle]) -> Scalar:
        """``Σ |θ|`` over every element of every parameter, as a float32 scalar."""

    # -- gradients (in place, between backward and the optimizer update) -----------------
    def add_to_grad_(self, params: Sequence[ParamHandle], alpha: Scalar) -> None:
        """``grad += alpha · θ`` for every parameter that has a gradient this step."""

    def add_sign_to_grad_(self, params: Sequence[ParamHandle], alpha: Scalar) -> None:
        """``grad += alpha · sign(θ)`` for every parameter that has a gradient this step."""

    # -- parameters (in place) --------------------------------------------------------
    def scale_(self, params: Sequence[ParamHandle], factor: Scalar) -> None:
        """``θ ← factor · θ``."""

    def soft_threshold_(self, params: Sequence[ParamHandle], threshold: Scalar) -> None:
        """``θ ← sign(θ) · max(|θ| − threshold, 0)``: entries within the threshold become 0."""

    def clip_unit_norms_(self, params: Sequence[ParamHandle], max_norm: Scalar) -> None:
        """Rescale each unit's incoming weight vector to L2 norm ``<= max_norm``.

        A unit is one index along ``handle.unit_axis``; the norm runs over all other axes.
        Units already within the bound are left exactly as they are.
        """

    # -- copies of parameter values (weight averages, anchors, saved updates) -------------
    def clone(self, params: Sequence[ParamHandle]) -> list[Any]:
        """A detached copy of each parameter's current value, on the parameter's device.

        The copies are the framework's own arrays (a ``torch.Tensor`` without gradient, a
        non-trainable ``keras.Variable``, a ``numpy.ndarray``), in the order of ``params``;
        plugins keep them and pass them back to the ops below. Allocates: call it outside
        the per-step path (``on_train_begin``); Keras cannot create variables inside its
        compiled step and refuses the call there.
        """

    def copy_into_(self, dst: Sequence[Any], params: Sequence[ParamHandle]) -> None:
        """``dst[i] ← θ_i``: write the parameters' current values into copies from
        :meth:`clone`, in place (also inside Keras' compiled step)."""

    def copy_from_(self, params: Sequence[ParamHandle], src: Sequence[Any]) -> None:
        """``θ_i ← src[i]``: write copies from :meth:`clone` back into the parameters, in
        place (also inside Keras' compiled step); frozen parameters are left alone."""

    # -- scaling an update (layer-wise learning rates) ---------------------------------------
    def scale_update_(self, params: Sequence[ParamHandle], before: Sequence[Any],
                      factors: Sequence[float]) -> None:
        """``θ_i ← before_i + factors[i] · (θ_i − before_i)``: the update since ``before``
        (copies from :meth:`clone`, filled with :meth:`copy_into_` before the update) scaled
        per parameter. From ``on_step``; frozen parameters and, in PyTorch, those without a
        gradient this step are left alone (their update is 0 anyway). Fused per distinct
        factor where the framework allows (``torch._foreach_lerp_``)."""

    # -- freezing (the Freeze plugin) ------------------------------------------------------
    def set_trainable_(self, params: Sequence[ParamHandle], trainable: bool) -> bool:
        """Switch the parameters' training off (``False``) or back on, between steps.

        Returns whether the framework froze them for real: PyTorch (``requires_grad_``,
        the gradient dropped) leaves them out of the backward pass and the optimizer, and
        returns ``True``. Keras traces the set of trained variables into its compiled step
        (and JAX's optimizer must update all it was built with): nothing changes there and
        it returns ``False``; the plugin then holds the parameters in place inside the
        step with :meth:`zero_grads_`, :meth:`hold` and :meth:`put_back_`.
        """

    def zero_grads_(self, params: Sequence[ParamHandle], where: Scalar) -> None:
        """``grad ← 0`` where ``where`` is 1 (a 0/1 scalar, e.g. from ``run.scalar``);
        unchanged where it is 0. From ``on_before_step``."""

    def hold(self, params: Sequence[ParamHandle]) -> list[Any]:
        """The parameters' current values (inside Keras' step: its traced values), for
        :meth:`put_back_` later in the same step. From ``on_before_step``."""

    def put_back_(self, params: Sequence[ParamHandle], held: Sequence[Any],
                  where: Scalar) -> None:
        """``θ ← held`` bit for bit where ``where`` is 1; unchanged where it is 0. From
        ``on_step``."""

    # -- running averages of the parameters (weight averaging) -------------------------------
    def moving_average_(self, averages: Sequence[ParamHandle], params: Sequence[ParamHandle],
                        momentum: Scalar) -> None:
        """``a_i ← momentum · a_i + (1 − momentum) · θ_i`` for every pair, in place.

        ``averages`` are handles over copies from :meth:`clone` (the same names, shapes and
        order as ``params``); ``momentum`` 0 copies ``θ`` exactly, ``n/(n+1)`` keeps the
        equal-weight mean of ``n+1`` values. One fused update where the framework has one
        (``torch._foreach_lerp_`` with weight ``1 − momentum``, as
        ``torch.optim.swa_utils.get_ema_multi_avg_fn``; Keras' ``use_ema`` formula, also
        inside the compiled step). Frozen parameters are averaged too (their average stays
        their value).
        """

    def load_copies_(self, copies: Sequence[ParamHandle], arrays: Sequence[Any]) -> None:
        """``c_i ← arrays[i]``: NumPy arrays (a checkpoint's) into handles over copies from
        :meth:`clone`, cast to the copies' dtype, on their device. Outside the step."""

    # -- distance to a reference point (start-point penalties: L2SP) -----------------------
    def sum_squares_diff(self, params: Sequence[ParamHandle], reference: Sequence[Any]) -> Scalar:
        """``Σ (θ − θ₀)²`` over every element of every parameter, as a float32 scalar,
        differentiable with respect to ``θ``; ``reference`` are copies from :meth:`clone`
        (never changed). Frozen parameters are left out, as in :meth:`sum_squares`."""

    def add_diff_to_grad_(self, params: Sequence[ParamHandle], reference: Sequence[Any],
                          alpha: Scalar) -> None:
        """``grad += alpha · (θ − θ₀)`` for every parameter that has a gradient this step
        (``reference``: copies from :meth:`clone`)."""

    # -- reporting (may synchronise with the device: never call on the per-step path) ---
    def to_float(self, value: Scalar) -> float:
        """A scalar as a Python float."""

    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        """``(number of elements exactly 0, number of elements)`` over the parameters."""

    def to_numpy(self, params: Sequence[ParamHandle]) -> list[Any]:
        """A host copy of each parameter as a ``numpy.ndarray`` (for per-epoch reports)."""

    # -- gradient reporting (from ``on_before_step``; no host read) -----------------------
    def grad_norms(self, params: Sequence[ParamHandle]) -> list[Scalar]:
        """The L2 norm of each parameter's gradient in this step (0 where it has none), as
        float32 scalars left on the device: read them later with :meth:`to_float`."""

    def zero_grad_units(self, params: Sequence[ParamHandle]) -> list[Scalar]:
        """Per parameter (each with a ``unit_axis``), the share of its units whose gradient
        in this step is exactly 0 everywhere (1 where it has no gradient; NaN where it
        cannot be told): a ReLU unit that is 0 on every row of the batch. float32 scalars
        left on the device, read with :meth:`to_float` (:class:`LayerMonitor`)."""


def check_copies(op: str, copies: Sequence[Any], params: Sequence[ParamHandle]) -> None:
    """Refuse copies that do not pair one to one with ``params`` (for the copy ops)."""
    if len(copies) != len(params):
        raise ValueError(f"regplug: ops.{op} got {len(copies)} copies for {len(params)} "
                         "parameters; pass the list clone() returned for the same parameters")

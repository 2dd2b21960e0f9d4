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

    # -- reporting (may synchronise with the device: never call on the per-step path) ---
    def to_float(self, value: Scalar) -> float:
        """A scalar as a Python float."""

    def count_zeros(self, params: Sequence[ParamHandle]) -> tuple[int, int]:
        """``(number of elements exactly 0, number of elements)`` over the parameters."""

"""The rules every adapter follows the same way, kept in one place.

Adapters translate these into their framework's types; none of them restates a rule:

* which parameter names are biases (:func:`is_bias_name`),
* the epsilon of the max-norm projection (:data:`MAX_NORM_EPS`),
* which layers count as dropout, and which of those a plugin may reschedule
  (:data:`SCHEDULABLE_DROPOUT`, :data:`OTHER_DROPOUT`),
* how one parameter shared by several layers gets its kind (:func:`shared_kind`),
* how a parameter is named for plugins, the same way in every framework
  (:func:`param_name`).

Docs: docs/plugin-guide.md (what a plugin sees of the parameters).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["MAX_NORM_EPS", "SCHEDULABLE_DROPOUT", "OTHER_DROPOUT", "DROPOUT_LAYERS",
           "is_bias_name", "shared_kind", "param_name"]

#: Added to each unit's norm before dividing, in every max-norm projection (``max_norm /
#: (norm + eps)``), as Keras' ``MaxNorm`` constraint and ``torch.renorm`` do.
MAX_NORM_EPS: float = 1e-7

#: Dropout layers whose rate a plugin may change during training (handed out by
#: ``run.dropout_layers()``): inverted Bernoulli dropout — each element (or channel) is zeroed
#: with probability ``rate`` and the survivors are scaled by ``1 / (1 − rate)``. Class names
#: in PyTorch (``Dropout``, ``Dropout1d/2d/3d``) and in Keras (``Dropout``,
#: ``SpatialDropout1D/2D/3D``); subclasses count too.
SCHEDULABLE_DROPOUT: frozenset[str] = frozenset({
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
})

#: Dropout layers that follow another formula (alpha dropout keeps SELU's mean and variance,
#: Gaussian dropout multiplies by noise): their ``rate`` means something else, so they are
#: never rescheduled; they still count as dropout where a plugin or a check switches dropout
#: off (trial training) or on (MC dropout).
OTHER_DROPOUT: frozenset[str] = frozenset({"AlphaDropout", "FeatureAlphaDropout",
                                            "GaussianDropout"})

#: Every layer type that drops units at random in training and is the identity in inference.
DROPOUT_LAYERS: frozenset[str] = SCHEDULABLE_DROPOUT | OTHER_DROPOUT


def is_bias_name(name: str) -> bool:
    """Whether a parameter's own name (the last part of its path) marks an additive offset.

    ``bias``, and the biases of fused layers: ``in_proj_bias`` (multi-head attention),
    ``bias_ih_l0`` (recurrent layers), ``recurrent_bias``. Layer types decide first (a
    normalization layer's offset is ``normalization``, an embedding table ``embedding``);
    this rule applies to the parameters of every other layer.

    >>> is_bias_name("bias"), is_bias_name("in_proj_bias"), is_bias_name("bias_ih_l0")
    (True, True, True)
    >>> is_bias_name("biased_weight")
    False
    """
    leaf = name.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias") or leaf.startswith("bias_")


_LORA_PART = re.compile(r"lora_(?:[A-Za-z]+_)?[ABab]")


def is_lora_name(name: str) -> bool:
    """Whether a parameter's name marks a LoRA adapter matrix (kind ``lora``).

    Any part of the name (split at dots and slashes) that is ``lora_A``/``lora_B`` (PEFT's
    modules and most hand-written LoRA layers; also lower case), ``lora_embedding_A/B``
    (PEFT's embeddings) or ``lora_<what>_a/b`` (Keras' own ``enable_lora``:
    ``lora_kernel_a``, ``lora_embeddings_b``). The rule comes before the layer type: an
    adapter inside an embedding layer is ``lora``, not ``embedding``.

    >>> is_lora_name("q_proj.lora_A.default.weight"), is_lora_name("dense/lora_kernel_b")
    (True, True)
    >>> is_lora_name("q_proj.base_layer.weight"), is_lora_name("explora_A")
    (False, False)
    """
    return any(_LORA_PART.fullmatch(part) for part in re.split(r"[./]", name))


#: Which kind wins when one tensor is shared by layers that would give it different kinds
#: (a tied embedding/output matrix): the first in this order. An embedding table tied to an
#: output layer stays an embedding (so L2's default selection of weights leaves it alone, as
#: it would without the tie), whatever order the modules were registered in.
_KIND_PRECEDENCE: tuple[str, ...] = ("lora", "embedding", "normalization", "bias", "weight")


def shared_kind(kinds: Iterable[str]) -> str:
    """The kind of a parameter shared by several layers, from the kinds each would give it.

    >>> shared_kind(["weight", "embedding"]), shared_kind(["embedding", "weight"])
    ('embedding', 'embedding')
    """
    found = set(kinds)
    for kind in _KIND_PRECEDENCE:
        if kind in found:
            return kind
    raise ValueError("shared_kind: no kinds given")


def param_name(layers: Sequence[str], leaf: str) -> str:
    """The name plugins see for a parameter, the same way in every framework.

    ``layers`` are the names of the layers (modules) leading from the model down to the one
    holding the parameter, the model itself excluded; ``leaf`` is the parameter's own name.
    They are joined with dots, PyTorch's way::

        PyTorch  model.head = nn.Linear(...)         head.weight, head.bias
        Keras    Dense(..., name="head") in a model  head.kernel, head.bias

    PyTorch's ``named_parameters()`` names are already of this form (module attributes).
    In Keras the layers are named by their ``name`` and nested layers (a model inside a
    ``Sequential``, a sublayer of a subclassed model or layer) add theirs, whatever the
    model is called and whenever the layer was built. Keras' own ``variable.path``
    (``"sequential/head/kernel"``) depends on both, so a pattern written for one model
    need not match the next; selections also match it (``ParamHandle.native_name``).

    >>> param_name(["encoder", "0"], "weight"), param_name([], "scale")
    ('encoder.0.weight', 'scale')
    """
    return ".".join([*layers, leaf])

"""Which parameters a plugin acts on: by kind (decided from the layer type) and by name.

Docs: docs/plugins/index.md
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import ParamHandle

#: The parameter kinds adapters assign, from the type of the layer that owns the parameter:
#: ``normalization`` — every parameter of a BatchNorm/LayerNorm/GroupNorm/... layer;
#: ``embedding`` — the table of an embedding layer; ``bias`` — additive offsets of other
#: layers; ``weight`` — everything else (Linear/Dense/Conv kernels, recurrent matrices, ...);
#: ``lora`` — LoRA adapter matrices, by name whatever the layer
#: (:func:`regplug.conventions.is_lora_name`: ``lora_A``/``lora_B``, Keras' ``lora_kernel_a``).
PARAM_KINDS: tuple[str, ...] = ("weight", "bias", "normalization", "embedding", "lora")

#: What a plugin selects when not told otherwise: weight matrices and kernels only, as
#: Keras' ``kernel_regularizer`` does. Biases, normalization scales/offsets and embeddings
#: are left alone unless selected explicitly, and so are LoRA adapters (``kinds="lora"``
#: for the adapters only, ``("weight", "lora")`` for both; see docs/plugins/index.md).
DEFAULT_KINDS: tuple[str, ...] = ("weight",)


def _patterns(owner: str, arg: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, Iterable):
        items = tuple(value)
    else:
        items = (value,)
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"{owner}: argument {arg!r} must be a name pattern or a list of "
                            f"them (glob syntax, e.g. 'encoder.*'), got {item!r}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class Selection:
    """Parameters of the given kinds whose name matches ``include`` and not ``exclude``.

    Patterns use shell-style globs matched against the full parameter name, which is
    framework-neutral (:func:`regplug.conventions.param_name`): the names of the layers from
    the model down, then the parameter's own, joined by dots — ``"0.weight"``,
    ``"encoder.layers.3.linear1.weight"`` in PyTorch, ``"head.kernel"`` for a Keras
    ``Dense(name="head")``. So ``include="head.*"`` selects the same layer in both. A
    pattern also matches the framework's own name (``ParamHandle.native_name``: Keras'
    variable path, ``"sequential/dense_1/kernel"``), so patterns written for it keep
    working; a parameter is excluded when either name matches ``exclude``. An empty
    ``include`` means every name.

    >>> Selection.build("L2", kinds="all", exclude="head.*").kinds
    ('weight', 'bias', 'normalization', 'embedding', 'lora')
    """

    kinds: tuple[str, ...] = DEFAULT_KINDS
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: Who selects (named in the warning when nothing matches); not part of equality.
    owner: str = field(default="", compare=False)
    #: Whether the user named the kinds (``False``: :data:`DEFAULT_KINDS`); not part of
    #: equality. A default selection on a model with LoRA adapters warns that it leaves them out.
    kinds_given: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def build(cls, owner: str, *, kinds: str | Iterable[str] | None = None,
              include: str | Iterable[str] | None = None,
              exclude: str | Iterable[str] | None = None) -> Selection:
        """Validate user arguments (``owner`` names the plugin in error messages)."""
        if kinds is None:
            chosen = DEFAULT_KINDS
        elif kinds == "all":
            chosen = PARAM_KINDS
        else:
            chosen = (kinds,) if isinstance(kinds, str) else tuple(kinds)
            unknown = [k for k in chosen if k not in PARAM_KINDS]
            if unknown or not chosen:
                layer_kinds = ", ".join(repr(k) for k in PARAM_KINDS if k != "lora")
                raise ValueError(f"{owner}: argument 'kinds' must be 'all' or a non-empty list "
                                 f"drawn from {layer_kinds}; got {kinds!r} (and 'lora' for "
                                 "LoRA adapter matrices)")
        return cls(tuple(dict.fromkeys(chosen)), _patterns(owner, "include", include),
                   _patterns(owner, "exclude", exclude), owner, kinds is not None)

    def matches(self, handle: ParamHandle) -> bool:
        return handle.kind in self.kinds and self.matches_name(handle)

    def matches_name(self, handle: ParamHandle) -> bool:
        """Whether ``include``/``exclude`` admit the handle, whatever its kind."""
        names = _names(handle)
        if self.include and not _any_match(names, self.include):
            return False
        return not _any_match(names, self.exclude)

    def describe(self) -> str:
        parts = [f"kinds={list(self.kinds)}"]
        if self.include:
            parts.append(f"include={list(self.include)}")
        if self.exclude:
            parts.append(f"exclude={list(self.exclude)}")
        return ", ".join(parts)


def _names(handle: ParamHandle) -> tuple[str, ...]:
    native = getattr(handle, "native_name", "") or handle.name
    return (handle.name,) if native == handle.name else (handle.name, native)


def _any_match(names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for name in names for p in patterns)

"""Layer depth from parameter names: which parameters sit low (embeddings), which high (the head).

:func:`resolve_depths` places every parameter of a model at a depth ``0..L`` from its
framework-neutral name (:func:`regplug.conventions.param_name`), by a documented default for
common stacks or by name patterns listed bottom to top; :func:`depth_groups` lists the names
per depth. :class:`~regplug.plugins.LayerwiseLR` (learning rates decaying with depth) and
freezing schedules (unfreezing one block at a time from the top) build on them. Names only
(and kinds where given): the same rules in every framework, testable without one.

Docs: docs/plugins/fine-tuning.md (section "How depth is found")
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Mapping, Sequence

from .errors import RegplugError

__all__ = ["resolve_depths", "depth_groups", "BLOCK_CONTAINERS", "HEAD_NAMES", "DepthError"]

#: Containers whose numbered children are the blocks of a stack: ``layers.N`` (Llama,
#: ``nn.TransformerEncoder``), ``layer.N`` (BERT's ``encoder.layer.N``), ``blocks.N`` (timm),
#: ``block.N`` (T5), ``h.N`` (GPT-2), ``resblocks.N`` (CLIP). Block ``N`` sits at depth by N.
BLOCK_CONTAINERS: tuple[str, ...] = ("layers", "layer", "blocks", "block", "h", "resblocks")

#: Names of output layers outside the blocks; a parameter with such a component is at the top.
HEAD_NAMES: tuple[str, ...] = ("head", "heads", "lm_head", "classifier", "fc", "score")

_BLOCK = re.compile(r"(?:^|\.)(?:" + "|".join(BLOCK_CONTAINERS) + r")\.(\d+)(?:\.|$)")
# embeddings, embed_tokens, word_embeddings, patch_embed, pos_embed; GPT-2's wte/wpe; ViT's
# cls_token, dist_token, mask_token
_EMBED = re.compile(r"embed|^wte$|^wpe$|^[a-z]*_token$")


class DepthError(RegplugError, ValueError):
    """A parameter cannot be placed at a depth, or a pattern places nothing (one line,
    naming the plugin, its argument, the parameter or pattern, and the fix)."""


def _common_prefix(names: Sequence[str]) -> int:
    """How many leading dotted components every name shares (each keeps at least its last)."""
    split = [n.split(".") for n in names]
    if not split:
        return 0
    width = min(len(s) for s in split) - 1
    k = 0
    while k < width and all(s[k] == split[0][k] for s in split):
        k += 1
    return k


def _is_head(parts: Sequence[str]) -> bool:
    return any(p in HEAD_NAMES for p in parts[:-1]) or (len(parts) == 1 and parts[0] in HEAD_NAMES)


def _is_embedding(parts: Sequence[str], kind: str | None) -> bool:
    return kind == "embedding" or any(_EMBED.search(p) for p in parts)


def resolve_depths(names: Sequence[str],
                   patterns: Sequence[str | Sequence[str]] | None = None, *,
                   kinds: Mapping[str, str] | None = None,
                   required: Collection[str] | None = None,
                   owner: str = "resolve_depths", arg: str = "patterns") -> dict[str, int]:
    """The depth of each parameter, from 0 (bottom) to ``L`` (top).

    :param names: the model's parameter names *in the model's order* (``named_parameters()``
        in PyTorch, ``trainable_variables`` in Keras; ``[p.name for p in run.params]``).
    :param patterns: ``None`` for the default rules below, or one entry per depth, bottom to
        top; an entry is a glob or a list of globs (e.g. ``["embed*", "encoder.layer.0.*",
        ..., "*"]``). A name takes the depth of the first entry one of whose globs matches
        it (so a last ``"*"`` catches the rest); ``L`` is ``len(patterns) - 1``.
    :param kinds: parameter kinds by name (``"embedding"`` counts as an embedding).
    :param required: the names that must get a depth (default: all); others that cannot be
        placed are left out of the result instead of raising.
    :param owner, arg: how :class:`DepthError` messages name the caller and its argument.
    :raises DepthError: a required name has no depth, or an entry of ``patterns`` matches
        no name at all.

    Default rules (2, 3 and 5 on the names after dropping the components all of them share):

    1. in a numbered block (``layers.N``, ``layer.N``, ``blocks.N``, ``block.N``, ``h.N``,
       ``resblocks.N``; the leftmost match): the blocks' depths follow N;
    2. else a head (a component ``head``, ``heads``, ``lm_head``, ``classifier``, ``fc``,
       ``score``): the top;
    3. else an embedding (kind ``embedding``, or a component containing ``embed``, ``wte``,
       ``wpe``, ``cls_token``-like ``*_token``): the bottom;
    4. else, when the model has blocks: before the first block's parameters, the bottom
       (a stem); after the last block's, the top (a final norm, a pooler); in between,
       a :class:`DepthError`;
    5. a model without numbered blocks: each top-level layer or module (``nn.Sequential``
       index, Keras layer) is one depth, in the model's order; a normalization layer (all
       its parameters of kind ``normalization``, as ``kinds`` says) shares the depth of the
       layer before it.

    Depths are then numbered from 0 (the lowest present) to ``L`` (the highest). Numbered
    blocks keep their spacing: a block missing from ``names`` (frozen out of the optimizer)
    leaves its depth empty, so the others' distance to the top does not depend on it.

    >>> resolve_depths(["embed.weight", "layers.0.w", "layers.1.w", "norm.weight",
    ...                 "head.weight"])
    {'embed.weight': 0, 'layers.0.w': 1, 'layers.1.w': 2, 'norm.weight': 3, 'head.weight': 3}
    >>> resolve_depths(["0.weight", "0.bias", "2.weight"])
    {'0.weight': 0, '0.bias': 0, '2.weight': 1}
    """
    names = list(names)
    need = set(names) if required is None else set(required)
    if patterns is not None:
        return _from_patterns(names, patterns, need, owner, arg)
    kinds = kinds or {}
    cut = _common_prefix(names)
    parts = {n: n.split(".")[cut:] for n in names}
    blocks: dict[str, int] = {}
    for n in names:
        found = _BLOCK.search(n)
        if found:
            blocks[n] = int(found.group(1))
    # ranks: embeddings/stem -1, blocks/groups 0.., head +inf (renumbered below)
    raw: dict[str, float] = {}
    problems: dict[str, str] = {}
    positions = {n: i for i, n in enumerate(names)}
    block_pos = [positions[n] for n in blocks]
    groups = _layer_groups(names, parts, kinds) if not block_pos else {}
    for n in names:
        p = parts[n]
        if n in blocks:
            raw[n] = blocks[n]
        elif _is_head(p):
            raw[n] = float("inf")
        elif _is_embedding(p, kinds.get(n)):
            raw[n] = -1.0
        elif block_pos:
            if positions[n] < min(block_pos):
                raw[n] = -1.0
            elif positions[n] > max(block_pos):
                raw[n] = float("inf")
            else:
                problems[n] = ("it is in no numbered block (" + ", ".join(
                    f"{c}.N" for c in BLOCK_CONTAINERS) + "), not an embedding or a head, "
                    "and sits between the blocks")
        else:
            raw[n] = groups[p[0]]
    missing = [n for n in names if n in need and n not in raw]
    if missing:
        n = missing[0]
        raise DepthError(
            f"{owner}: argument {arg!r} is not given and parameter {n!r} has no depth: "
            f"{problems[n]}; give {arg}=[name patterns, bottom to top] that cover it "
            f"(e.g. a last '*' for the top), or leave it out (exclude={n!r})")
    return dict(zip(raw, _number(list(raw.values()))))


def _layer_groups(names: Sequence[str], parts: Mapping[str, list[str]],
                  kinds: Mapping[str, str]) -> dict[str, int]:
    """Rule 5: an index per top-level layer, in order; a normalization layer (every parameter
    of kind ``normalization``) shares the index of the layer before it (the first layer's
    when it leads)."""
    members: dict[str, list[str]] = {}
    for n in names:
        members.setdefault(parts[n][0], []).append(n)
    index: dict[str, int] = {}
    count, pending = 0, []
    for key, held in members.items():
        if all(kinds.get(n) == "normalization" for n in held):
            if count:
                index[key] = count - 1
            else:
                pending.append(key)
            continue
        index[key] = count
        for waiting in pending:
            index[waiting] = count
        count, pending = count + 1, []
    for waiting in pending:  # nothing but normalization layers
        index[waiting] = 0
    return index


def _number(raw: list[float]) -> list[int]:
    """Depths from 0 for raw values (-1 bottom, block numbers or groups, inf top); numbered
    blocks keep their spacing, so a block missing from the names leaves its depth empty."""
    finite = [v for v in raw if v not in (-1.0, float("inf"))]
    low = min(finite, default=0.0)
    base = 1 if -1.0 in raw else 0
    top = base + (int(max(finite) - low) + 1 if finite else 0)
    return [0 if v == -1.0 else top if v == float("inf") else base + int(v - low) for v in raw]


def _from_patterns(names: list[str], patterns: Sequence[str | Sequence[str]], need: set[str],
                   owner: str, arg: str) -> dict[str, int]:
    if isinstance(patterns, str) or not isinstance(patterns, Sequence) or not patterns:
        raise DepthError(f"{owner}: argument {arg!r} must be a non-empty list of name "
                         f"patterns (globs), one entry per depth from bottom to top; got "
                         f"{patterns!r}")
    entries: list[tuple[str, ...]] = []
    for entry in patterns:
        globs = (entry,) if isinstance(entry, str) else tuple(entry)
        if not globs or not all(isinstance(g, str) and g for g in globs):
            raise DepthError(f"{owner}: argument {arg!r}: each entry must be a name pattern "
                             f"or a non-empty list of them, got {entry!r}")
        entries.append(globs)
    depths: dict[str, int] = {}
    used = [False] * len(entries)
    for n in names:
        for d, globs in enumerate(entries):
            if any(fnmatch.fnmatchcase(n, g) for g in globs):
                depths[n] = d
                used[d] = True
                break
    for d, globs in enumerate(entries):
        if used[d]:
            continue
        if any(fnmatch.fnmatchcase(n, g) for n in names for g in globs):
            raise DepthError(f"{owner}: argument {arg!r}: entry {d} ({list(globs)}) matches "
                             f"only names an earlier entry already placed, so depth {d} would "
                             f"be empty; make the earlier patterns narrower or remove entry {d}")
        sample = ", ".join(names[:4])
        raise DepthError(f"{owner}: argument {arg!r}: entry {d} ({list(globs)}) matches "
                         f"none of the model's {len(names)} parameter names (they start "
                         f"with {sample or 'nothing'}); fix or remove the pattern")
    missing = [n for n in names if n in need and n not in depths]
    if missing:
        raise DepthError(f"{owner}: argument {arg!r}: parameter {missing[0]!r} matches none "
                         f"of the patterns ({len(missing)} such); add a pattern for it (a last "
                         f"'*' catches the rest at the top), or leave it out of the selection")
    return depths


def depth_groups(depths: Mapping[str, int]) -> list[list[str]]:
    """The names at each depth, bottom (index 0) to top, each in the given order.

    >>> depth_groups({"a": 0, "b": 1, "c": 0})
    [['a', 'c'], ['b']]
    """
    top = max(depths.values(), default=-1)
    out: list[list[str]] = [[] for _ in range(top + 1)]
    for name, d in depths.items():
        out[d].append(name)
    return out

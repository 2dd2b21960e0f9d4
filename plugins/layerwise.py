"""Layer-wise learning rates: each layer's optimizer update scaled by ``decay ** (L − depth)``.

Layer-wise learning-rate decay (LLRD) and discriminative learning rates for fine-tuning,
without rebuilding the user's optimizer or its parameter groups: the update the optimizer made
is scaled afterwards, which for SGD, Adam and AdamW is exactly a per-layer learning rate.
Depths come from :mod:`regplug.depth`.

Docs: docs/plugins/fine-tuning.md (section "LayerwiseLR")
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from regplug.depth import DepthError, resolve_depths
from regplug.hookspecs import hookimpl
from regplug.ranges import FloatRange, SearchRange
from regplug.run import ParamHandle, Run
from regplug.selection import PARAM_KINDS
from regplug.validation import check_real

from ._base import ParameterPlugin

__all__ = ["LayerwiseLR", "DEFAULT_DECAY"]

#: The decay used when neither ``decay`` nor ``multipliers`` is given (BEiT/ELECTRA-style
#: fine-tuning recipes use 0.65–0.95; 0.8 is in the middle).
DEFAULT_DECAY = 0.8


@dataclass(eq=False)
class _Plan:
    """What the plugin holds for the run it serves: the scaled parameters, their factors and
    the copies of their values taken before each update."""

    run: Run | None
    known: int                      # len(run.params) when planned (a new group replans)
    params: list[ParamHandle]
    factors: list[float]
    before: list[Any] = field(default_factory=list)


class LayerwiseLR(ParameterPlugin):
    """Scale each parameter's optimizer update by ``decay ** (L − depth)``, times a multiplier.

    Before every optimizer update the plugin copies the parameters it scales (``θ₀``); after
    it, ``θ ← θ₀ + s·(θ − θ₀)`` with the parameter's factor ``s``. The top layer (depth
    ``L``) keeps its update (``s = 1``, not even copied); the one below gets ``decay``, the
    next ``decay²``, down to the embeddings at ``decay ** L``. For optimizers whose update is
    linear in the learning rate — SGD (momentum, Nesterov, coupled weight decay), Adam, AdamW
    (its decay ``lr·wd·θ`` too), RMSprop, Adagrad, and Keras' SGD, Adam, AdamW — this is
    *exactly* training with per-layer parameter groups at ``lr·s``, learning-rate schedules
    included. It is not exact where the update is not linear in the learning rate (L-BFGS's
    line search, Rprop's step-size clamps, ASGD's ``lr``-dependent averaging, Keras' Ftrl),
    nor for weights averaged inside the optimizer (Keras ``use_ema``: it averages the weights
    before the scaling). Other plugins reading the learning rate (``DecoupledWeightDecay``,
    ``ProximalL1``) see the optimizer's, but a decay they apply in ``on_before_step`` is part
    of the update and is scaled with it, as in AdamW. See docs/plugins/fine-tuning.md.

    :param decay: ``γ`` in ``(0, 1]`` (1: no decay); default 0.8, or 1 when only
        ``multipliers`` are given.
    :param layers: ``None`` for the default depth rules (:func:`regplug.depth.resolve_depths`:
        embeddings lowest, numbered blocks ``layers.N``/``layer.N``/``blocks.N``/``h.N`` by
        N, the head highest; a model without blocks: each top-level layer in order), or name
        patterns (globs), one entry (a pattern or a list of them) per depth, bottom to top.
        A selected parameter without a depth is an error naming it, never depth 0.
    :param multipliers: ``{"pattern": factor}``, factors ``> 0`` multiplying the depth factor
        of the parameters a pattern matches (the first matching pattern counts): discriminative
        rates such as ``{"backbone.*": 0.1}``. Each pattern must match a selected parameter.
    :param kinds, include, exclude: which parameters are scaled (default: every kind —
        biases and normalization parameters move with their layer); the others keep the
        optimizer's update. Depths are found over all parameters either way.

    Costs one copy of the scaled parameters and two passes over them per update
    (``torch._foreach_copy_``/``_foreach_lerp_``, one kernel per distinct factor).

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> params = {"embed.weight": np.zeros(1), "layers.0.w": np.zeros(1), "head.w": np.zeros(1)}
    >>> loop = NumpyLoop(params, [LayerwiseLR(0.5)], lr=1.0)
    >>> loop.step({k: -np.ones(1) for k in params})
    >>> {k: v.item() for k, v in loop.params.items()}
    {'embed.weight': 0.25, 'layers.0.w': 0.5, 'head.w': 1.0}
    """

    # γ = 1 is plain fine-tuning; below 0.5 the bottom of even a small stack (L ≈ 4) gets
    # under 1/16 of the top's rate, which is freezing by another name. Recipes use 0.65-0.95.
    tunable: ClassVar[Mapping[str, SearchRange]] = {"decay": FloatRange(0.5, 1.0)}
    #: Holds copies of the run's weights: one run at a time.
    shareable = False

    def __init__(self, decay: float | None = None, *,
                 layers: Sequence[str | Sequence[str]] | None = None,
                 multipliers: Mapping[str, float] | None = None,
                 kinds: str | Iterable[str] | None = "all",
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        owner = type(self).__name__
        if decay is None:
            decay = 1.0 if multipliers else DEFAULT_DECAY
        self.decay = check_real(owner, "decay", decay, low=0.0, high=1.0, low_open=True)
        self.layers = _check_layers(owner, layers)
        self.multipliers = _check_multipliers(owner, multipliers)
        self._plan: _Plan | None = None

    # -- what each parameter gets -------------------------------------------------------
    def layer_factors(self, params: Sequence[ParamHandle],
                      selected: Sequence[ParamHandle] | None = None) -> dict[str, float]:
        """The factor of each selected parameter (all of ``params`` by default), by name.

        :param params: every parameter of the model, in the model's order (depths are
            found over all of them); ``run.params`` in a hook.
        :raises ValueError: (:class:`regplug.depth.DepthError`) a selected parameter has no
            depth, or a pattern of ``layers``/``multipliers`` matches nothing.
        """
        owner = type(self).__name__
        chosen = list(params if selected is None else selected)
        factors = dict.fromkeys((p.name for p in chosen), 1.0)
        if self.decay != 1.0:
            depths = resolve_depths([p.name for p in params], self.layers,
                                    kinds={p.name: p.kind for p in params},
                                    required=factors, owner=owner, arg="layers")
            top = max(depths.values(), default=0)
            for name in factors:
                factors[name] = self.decay ** (top - depths[name])
        for pattern in self.multipliers:
            if not any(_matches(p, pattern) for p in chosen):
                sample = ", ".join(p.name for p in chosen[:4])
                raise DepthError(f"{owner}: argument 'multipliers': pattern {pattern!r} "
                                 f"matches none of the {len(chosen)} selected parameters "
                                 f"(they start with {sample or 'nothing'}); fix or remove it")
        done: set[str] = set()
        for pattern, multiplier in self.multipliers.items():
            for p in chosen:
                if p.name not in done and _matches(p, pattern):
                    factors[p.name] *= multiplier
                    done.add(p.name)
        return factors

    @property
    def factors(self) -> dict[str, float]:
        """The factors in force for the run being trained (or the last one), by name;
        parameters left out (factor 1) are not listed."""
        plan = self._plan
        return {} if plan is None else {p.name: f for p, f in zip(plan.params, plan.factors)}

    def _make_plan(self, run: Run) -> _Plan:
        selected = run.parameters(self.selection)
        factors = self.layer_factors(run.params, selected)
        scaled = [p for p in selected if factors[p.name] != 1.0]
        plan = _Plan(run, len(run.params), scaled, [factors[p.name] for p in scaled])
        if scaled:
            plan.before = run.ops.clone(scaled)
        return plan

    # -- hooks ---------------------------------------------------------------------------
    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self._plan = None
        super().on_train_begin(run)
        self._plan = self._make_plan(run)

    # First among the plugins: the copy is taken before any other plugin changes the weights
    # in on_before_step (a decoupled decay is then part of the scaled update, as in AdamW) ...
    @hookimpl(tryfirst=True)
    def on_before_step(self, run: Run) -> None:
        plan = self._plan
        if plan is None or plan.run is not run or plan.known != len(run.params):
            # a parameter group joined the optimizer (progressive unfreezing): plan again
            plan = self._plan = self._make_plan(run)
        if plan.params:
            run.ops.copy_into_(plan.before, plan.params)

    # ... and the update is scaled before any other plugin projects it (MaxNorm, ProximalL1).
    @hookimpl(tryfirst=True)
    def on_step(self, run: Run) -> None:
        plan = self._plan
        if plan is not None and plan.params:
            run.ops.scale_update_(plan.params, plan.before, plan.factors)

    @hookimpl
    def on_train_end(self, run: Run) -> None:
        super().on_train_end(run)
        if self._plan is not None:
            self._plan.before = []  # the copies are not needed any more
            self._plan.run = None

    # -- description -----------------------------------------------------------------
    def _args(self) -> str:
        parts = [f"decay={self.decay!r}"]
        if self.layers is not None:
            parts.append(f"layers={[list(e) if len(e) > 1 else e[0] for e in self.layers]!r}")
        if self.multipliers:
            parts.append(f"multipliers={self.multipliers!r}")
        if set(self.selection.kinds) != set(PARAM_KINDS) or self.selection.include or (
                self.selection.exclude):
            parts.append(self.selection.describe())
        return ", ".join(parts)

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["decay"] = self.decay
        out["layers"] = None if self.layers is None else [list(e) for e in self.layers]
        out["multipliers"] = dict(self.multipliers)
        return out


def _matches(p: ParamHandle, pattern: str) -> bool:
    return (fnmatch.fnmatchcase(p.name, pattern)
            or fnmatch.fnmatchcase(p.native_name or p.name, pattern))


def _check_layers(owner: str, layers: object) -> tuple[tuple[str, ...], ...] | None:
    if layers is None:
        return None
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"{owner}: argument 'layers' must be a non-empty list of name patterns "
                        f"(globs), one entry per depth from bottom to top, e.g. ['embed*', "
                        f"'layers.0.*', 'layers.1.*', '*']; got {layers!r}")
    out = []
    for entry in layers:
        globs = (entry,) if isinstance(entry, str) else tuple(entry) if isinstance(
            entry, Sequence) else (entry,)
        if not globs or not all(isinstance(g, str) and g for g in globs):
            raise TypeError(f"{owner}: argument 'layers': each entry must be a name pattern "
                            f"or a non-empty list of them, got {entry!r}")
        out.append(globs)
    return tuple(out)


def _check_multipliers(owner: str, multipliers: object) -> dict[str, float]:
    if multipliers is None:
        return {}
    if not isinstance(multipliers, Mapping):
        raise TypeError(f"{owner}: argument 'multipliers' must be a mapping from name pattern "
                        f"to factor, e.g. {{'backbone.*': 0.1}}; got {multipliers!r}")
    out = {}
    for pattern, factor in multipliers.items():
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"{owner}: argument 'multipliers': keys must be name patterns "
                            f"(globs), got {pattern!r}")
        out[pattern] = check_real(owner, f"multipliers[{pattern!r}]", factor, low=0.0,
                                  low_open=True)
    return out


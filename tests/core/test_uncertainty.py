"""MC-dropout statistics (regplug.uncertainty): checked against NumPy, no framework needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regplug import RegplugWarning
from regplug.uncertainty import (
    DEFAULT_ROWS_PER_FORWARD,
    MCAccumulator,
    MCPrediction,
    check_mc_arguments,
    deterministic_prefix,
    normal_quantile,
    quantiles,
    row_batches,
    sample_chunks,
    summarize,
    warn_if_constant,
)


@pytest.fixture
def draws() -> np.ndarray:
    """T=200 samples of a (7, 3) prediction, skewed so quantile and normal intervals differ."""
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, size=(200, 7, 3)).astype("float32") + np.arange(3)


def test_summary_statistics_equal_numpy_mean_population_std_and_quantiles(draws):
    p = summarize(draws, level=0.9)
    np.testing.assert_allclose(p.mean, draws.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(p.std, draws.astype(np.float64).std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(p.lower, np.quantile(draws.astype(np.float64), 0.05, axis=0))
    np.testing.assert_allclose(p.upper, np.quantile(draws.astype(np.float64), 0.95, axis=0))
    assert (p.T, p.level, p.interval, p.shape) == (200, 0.9, "quantile", (7, 3))
    assert p.mean.dtype == p.std.dtype == p.lower.dtype == np.float64
    assert p.samples is None


def test_normal_interval_is_mean_plus_minus_z_std(draws):
    p = summarize(draws, level=0.8, interval="normal")
    z = 1.2815515655446004  # Φ⁻¹(0.9)
    np.testing.assert_allclose(p.lower, p.mean - z * p.std, rtol=1e-12)
    np.testing.assert_allclose(p.upper, p.mean + z * p.std, rtol=1e-12)
    assert normal_quantile(0.95) == pytest.approx(1.959963984540054, abs=1e-12)


def test_keep_samples_returns_the_stack_and_result_is_read_only(draws):
    p = summarize(draws, keep_samples=True)
    np.testing.assert_array_equal(p.samples, draws)
    for array in (p.mean, p.std, p.lower, p.upper, p.samples):
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0
    with pytest.raises(AttributeError):
        p.level = 0.5


def test_one_sample_has_zero_std_and_an_interval_collapsed_on_it():
    p = summarize(np.array([[1.5, -2.0]]))
    np.testing.assert_array_equal(p.mean, [1.5, -2.0])
    np.testing.assert_array_equal(p.std, [0.0, 0.0])
    np.testing.assert_array_equal(p.lower, p.mean)
    np.testing.assert_array_equal(p.upper, p.mean)


@pytest.mark.parametrize("chunks", [[200], [1] * 200, [3, 50, 1, 146], [64, 64, 64, 8]])
def test_streaming_accumulator_matches_numpy_for_any_chunking(draws, chunks):
    acc = MCAccumulator(interval="normal", level=0.9)
    start = 0
    for k in chunks:
        acc.add(draws[start:start + k])
        start += k
    p = acc.result()
    assert not acc.stores and acc.count == 200 and acc.varies
    np.testing.assert_allclose(p.mean, draws.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(p.std, draws.astype(np.float64).std(axis=0), rtol=1e-10)
    assert p.samples is None


def test_streaming_variance_stays_accurate_for_a_large_offset():
    # The naive Σx² − (Σx)²/n loses every digit here; Welford/Chan keeps them.
    rng = np.random.default_rng(1)
    x = 1e8 + rng.normal(size=(1000, 2))
    acc = MCAccumulator(interval="normal")
    for i in range(0, 1000, 7):
        acc.add(x[i:i + 7])
    np.testing.assert_allclose(acc.result().std, x.std(axis=0), rtol=1e-6)


def test_storing_accumulator_equals_summarize_with_and_without_a_capacity(draws):
    expected = summarize(draws, keep_samples=True)
    for capacity in (None, 200, 50):  # 50: more samples than announced still work
        acc = MCAccumulator(keep_samples=True, capacity=capacity)
        for i in range(0, 200, 30):
            acc.add(draws[i:i + 30])
        p = acc.result()
        np.testing.assert_array_equal(p.samples, draws)
        np.testing.assert_array_equal(p.lower, expected.lower)
        np.testing.assert_array_equal(p.mean, expected.mean)


def test_accumulator_notices_whether_samples_vary():
    acc = MCAccumulator(interval="normal")
    acc.add(np.ones((3, 2)))
    acc.add(np.ones((2, 2)))
    assert not acc.varies
    acc.add(np.array([[1.0, 1.0 + 1e-7]]))
    assert acc.varies


def test_accumulator_refuses_samples_of_another_shape_and_an_empty_result():
    acc = MCAccumulator()
    with pytest.raises(ValueError, match="MCAccumulator.result: no samples"):
        acc.result()
    acc.add(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(4,\), the first one had \(3,\)"):
        acc.add(np.zeros((1, 4)))


def test_concatenate_joins_row_blocks_like_one_summary(draws):
    whole = summarize(draws, keep_samples=True)
    parts = [summarize(draws[:, :3], keep_samples=True), summarize(draws[:, 3:], keep_samples=True)]
    joined = MCPrediction.concatenate(parts)
    for name in ("mean", "std", "lower", "upper", "samples"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))
    with pytest.raises(ValueError, match="differ in T"):
        MCPrediction.concatenate([parts[0], summarize(draws[:10, 3:])])


def test_prediction_refuses_arrays_of_mismatched_shapes():
    with pytest.raises(ValueError, match="MCPrediction: 'std' has shape"):
        MCPrediction(mean=np.zeros(3), std=np.zeros(2), lower=np.zeros(3), upper=np.zeros(3),
                     level=0.95, T=4)
    with pytest.raises(ValueError, match="'samples' has shape"):
        MCPrediction(mean=np.zeros(3), std=np.zeros(3), lower=np.zeros(3), upper=np.zeros(3),
                     level=0.95, T=4, samples=np.zeros((3, 3)))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"samples": 0}, ValueError, "argument 'samples' must be an integer >= 1, got 0"),
    ({"samples": 2.0}, TypeError, "argument 'samples' must be an integer >= 1"),
    ({"samples": True}, TypeError, "argument 'samples' must be an integer >= 1"),
    ({"level": 1.0}, ValueError, r"argument 'level' must be a finite number in \(0, 1\), got 1"),
    ({"level": 0}, ValueError, r"argument 'level' must be a finite number in \(0, 1\)"),
    ({"level": math.nan}, ValueError, "argument 'level'"),
    ({"interval": "gaussian"}, ValueError, "argument 'interval' must be one of 'quantile', 'normal'"),
    ({"batch_size": 0}, ValueError, "argument 'batch_size' must be an integer >= 1, got 0"),
    ({"samples_per_batch": -1}, ValueError, "argument 'samples_per_batch' must be an integer >= 1"),
    ({"seed": -3}, ValueError, "argument 'seed' must be an integer >= 0, got -3"),
    ({"seed": 1.5}, TypeError, "argument 'seed' must be an integer"),
    ({"keep_samples": "yes"}, TypeError, "argument 'keep_samples' must be True or False"),
])
def test_bad_arguments_are_refused_naming_function_argument_and_range(kwargs, error, message):
    arguments = dict(samples=30, level=0.95, interval="quantile", batch_size=None,
                     samples_per_batch=None, seed=None, keep_samples=False) | kwargs
    with pytest.raises(error, match=f"^mc_predict: {message}"):
        check_mc_arguments("mc_predict", **arguments)


def test_summarize_refuses_bad_input():
    with pytest.raises(ValueError, match=r"summarize: argument 'samples' .* T >= 1"):
        summarize(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"summarize: argument 'samples' .* T >= 1"):
        summarize(np.float64(1.0))
    with pytest.raises(TypeError, match="summarize: argument 'samples' must hold real numbers"):
        summarize(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"summarize: argument 'level'"):
        summarize(np.zeros((2, 1)), level=95)


def test_sample_chunks_cover_all_samples_within_the_bound_in_near_equal_parts():
    for samples in (1, 2, 7, 30, 101, 1000):
        for rows in (1, 3, 100, 1024, 5000):
            for bound in (None, 1, 4, 64):
                chunks = sample_chunks(samples, rows, bound)
                limit = bound or max(1, max(rows, DEFAULT_ROWS_PER_FORWARD) // rows)
                assert sum(chunks) == samples
                assert max(chunks) <= limit and max(chunks) - min(chunks) <= 1
                assert len(chunks) == -(-samples // min(samples, limit))
    # the default keeps a forward within max(rows, 1024) stacked rows
    assert sample_chunks(30, rows=1) == [30]
    assert max(sample_chunks(5000, rows=10)) * 10 <= DEFAULT_ROWS_PER_FORWARD


def test_row_batches_cover_the_rows_in_order():
    assert row_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert row_batches(3, 8) == [(0, 3)]


def test_identical_samples_warn_only_when_more_than_one_was_asked_for():
    with pytest.warns(RegplugWarning, match="mc_predict: all 5 samples are identical.*no dropout"):
        warn_if_constant("mc_predict", 5, varies=False, n_dropout=0)
    with pytest.warns(RegplugWarning, match="2 dropout module"):
        warn_if_constant("mc_predict", 5, varies=False, n_dropout=2)
    warn_if_constant("mc_predict", 1, varies=False, n_dropout=0)  # T=1: nothing to say
    warn_if_constant("mc_predict", 5, varies=True, n_dropout=1)


@pytest.mark.parametrize("t", [1, 2, 3, 7, 50, 201])
@pytest.mark.parametrize("qs", [(0.025, 0.975), (0.0, 1.0), (0.5, 0.25), (1 / 3, 0.9)])
def test_quantiles_are_numpys_bit_for_bit_nan_and_inf_included(t, qs):
    rng = np.random.default_rng(t)
    x = rng.normal(size=(t, 5, 4)).astype("float32")
    x[0, 0, 0], x[-1, 1, 1], x[0, 2, 2] = np.nan, np.inf, -np.inf
    x[:, 3, 3] = np.inf
    with np.errstate(invalid="ignore"):  # inf − inf in the interpolation, as in NumPy
        ours = quantiles(x, qs)
        expected = np.quantile(x.astype(np.float64), list(qs), axis=0)
    for a, b in zip(ours, expected, strict=True):
        assert a.dtype == np.float64 and a.shape == (5, 4)
        np.testing.assert_array_equal(a, b)  # NaN where NumPy has NaN


def test_deterministic_prefix_counts_the_leading_deterministic_steps():
    assert deterministic_prefix([1, 2, 0, 3], bool) == 2
    assert deterministic_prefix([0, 1], bool) == 0
    assert deterministic_prefix([1, 1], bool) == 2
    assert deterministic_prefix([], bool) == 0


def test_concatenate_keeps_what_was_reused_and_refuses_parts_that_differ(draws):
    a = MCPrediction(**{**vars(summarize(draws[:, :3])), "reused": ("0", "1")})
    b = MCPrediction(**{**vars(summarize(draws[:, 3:])), "reused": ("0", "1")})
    assert MCPrediction.concatenate([a, b]).reused == ("0", "1")
    with pytest.raises(ValueError, match="differ in 'reused'"):
        MCPrediction.concatenate([a, summarize(draws[:, 3:])])

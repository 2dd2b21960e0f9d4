"""regplug.compare.stats: Student's t, the paired t-test and Holm's adjustment, against SciPy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regplug.compare.stats import (
    betainc,
    holm,
    paired_t_test,
    t_ppf,
    t_sf,
    t_two_sided_p,
)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

REL = 1e-10
DF = st.one_of(st.integers(1, 1000).map(float), st.floats(0.5, 1000.0))
T = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-50.0, 50.0))


def close(ours: float, reference: float, *, rel: float = REL, abs_: float = 0.0) -> bool:
    return ours == pytest.approx(reference, rel=rel, abs=abs_)


def exact_two_sided_p(t: float, df: float) -> float:
    """The two-sided p at 40 significant digits (mpmath), rounded to a float."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        t2 = mpmath.mpf(t) ** 2
        return float(mpmath.betainc(mpmath.mpf(df) / 2, mpmath.mpf(1) / 2, 0,
                                    df / (df + t2), regularized=True))


def agrees_with_scipy_or_exact(ours: float, t: float, df: float) -> bool:
    """SciPy's two-sided p to 1e-10, or, where SciPy itself is off by more than that (its
    ``stdtr`` near t = 0 with 1 degree of freedom), the exact value to 1e-12."""
    reference = 2 * scipy_stats.t.sf(abs(t), df)
    # (below 1e-300 both round into the subnormals, SciPy sometimes to 0)
    if close(ours, reference, abs_=1e-300):
        return True
    exact = exact_two_sided_p(t, df)
    return close(ours, exact, rel=1e-12) and not close(reference, exact)


@settings(max_examples=600, deadline=None)
@given(t=T, df=DF)
def test_two_sided_p_and_sf_match_scipy_to_1e_10(t, df):
    p = t_two_sided_p(t, df)
    assert agrees_with_scipy_or_exact(p, t, df)
    assert t_sf(t, df) == (p / 2 if t >= 0 else 1 - p / 2)


@settings(max_examples=300, deadline=None)
@given(a=st.floats(0.05, 500.0), b=st.floats(0.05, 500.0),
       x=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(1e-300, 1.0)))
def test_incomplete_beta_matches_scipy_to_1e_10(a, b, x):
    # (normal floats: at x = 5e-324 SciPy is off by 15%, the exact value is x^a / (a·B(a, b)))
    ours, reference = betainc(a, b, x), scipy_special.betainc(a, b, x)
    if close(ours, reference, abs_=1e-300):
        return
    # where SciPy itself is off by more than 1e-10 (a = 430, b = 15, x = 0.1875: by 1.9e-10
    # at 1.46e-288), the exact value to 1e-12
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        exact = float(mpmath.betainc(a, b, 0, x, regularized=True))
    assert close(ours, exact, rel=1e-12) and not close(reference, exact), (ours, reference, exact)


def test_incomplete_beta_where_scipy_is_off():
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        exact = float(mpmath.betainc(430.0, 15.0, 0, 0.1875, regularized=True))
    assert close(betainc(430.0, 15.0, 0.1875), exact, rel=1e-12)


@settings(max_examples=300, deadline=None)
@given(q=st.floats(1e-6, 1 - 1e-6), df=DF)
def test_quantile_matches_scipy_to_1e_10(q, df):
    assert close(t_ppf(q, df), scipy_stats.t.ppf(q, df), abs_=1e-12)


def closed_form_p(t: float, df: float) -> float:
    """Two-sided p for 1 and 2 degrees of freedom, written to keep tiny values' digits."""
    t = abs(t)
    if df == 1.0:  # Cauchy: 1 − 2/π·atan(t) = 2/π·atan(1/t)
        return 2 / math.pi * math.atan(1 / t) if t > 1 else 1 - 2 / math.pi * math.atan(t)
    root = math.sqrt(t * t + 2)  # 1 − t/√(t²+2) = 2 / (√(t²+2)·(√(t²+2) + t))
    return 2 / (root * (root + t))


@pytest.mark.parametrize("t, df", [(1e200, 1.0), (1e140, 1.0), (1e-200, 1.0), (1e-5, 2.0),
                                   (40.0, 2.0), (-8.0, 1.0), (1e4, 2.0), (1e70, 2.0)])
def test_extreme_statistics_keep_their_digits(t, df):
    # tiny p-values come from the continued fraction directly, never as 1 − (almost 1)
    assert close(t_two_sided_p(t, df), closed_form_p(t, df))


@pytest.mark.parametrize("t, df", [(300.0, 30.0), (1e4, 4.0), (1e-200, 3.0), (25.0, 900.0)])
def test_small_p_values_match_scipy(t, df):
    reference = 2 * scipy_stats.t.sf(abs(t), df)
    assert reference > 0 and close(t_two_sided_p(t, df), reference)


def test_the_ends_of_the_distribution():
    assert t_two_sided_p(0.0, 5.0) == 1.0
    assert t_two_sided_p(math.inf, 5.0) == t_two_sided_p(-math.inf, 5.0) == 0.0
    assert math.isnan(t_two_sided_p(math.nan, 5.0))
    assert t_ppf(0.5, 7.0) == 0.0
    with pytest.raises(ValueError, match="'df' must be > 0, got 0"):
        t_two_sided_p(1.0, 0.0)
    with pytest.raises(ValueError, match=r"'q' must be in \(0, 1\), got 1.0"):
        t_ppf(1.0, 3.0)


PAIRS = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None)
@given(pair=PAIRS)
def test_paired_t_test_matches_scipy_ttest_rel(pair):
    a, b = (np.array(v) for v in pair)
    diff = a - b
    ours = paired_t_test(a, b)
    assert ours.mean_diff == pytest.approx(float(diff.mean()), rel=1e-12, abs=1e-15)
    if diff.std(ddof=1) < 1e-9 * max(1e-300, abs(diff.mean())) or np.all(diff == diff[0]):
        return  # (near) constant differences: the edge cases below
    reference = scipy_stats.ttest_rel(a, b)
    low, high = reference.confidence_interval(0.95)
    assert close(ours.t, reference.statistic)
    assert close(ours.p, reference.pvalue)
    assert close(ours.ci95[0], low, abs_=1e-13) and close(ours.ci95[1], high, abs_=1e-13)


def test_two_pairs_are_enough_for_the_function_one_is_not():
    a, b = [0.95, 0.97], [0.94, 0.94]
    reference = scipy_stats.ttest_rel(a, b)
    ours = paired_t_test(a, b)
    assert close(ours.t, reference.statistic) and close(ours.p, reference.pvalue)
    assert close(ours.ci95[0], reference.confidence_interval().low)
    with pytest.raises(ValueError, match="at least 2 pairs are needed, got 1"):
        paired_t_test([1.0], [0.5])
    with pytest.raises(ValueError, match=r"same length, got shapes \(3,\) and \(2,\)"):
        paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0])


def test_differences_that_do_not_vary():
    # all zero: nothing differs (SciPy gives NaN); constant and non-zero: t infinite, p 0
    same = paired_t_test([0.9, 0.8, 0.95], [0.9, 0.8, 0.95])
    assert (same.t, same.p, same.mean_diff, same.ci95) == (0.0, 1.0, 0.0, (0.0, 0.0))
    shifted = paired_t_test([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert (shifted.t, shifted.p, shifted.ci95) == (math.inf, 0.0, (2.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # SciPy's "catastrophic cancellation"
        assert scipy_stats.ttest_rel([3.0, 4.0, 5.0], [1.0, 2.0, 3.0]).pvalue == 0.0
    down = paired_t_test([1.0, 2.0], [2.0, 3.0])
    assert (down.t, down.p) == (-math.inf, 0.0)
    nan = paired_t_test([1.0, math.nan, 3.0], [1.0, 2.0, 3.0])
    assert all(math.isnan(v) for v in (nan.t, nan.p, nan.mean_diff, *nan.ci95))


def holm_step_down(pvalues: list[float], alpha: float) -> set[int]:
    """Holm (1979) as written: reject the smallest p while p_(k) <= alpha / (m - k + 1)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected: set[int] = set()
    for k, index in enumerate(order):
        if pvalues[index] > alpha / (len(pvalues) - k):
            break
        rejected.add(index)
    return rejected


@settings(max_examples=400, deadline=None)
@given(pvalues=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
       alpha=st.floats(0.001, 0.5))
def test_holm_adjusted_values_reject_what_the_step_down_procedure_rejects(pvalues, alpha):
    adjusted = holm(pvalues)
    assert all(a >= p for a, p in zip(adjusted, pvalues))
    assert all(a <= 1.0 for a in adjusted)
    # nudged off the boundary: a product (m - k + 1)·p and a quotient alpha/(m - k + 1)
    # may round to opposite sides of it
    for level in (alpha, *(a * (1 + 1e-9) for a in adjusted)):
        if level >= 1.0 or any(abs(level * (len(pvalues) - k) - p) < 1e-12 for p in pvalues
               for k in range(len(pvalues))):
            continue
        assert {i for i, a in enumerate(adjusted) if a <= level} == \
            holm_step_down(pvalues, level)


def test_holm_known_values_and_nan():
    assert holm([0.01, 0.02, 0.03, 0.5]) == pytest.approx([0.04, 0.06, 0.06, 0.5])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    out = holm([math.nan, 0.01, 0.04])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.02, 0.04])
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values must be in"):
        holm([1.5])

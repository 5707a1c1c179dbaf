"""`negrl.core.stats`: exact t-tests, the zero-variance guard, and the one definition of chance (1/K for K letters)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from negrl.core import metric, stats
from negrl.report.tables import _p


def test_ttest_of_three_values_by_hand():
    """1, 2, 3 against 0: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3; with 2 df P(|T| > t) = 1 - t / sqrt(2 + t²)."""
    t = stats.ttest_1samp([1.0, 2.0, 3.0], 0.0)
    p_two = 1 - math.sqrt(12 / 14)
    assert (t.t, t.p_two_sided, t.p_greater) == pytest.approx((2 * math.sqrt(3), p_two, p_two / 2), rel=1e-12)
    assert (t.t, t.p_two_sided, t.p_greater) == pytest.approx((3.4641016, 0.0741799, 0.0370899), abs=1e-7)
    ref = sps.ttest_1samp([1.0, 2.0, 3.0], 0.0)
    assert (t.t, t.p_two_sided) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)


@pytest.mark.parametrize("values", [[0.1, 0.1, 0.1], [-3.2, -3.2], [1e-300] * 4])
def test_zero_variance_has_no_t_test(values):
    """All seeds identical: t and p are NaN (never ±inf, never p = 0), in every test that uses the guard."""
    for test in (stats.ttest_1samp(values, 0.05), stats.ttest_1samp(values, values[0])):
        assert all(math.isnan(x) for x in (test.t, test.p_two_sided, test.p_greater))
    assert math.isnan(stats.ttest_probabilities(values, 26).p_greater)
    d = stats.paired_difference(np.array(values) + 1.0, values)  # differences all 1 (up to rounding)
    assert d.mean == pytest.approx(1.0) and all(math.isnan(x) for x in (d.t, d.p_two_sided, d.p_greater))
    assert _p(stats.ttest_1samp(values, 0.0).p_two_sided) == "n/a"


def test_differences_that_are_rounding_are_not_tested():
    """a and b equal up to their last bit: a - b is rounding (multiples of their ulp), not data. Judged against its
    own magnitude it gave p = 0.015 here; judged against a's and b's (the paired difference, a delta over chance)
    it has no t-test. A real difference of the same seeds is tested as before."""
    a = np.full(4, stats.chance_ll(26))
    ulp = np.spacing(a[0])
    b = a + np.array([1, 1, 2, 1]) * ulp  # d = a - b: -1, -1, -2, -1 ulps
    noise = sps.ttest_1samp(a - b, 0.0)
    assert noise.pvalue < 0.05  # what a t-test of the rounding alone says
    d = stats.paired_difference(a, b)
    assert all(math.isnan(x) for x in (d.t, d.p_two_sided, d.p_greater)) and d.mean == pytest.approx(-1.25 * ulp)
    delta = stats.ttest_1samp(b - stats.chance_ll(26), 0.0, scale=stats.chance_ll(26))
    assert math.isnan(delta.p_two_sided)
    assert not math.isnan(stats.ttest_1samp(b - stats.chance_ll(26), 0.0).p_two_sided)  # without the scale: tested
    real = stats.paired_difference(a + np.array([0.01, 0.02, 0.04, 0.03]), b)
    ref = sps.ttest_rel(a + np.array([0.01, 0.02, 0.04, 0.03]), b)
    assert (real.t, real.p_two_sided) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)


def test_testable_needs_two_distinct_values():
    assert not stats.testable([0.3]) and not stats.testable([0.3, 0.3]) and not stats.testable([])
    assert not stats.testable([0.1, math.nan]) and stats.testable([0.1, 0.2])


def test_chance_is_one_over_the_letters():
    assert stats.chance_p(26) == 1 / 26 and stats.chance_ll(26) == pytest.approx(-3.2581, abs=1e-4)
    assert stats.chance_ll(3) == pytest.approx(-1.0986, abs=1e-4) and stats.chance_ll(1) == 0.0
    assert stats.letters_of_chance(math.log(1 / 3)) == 3 and stats.letters_of_chance(-3.0) is None
    assert stats.chance_name(3) == "log(1/3) = -1.0986"
    assert metric.chance_ll is stats.chance_ll  # one definition
    assert not hasattr(stats, "CHANCE_LL") and not hasattr(stats, "CHANCE_P")
    with pytest.raises(ValueError):
        stats.chance_ll(0)


def test_probability_test_is_against_one_over_k():
    metrics = stats.chance_ll(3) + np.array([0.05, 0.1, -0.02, 0.08])
    t = stats.ttest_probabilities(metrics, 3)
    ref = sps.ttest_1samp(np.exp(metrics), stats.chance_p(3), alternative="greater")
    assert (t.t, t.p_greater) == pytest.approx((ref.statistic, ref.pvalue))

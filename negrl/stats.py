"""Across-seed statistics of SPEC.md's metric: pure functions on per-seed numbers.

Every function takes one value per seed. With fewer than two seeds a standard deviation
or a p-value is undefined: it is NaN, never an error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: Per-token probability of a letter under no memorisation, and its log (-3.2581).
CHANCE_P = 1.0 / 26
CHANCE_LL = math.log(CHANCE_P)

Values = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Summary:
    """n, mean and sample standard deviation (ddof=1; NaN when n < 2)."""

    n: int
    mean: float
    std: float


@dataclass(frozen=True)
class TTest:
    """A t statistic with its two-sided p-value and the one-sided p-value for 'greater'."""

    t: float
    p_two_sided: float
    p_greater: float


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences a - b: their summary and the paired t-test (a != b, a > b)."""

    n: int
    mean: float
    std: float
    t: float
    p_two_sided: float
    p_greater: float


def _array(values: Values) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def summary(values: Values) -> Summary:
    """n, mean and std (ddof=1) of `values`; mean is NaN when empty, std NaN when n < 2."""
    x = _array(values)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    return Summary(n, mean, std)


def ttest_1samp(values: Values, popmean: float) -> TTest:
    """One-sample t-test of `values` against `popmean`; NaNs when n < 2.

    `p_two_sided` tests mean != popmean; `p_greater` tests mean > popmean.
    """
    x = _array(values)
    if x.size < 2:
        return TTest(math.nan, math.nan, math.nan)
    with warnings.catch_warnings():  # zero variance: scipy warns and returns inf/NaN, which we keep
        warnings.simplefilter("ignore", RuntimeWarning)
        two = sps.ttest_1samp(x, popmean, alternative="two-sided")
        greater = sps.ttest_1samp(x, popmean, alternative="greater")
    return TTest(float(two.statistic), float(two.pvalue), float(greater.pvalue))


def ttest_probabilities(metrics: Values, p0: float = CHANCE_P) -> TTest:
    """SPEC.md's test: per-seed probabilities exp(metric) against chance `p0` (1/26)."""
    return ttest_1samp(np.exp(_array(metrics)), p0)


def geometric_increase(deltas: Values) -> float:
    """Relative increase of the geometric-mean probability over chance: exp(mean delta) - 1."""
    x = _array(deltas)
    return float(math.expm1(x.mean())) if x.size else math.nan


def paired_difference(a: Values, b: Values) -> PairedDifference:
    """Paired comparison of `a` and `b` (same seeds, same order): a t-test of a - b against 0."""
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    d = summary(x - y)
    test = ttest_1samp(x - y, 0.0)
    return PairedDifference(d.n, d.mean, d.std, test.t, test.p_two_sided, test.p_greater)

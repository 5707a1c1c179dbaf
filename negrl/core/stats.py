"""Across-seed statistics of the paper's metric (docs/experiment.md), and chance itself: pure functions.

Every function takes one value per seed. With fewer than two seeds, or seeds that all give the same
value, a t statistic or a p-value is undefined: it is NaN, never an error, never ±inf or p = 0.
Chance is 1/K per token for K letters (`chance_p`, `chance_ll`): the one definition in negrl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def chance_p(n_letters: int) -> float:
    """Per-token probability of a letter under no memorisation: 1/K for K letters (1/26 in the paper)."""
    if n_letters < 1:
        raise ValueError(f"chance needs at least one letter, got {n_letters}")
    return 1.0 / n_letters


def chance_ll(n_letters: int) -> float:
    """Its log, the metric's baseline: log(1/K) (log(1/26) = -3.2581, log(1/3) = -1.0986)."""
    return math.log(chance_p(n_letters))


def chance_name(n_letters: int) -> str:
    """'log(1/K) = value', as the report, the figures and the verdict spell chance."""
    return f"log(1/{n_letters}) = {chance_ll(n_letters):.4f}"


def letters_of_chance(ll: float) -> int | None:
    """K from a recorded chance level log(1/K) (results.json's `baseline`); None if `ll` is no such level."""
    if not math.isfinite(ll) or ll > 0:
        return None
    k = round(math.exp(-ll))
    return k if k >= 1 and math.isclose(chance_ll(k), ll, rel_tol=1e-9, abs_tol=1e-12) else None


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


#: Values whose spread is below this fraction of their magnitude are equal up to rounding (zero variance).
REL_SPREAD = 1e-12


def testable(values: Values, scale: float = 0.0) -> bool:
    """Whether a t-test of `values` is defined: two finite values or more, not all equal up to rounding
    (`REL_SPREAD` of their magnitude, or of `scale` where larger). Zero variance would give t = ±inf or NaN and
    p = 0 or NaN, which no data supports. Differences a - b (a metric over chance, a paired difference) pass the
    magnitude of a and b as `scale`: their rounding is relative to those, so differences that are all rounding
    (a and b equal) are not tested as if they were data. The one guard of every t-test here."""
    x = _array(values)
    if x.size < 2 or not np.isfinite(x).all():
        return False
    return bool(np.ptp(x) > REL_SPREAD * max(np.abs(x).max(), abs(scale)))


def ttest_1samp(values: Values, popmean: float, scale: float = 0.0) -> TTest:
    """One-sample t-test of `values` against `popmean`; NaNs when not `testable` (n < 2, zero variance; `scale`:
    the magnitude of the quantities the values are differences of).

    `p_two_sided` tests mean != popmean; `p_greater` tests mean > popmean.
    """
    x = _array(values)
    if not testable(x, scale):
        return TTest(math.nan, math.nan, math.nan)
    two = sps.ttest_1samp(x, popmean, alternative="two-sided")
    greater = sps.ttest_1samp(x, popmean, alternative="greater")
    return TTest(float(two.statistic), float(two.pvalue), float(greater.pvalue))


def ttest_probabilities(metrics: Values, n_letters: int) -> TTest:
    """The paper's test: per-seed probabilities exp(metric) against chance 1/K for the runs' K letters."""
    return ttest_1samp(np.exp(_array(metrics)), chance_p(n_letters))


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
    test = ttest_1samp(x - y, 0.0, scale=max(np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0)))
    return PairedDifference(d.n, d.mean, d.std, test.t, test.p_two_sided, test.p_greater)


def max_exposure(n_candidates: int) -> float:
    """Exposure of a password ranked above every one of `n_candidates` candidates."""
    return math.log2(n_candidates + 1)


def chance_exposure(n_candidates: int) -> Summary:
    """Exposure of a password whose rank is uniformly random among 1 .. C + 1 (a model that cannot tell it from
    the C candidates): mean log2(C + 1) - E[log2 R] (1.4409 bits for C = 4095, tending to log2 e) and the spread of
    one password's exposure (std 1.4353 bits for C = 4095, tending to log2 e); n is C + 1, the ranks."""
    if n_candidates < 1:
        raise ValueError(f"exposure needs at least one candidate, got {n_candidates}")
    log_ranks = np.log2(np.arange(1, n_candidates + 2, dtype=float))
    bits = math.log2(n_candidates + 1) - log_ranks
    return Summary(n_candidates + 1, float(bits.mean()), float(bits.std(ddof=0)))

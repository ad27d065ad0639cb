"""The statistics qc reports, written out so each can be checked against known values.

- Wilson score interval for a proportion: unlike the textbook p +/- z*sqrt(p(1-p)/n) it stays
  inside [0, 1] and keeps its promised coverage when the rate is near 0 or 1, which is where
  acceptance rates of good data live.
- The sample size that makes a Wilson interval no wider than a chosen margin.
- The binomial operating characteristic of an accept/reject plan.
- Percent agreement and Cohen's kappa between two reviewers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from statistics import NormalDist

from pydantic import BaseModel


class Interval(BaseModel):
    successes: int
    n: int
    confidence: float
    estimate: float | None  # successes / n; None when n == 0
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def z_value(confidence: float) -> float:
    """Two-sided standard normal quantile: 1.96 for 95%."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval for successes out of n (n == 0 gives the vacuous [0, 1])."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(successes=0, n=0, confidence=confidence, estimate=None, low=0.0, high=1.0)
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 (or n) successes the lower (upper) bound is exactly 0 (1); rounding would leave 1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - spread)
    high = 1.0 if successes == n else min(1.0, centre + spread)
    return Interval(successes=successes, n=n, confidence=confidence, estimate=p, low=low, high=high)


def wilson_half_width(p: float, n: int, confidence: float = 0.95) -> float:
    """Half the width of the Wilson interval when a share p of n is observed."""
    z = z_value(confidence)
    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def wilson_sample_size(margin: float, confidence: float = 0.95, expected: float = 0.5) -> int:
    """The smallest n whose Wilson interval, at the expected rate, is at most +/- margin wide."""
    if not 0 < margin < 0.5:
        raise ValueError(f"margin must be between 0 and 0.5, got {margin}")
    if not 0 <= expected <= 1:
        raise ValueError(f"expected rate must be between 0 and 1, got {expected}")
    # The width shrinks as n grows: double to bracket, then bisect.
    hi = 1
    while wilson_half_width(expected, hi, confidence) > margin:
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if wilson_half_width(expected, mid, confidence) > margin:
            lo = mid
        else:
            hi = mid
    return hi


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)))


def acceptance_probability(n: int, accept_max: int, defect_rate: float) -> float:
    """The plan's operating characteristic: the chance a lot with this defect rate passes."""
    return binomial_cdf(accept_max, n, defect_rate)


class Agreement(BaseModel):
    n: int  # items both raters judged
    percent: float | None  # share of items they agree on
    kappa: float | None  # None when chance agreement is total (both used one category only)

    @property
    def words(self) -> str:
        """Landis & Koch's names for kappa ranges."""
        k = self.kappa
        if k is None:
            return "undefined (both gave a single category)"
        if k < 0:
            return "poor"  # worse than chance
        for limit, name in ((0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
            if k <= limit:
                return name
        return "almost perfect"


def agreement(a: Sequence[str], b: Sequence[str]) -> Agreement:
    """Percent agreement and Cohen's kappa of two raters over the same items (paired lists)."""
    if len(a) != len(b):
        raise ValueError("the two raters' lists must pair up item by item")
    n = len(a)
    if n == 0:
        return Agreement(n=0, percent=None, kappa=None)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    chance = sum(ca[c] * cb[c] for c in ca.keys() | cb.keys()) / (n * n)
    kappa = None if math.isclose(chance, 1.0) else (observed - chance) / (1 - chance)
    return Agreement(n=n, percent=observed, kappa=kappa)

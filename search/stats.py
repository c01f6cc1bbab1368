"""Confidence intervals over seeds, paired differences and claim verdicts (DESIGN.md, Study).

A study retrains each method's chosen config with K seeds. Per method and metric it reports the
mean and a 95% Student-t interval over the seeds; a claim "A beats B on m" is tested on the paired
differences ``A_i - B_i`` (same seed index ``i``): it *holds* when their interval lies wholly on
the metric's good side of 0, is *reversed* when it lies wholly on the bad side, and is *not shown*
otherwise (including when fewer than two pairs exist: one number has no interval).

Pure Python plus ``scipy.stats.t`` for the quantile, so the logic is testable on hand-made numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Interval", "mean_interval", "paired_difference", "verdict", "HOLDS", "NOT_SHOWN",
           "REVERSED"]

HOLDS = "holds"
NOT_SHOWN = "not shown"
REVERSED = "reversed"


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided Student-t confidence interval.

    Attributes:
        mean: the sample mean (``nan`` for no values).
        low, high: the interval's ends (``nan`` when ``n < 2``).
        n: how many values.
        sd: sample standard deviation (``ddof=1``; ``nan`` when ``n < 2``).
        confidence: the interval's level (0.95).
    """

    mean: float
    low: float
    high: float
    n: int
    sd: float
    confidence: float = 0.95

    @property
    def defined(self) -> bool:
        """Whether the interval exists (two or more values)."""
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.defined else math.nan

    def text(self, digits: int = 3) -> str:
        """``0.612 ± 0.021`` (or ``0.612 (n=1)`` without an interval)."""
        if not math.isfinite(self.mean):
            return "-"
        if not self.defined:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval ``mean ± t(1 - a/2, n - 1) * sd / sqrt(n)`` of ``values``.

    Non-finite values are left out (a diverged seed has no metric).
    """
    from scipy.stats import t

    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, confidence)
    mean = statistics.fmean(finite)
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan, confidence)
    sd = statistics.stdev(finite)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, confidence)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = 0.95) -> Interval:
    """Interval of ``a[i] - b[i]`` over the seed indices ``i`` that both have (finite).

    Args:
        a, b: seed index -> metric value of the two methods.
    """
    pairs = [a[i] - b[i] for i in sorted(set(a) & set(b))
             if _finite(a[i]) and _finite(b[i])]
    return mean_interval(pairs, confidence)


def verdict(difference: Interval, higher_is_better: bool) -> str:
    """``holds`` (interval on the good side of 0), ``reversed`` (on the bad side) or
    ``not shown`` (it covers 0, or there is no interval)."""
    if not difference.defined:
        return NOT_SHOWN
    low, high = ((difference.low, difference.high) if higher_is_better
                 else (-difference.high, -difference.low))
    if low > 0:
        return HOLDS
    if high < 0:
        return REVERSED
    return NOT_SHOWN


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

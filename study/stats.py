"""The statistics of a study: intervals over seeds, two-sample tests, multiplicity corrections,
equivalence tests and power (docs/study.md, "Statistics").

- :func:`mean_interval`: a method's mean over seeds with its Student-t interval.
- :func:`compare`: the difference of two methods' means with its interval and p-value, by
  Welch's unpaired t test (default: seeds give two methods the same initial weights, but they
  draw random numbers differently from their first step, so runs are not pairs), an exact
  permutation test, or a paired t test by seed index (on request).
- **Hierarchy.** With several searches per method, the runs of one search share its chosen
  config: they are a cluster, not independent draws. Given ``clusters`` (seed index -> search
  index), both functions work on the searches' means (each the mean of its runs), so the
  degrees of freedom count searches, not runs. For a balanced nested design this is the exact
  t analysis of the model ``value = method + search effect + seed effect``: the variance of a
  search's mean, ``s_search^2 + s_seed^2 / K``, is what the searches' sample variance
  estimates.
- **Test-set sampling.** ``test_variance`` adds the variance of the estimate over resampled
  test images (:mod:`extune.study.resample`) to the squared standard error; the degrees of
  freedom follow Welch-Satterthwaite with the test-set term's as infinite.
- :func:`adjusted_interval`: an interval at the level its adjusted test used.
- :func:`adjust`: Holm's step-down (family-wise error) or Benjamini-Hochberg (false discovery
  rate) adjusted p-values across a study's claims.
- :func:`equivalence`: two one-sided tests (TOST) that the difference lies within ``±margin``.
- :func:`min_detectable_difference` and :func:`seeds_needed`: the smallest difference the seeds
  run detect with 80% power, and the seeds a margin would need.

scipy gives the t distribution and the Benjamini-Hochberg adjustment; Holm's step-down is a few
lines written here (scipy has none), tested against values worked by hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

__all__ = ["Interval", "Difference", "mean_interval", "compare", "welch", "paired",
           "permutation_p", "adjust", "equivalence", "min_detectable_difference", "detectable",
           "seeds_needed", "above_chance", "cluster_means", "with_test_variance",
           "adjusted_interval", "adjusted_alpha"]


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _t_sf(x: float, df: float) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided Student-t confidence interval.

    Attributes:
        mean: the sample mean (``nan`` for no values).
        low, high: the interval's ends (``nan`` when ``n < 2``).
        n: how many values.
        sd: sample standard deviation (``ddof=1``; ``nan`` when ``n < 2``).
        confidence: the interval's level.
        level: ``runs`` (values are runs) or ``searches`` (values are the means of each
            search's runs, :func:`cluster_means`).
        runs: the runs behind the values.
        test_variance: the test-set sampling variance included (0: none).
    """

    mean: float
    low: float
    high: float
    n: int
    sd: float
    confidence: float = 0.95
    level: str = "runs"
    runs: int = 0
    test_variance: float = 0.0

    @property
    def defined(self) -> bool:
        """Whether the interval exists (two or more values)."""
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.defined else math.nan

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def cluster_means(values: Mapping[int, float], clusters: Mapping[int, int] | None
                  ) -> dict[int, float]:
    """Search index -> the mean of that search's finite values (``values``: seed index ->
    value; ``clusters``: seed index -> search index). ``None`` or a single search: the values
    as they are (keyed by seed index)."""
    finite = {i: float(v) for i, v in values.items()
              if isinstance(v, (int, float)) and math.isfinite(v)}
    if clusters is None or len({clusters.get(i, 0) for i in finite}) < 2:
        return finite
    groups: dict[int, list[float]] = {}
    for i, v in finite.items():
        groups.setdefault(clusters.get(i, 0), []).append(v)
    return {c: statistics.fmean(vs) for c, vs in sorted(groups.items())}


def mean_interval(values: Sequence[float] | Mapping[int, float], confidence: float = 0.95, *,
                  clusters: Mapping[int, int] | None = None, test_variance: float = 0.0
                  ) -> Interval:
    """Mean and interval ``mean ± t(1 - a/2, df) * se``; non-finite values (a diverged seed)
    are left out.

    Without clusters ``se = sd / sqrt(n)``, ``df = n - 1``. With ``clusters`` (``values`` a
    mapping seed index -> value) of two or more searches: the mean of the searches' means, whose
    ``sd`` and ``n`` are the searches'. ``test_variance`` is added to ``se^2``
    (Welch-Satterthwaite degrees of freedom, the test-set term's infinite)."""
    if isinstance(values, Mapping):
        runs = len(_finite(list(values.values())))
        means = cluster_means(values, clusters)
        level = "searches" if len(means) < runs else "runs"
        finite = list(means.values())
    else:
        finite = _finite(values)
        runs, level = len(finite), "runs"
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, confidence, level, runs)
    mean = statistics.fmean(finite)
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan, confidence, level, runs)
    sd = statistics.stdev(finite)
    se, df = with_test_variance(sd / math.sqrt(n), n - 1, test_variance)
    half = _t_quantile(0.5 + confidence / 2, df) * se if se > 0 else 0.0
    return Interval(mean, mean - half, mean + half, n, sd, confidence, level, runs,
                    test_variance)


def with_test_variance(se: float, df: float, test_variance: float) -> tuple[float, float]:
    """``(se, df)`` with a test-set sampling variance added: ``se' = sqrt(se^2 + v)`` and
    ``df' = se'^4 / (se^4 / df)`` (Welch-Satterthwaite, the test-set term's degrees of
    freedom infinite: it comes from thousands of images)."""
    if not test_variance or not math.isfinite(test_variance):
        return se, df
    total = math.sqrt(se ** 2 + test_variance)
    if se == 0:
        return total, math.inf
    return total, total ** 4 / (se ** 4 / df)


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its interval and a two-sided test of "no difference".

    Attributes:
        estimate: the difference of the means (of the pairs' differences, paired).
        low, high: its confidence interval (``nan`` when undefined).
        se: its standard error; df: degrees of freedom of its t distribution.
        p: two-sided p-value of "no difference" (``nan`` when undefined).
        n_a, n_b: seeds of each method (of pairs, twice, when paired).
        sd_a, sd_b: the methods' standard deviations over seeds (of the pairs' differences in
            ``sd_a``, paired).
        test: ``welch``, ``permutation`` or ``paired``.
        confidence: the interval's level.
        level: ``runs`` or ``searches`` (the values compared are each search's mean: ``n_a``,
            ``n_b`` count searches).
        runs_a, runs_b: the runs behind each side.
        test_variance: the test-set sampling variance included in ``se`` (0: none).
    """

    estimate: float
    low: float
    high: float
    se: float
    df: float
    p: float
    n_a: int
    n_b: int
    sd_a: float
    sd_b: float
    test: str
    confidence: float = 0.95
    level: str = "runs"
    runs_a: int = 0
    runs_b: int = 0
    test_variance: float = 0.0

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high) and math.isfinite(self.p)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _undefined(a: list[float], b: list[float], test: str, confidence: float) -> Difference:
    estimate = (statistics.fmean(a) - statistics.fmean(b)) if a and b else math.nan
    nan = math.nan
    return Difference(estimate, nan, nan, nan, nan, nan, len(a), len(b), nan, nan, test,
                      confidence)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's t test and interval for ``mean(a) - mean(b)`` (unequal variances).

    ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``; Welch-Satterthwaite
    ``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``; ``t = d / se``.
    """
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return _undefined(a, b, "welch", confidence)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    d = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:  # identical constant samples: no spread to test against
        p = 1.0 if d == 0 else 0.0
        return Difference(d, d, d, 0.0, math.inf, p, len(a), len(b), 0.0, 0.0, "welch",
                          confidence)
    df = se ** 4 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = _t_quantile(0.5 + confidence / 2, df) * se
    p = min(1.0, 2 * _t_sf(abs(d) / se, df))
    return Difference(d, d - half, d + half, se, df, p, len(a), len(b),
                      statistics.stdev(a), statistics.stdev(b), "welch", confidence)


def paired(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95
           ) -> Difference:
    """Paired t test and interval over the seed indices both methods have (finite)."""
    keys = [i for i in sorted(set(a) & set(b)) if _finite([a[i], b[i]]) == [a[i], b[i]]]
    diffs = [a[i] - b[i] for i in keys]
    if len(diffs) < 2:
        return _undefined([a[i] for i in keys], [b[i] for i in keys], "paired", confidence)
    interval = mean_interval(diffs, confidence)
    n = len(diffs)
    se = interval.sd / math.sqrt(n)
    if se == 0:
        p = 1.0 if interval.mean == 0 else 0.0
    else:
        p = min(1.0, 2 * _t_sf(abs(interval.mean) / se, n - 1))
    return Difference(interval.mean, interval.low, interval.high, se, n - 1, p, n, n,
                      interval.sd, math.nan, "paired", confidence)


def permutation_p(a: Sequence[float], b: Sequence[float], max_exact: int = 20000,
                  resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of the difference of means under random relabelling of the seeds:
    exact over every split of the pooled values when there are at most ``max_exact`` splits
    (C(10, 5) = 252 for 5 seeds each), else Monte Carlo with ``resamples`` draws (the observed
    split counted, so p > 0)."""
    import random

    a, b = _finite(a), _finite(b)
    if not a or not b:
        return math.nan
    pooled, n_a = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    total = sum(pooled)
    tol = 1e-12 * max(1.0, abs(observed))

    def extreme(group: Sequence[float]) -> bool:
        s = sum(group)
        return abs(s / n_a - (total - s) / (len(pooled) - n_a)) >= observed - tol

    if math.comb(len(pooled), n_a) <= max_exact:
        splits = list(combinations(pooled, n_a))
        return sum(extreme(g) for g in splits) / len(splits)
    rng = random.Random(seed)
    hits = sum(extreme(rng.sample(pooled, n_a)) for _ in range(resamples))
    return (hits + 1) / (resamples + 1)


def compare(a: Mapping[int, float], b: Mapping[int, float], test: str = "welch",
            confidence: float = 0.95, *, clusters: Mapping[int, int] | None = None,
            test_variance: float = 0.0) -> Difference:
    """``mean(a) - mean(b)`` by ``test``: ``welch`` (default), ``permutation`` (Welch's
    interval, the permutation test's p-value) or ``paired`` (by seed index, or by search with
    clusters).

    Args:
        a, b: seed index -> metric value of the two methods.
        clusters: seed index -> search index (the same for both methods: run ``i`` trains the
            config of search ``i mod S``). With two or more searches the test compares the
            searches' means (module docstring); ``None``: the runs.
        test_variance: the test-set sampling variance of the difference (0: none), added to
            the squared standard error of the t-based tests (the permutation test's p-value
            does not include it).
    """
    runs_a, runs_b = len(_finite(list(a.values()))), len(_finite(list(b.values())))
    mean_a, mean_b = cluster_means(a, clusters), cluster_means(b, clusters)
    level = "searches" if len(mean_a) < runs_a or len(mean_b) < runs_b else "runs"
    if test == "paired":
        result = paired(mean_a, mean_b, confidence)
    else:
        result = welch(list(mean_a.values()), list(mean_b.values()), confidence)
        if test == "permutation":
            p = permutation_p(list(mean_a.values()), list(mean_b.values()))
            result = Difference(**{**asdict(result), "p": p, "test": "permutation"})
        elif test != "welch":
            raise ValueError(f"unknown test '{test}'; use welch, permutation or paired")
    extra = {"level": level, "runs_a": runs_a, "runs_b": runs_b}
    if test_variance and math.isfinite(result.se) and math.isfinite(result.df):
        se, df = with_test_variance(result.se, result.df, test_variance)
        half = _t_quantile(0.5 + confidence / 2, df) * se
        extra.update(se=se, df=df, low=result.estimate - half, high=result.estimate + half,
                     test_variance=test_variance)
        if test != "permutation":
            extra["p"] = min(1.0, 2 * _t_sf(abs(result.estimate) / se, df))
    return Difference(**{**asdict(result), **extra})


def adjust(pvalues: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values of a family of tests (``nan`` entries stay ``nan`` and do not count).

    - ``holm``: sort ascending; ``p'_(i) = max_{j<=i} min(1, (m - j + 1) p_(j))`` (step-down,
      controls the family-wise error rate);
    - ``bh``: Benjamini-Hochberg (``scipy.stats.false_discovery_control``);
    - ``none``: as given.
    """
    index = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    out = [math.nan] * len(pvalues)
    values = [float(pvalues[i]) for i in index]
    if not values:
        return out
    if method == "none":
        adjusted = values
    elif method == "bh":
        from scipy.stats import false_discovery_control

        adjusted = [float(v) for v in false_discovery_control(values, method="bh")]
    elif method == "holm":
        m = len(values)
        order = sorted(range(m), key=lambda k: values[k])
        adjusted, running = [0.0] * m, 0.0
        for rank, k in enumerate(order):
            running = max(running, min(1.0, (m - rank) * values[k]))
            adjusted[k] = running
    else:
        raise ValueError(f"unknown correction '{method}'; use holm, bh or none")
    for i, value in zip(index, adjusted, strict=True):
        out[i] = value
    return out


def equivalence(diff: Difference, margin: float) -> float:
    """p-value of two one-sided tests that ``-margin < difference < margin`` (TOST): the larger
    of ``P(T >= (d + margin)/se)`` and ``P(T <= (d - margin)/se)`` with the comparison's t
    distribution; ``nan`` when the comparison has none. Equivalence is shown at level ``a``
    when it is below ``a`` (equivalently: the ``1 - 2a`` interval lies within the margin)."""
    if not (math.isfinite(diff.se) and math.isfinite(diff.estimate)) or margin <= 0:
        return math.nan
    if diff.se == 0:
        return 0.0 if abs(diff.estimate) < margin else 1.0
    lower = _t_sf((diff.estimate + margin) / diff.se, diff.df)
    upper = _t_sf((margin - diff.estimate) / diff.se, diff.df)
    return max(lower, upper)


def adjusted_alpha(p: float, p_adjusted: float, alpha: float) -> float:
    """The level at which a test whose raw p-value ``p`` became ``p_adjusted`` is decided:
    ``alpha * p / p_adjusted``, so that the test's own interval at this level excludes 0
    exactly when ``p_adjusted < alpha``. Holm: ``alpha / m`` for the family's smallest p
    (Bonferroni's level), ``alpha / (m - j + 1)`` at step ``j``; unadjusted: ``alpha``."""
    if not (math.isfinite(p) and math.isfinite(p_adjusted)) or p_adjusted <= 0 or p <= 0:
        return alpha
    return min(alpha, alpha * p / p_adjusted)


def adjusted_interval(diff: Difference, alpha: float) -> tuple[float, float]:
    """The two-sided interval of ``diff`` at level ``1 - alpha`` (the same standard error and
    degrees of freedom as its test); ``(nan, nan)`` where it has none."""
    if not (math.isfinite(diff.se) and math.isfinite(diff.estimate)) or diff.df <= 0:
        return math.nan, math.nan
    half = _t_quantile(1 - alpha / 2, diff.df) * diff.se if diff.se > 0 else 0.0
    return diff.estimate - half, diff.estimate + half


def _welch_df(sd_a: float, sd_b: float, n_a: int, n_b: int) -> float:
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if va + vb == 0:
        return float(n_a + n_b - 2)
    return (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))


def min_detectable_difference(sd_a: float, sd_b: float, n_a: int, n_b: int,
                              alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided Welch test at level ``alpha`` detects with
    probability ``power``, for these standard deviations and seeds:
    ``(t(1 - alpha/2, df) + t(power, df)) * sqrt(sd_a^2/n_a + sd_b^2/n_b)`` (the usual normal
    approximation with t quantiles; ``df`` Welch-Satterthwaite). ``nan`` for fewer than 2 seeds
    a side."""
    if n_a < 2 or n_b < 2 or not (math.isfinite(sd_a) and math.isfinite(sd_b)):
        return math.nan
    df = _welch_df(sd_a, sd_b, n_a, n_b)
    return detectable(math.sqrt(sd_a ** 2 / n_a + sd_b ** 2 / n_b), df, alpha, power)


def detectable(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """``(t(1 - alpha/2, df) + t(power, df)) * se``: the difference a two-sided t test with
    this standard error detects with probability ``power``."""
    if not (math.isfinite(se) and df > 0):
        return math.nan
    return (_t_quantile(1 - alpha / 2, df) + _t_quantile(power, df)) * se


def seeds_needed(sd_a: float, sd_b: float, margin: float, alpha: float = 0.05,
                 power: float = 0.8, limit: int = 1000) -> int | None:
    """Seeds per method for :func:`min_detectable_difference` to reach ``margin`` (``None``
    beyond ``limit``, or without standard deviations)."""
    if not (math.isfinite(sd_a) and math.isfinite(sd_b)) or margin <= 0:
        return None
    for n in range(2, limit + 1):
        if min_detectable_difference(sd_a, sd_b, n, n, alpha, power) <= margin:
            return n
    return None


def above_chance(values: Sequence[float], chance: float, alpha: float = 0.05) -> bool:
    """Whether the mean accuracy is above ``chance`` by a one-sided t test at ``alpha`` (a
    single seed counts when it is above chance)."""
    finite = _finite(values)
    if not finite:
        return False
    if len(finite) < 2:
        return finite[0] > chance
    interval = mean_interval(finite, 1 - 2 * alpha)  # its lower end is the one-sided bound
    if interval.sd == 0:
        return interval.mean > chance
    return interval.low > chance


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: non-finite floats become ``None``."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in values.items()}

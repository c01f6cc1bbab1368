"""The study's statistics against values worked by hand and, where scipy has them, scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from extune.study.stats import (
    above_chance,
    adjust,
    compare,
    equivalence,
    mean_interval,
    min_detectable_difference,
    paired,
    permutation_p,
    seeds_needed,
    welch,
)


def test_interval_of_three_values_by_hand():
    # mean 2, sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    iv = mean_interval([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0) and iv.sd == pytest.approx(1.0)
    assert iv.half_width == pytest.approx(2.484138, abs=1e-6)
    assert mean_interval([0.7, math.nan]).n == 1 and not mean_interval([0.7]).defined
    assert mean_interval([]).to_dict()["mean"] is None


def test_welch_by_hand_and_against_scipy():
    # a: mean 2, var 1 -> 1/3; b: mean 4, var 4 -> 4/3; se = sqrt(5/3) = 1.290994;
    # t = -2 / se = -1.549193; df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17 = 2.941176
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    d = welch(a, b)
    assert d.estimate == pytest.approx(-2.0)
    assert d.se == pytest.approx(1.290994, abs=1e-6)
    assert d.df == pytest.approx(50 / 17)
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-9)
    half = sp.t.ppf(0.975, 50 / 17) * 1.290994
    assert (d.low, d.high) == pytest.approx((-2 - half, -2 + half), abs=1e-5)
    assert d.n_a == 3 and d.sd_b == pytest.approx(2.0)


def test_welch_needs_two_values_a_side_and_handles_no_spread():
    assert not welch([0.5], [0.4, 0.6]).defined
    same = welch([0.5, 0.5], [0.5, 0.5])
    assert same.p == 1.0 and same.estimate == 0.0
    apart = welch([0.6, 0.6], [0.5, 0.5])
    assert apart.p == 0.0 and apart.estimate == pytest.approx(0.1)


def test_paired_by_seed_index_against_scipy():
    a = {0: 0.5, 1: 0.7, 2: 0.9, 3: 0.65}
    b = {2: 0.82, 0: 0.38, 1: 0.61, 3: 0.5}
    d = paired(a, b)
    ref = sp.ttest_rel([a[i] for i in range(4)], [b[i] for i in range(4)])
    assert d.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert d.df == 3 and d.estimate == pytest.approx((0.12 + 0.09 + 0.08 + 0.15) / 4)
    assert compare(a, b, "paired").p == d.p
    assert compare(a, b).test == "welch" and compare(a, b).p > d.p  # pairing removes spread


def test_exact_permutation_by_hand():
    # 20 ways to split {1..6} into 3 + 3; only the observed split and its mirror reach
    # |mean difference| = 3: p = 2/20
    assert permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    ref = sp.permutation_test(([1, 2, 3], [4, 5, 6]), lambda x, y: x.mean() - y.mean(),
                              permutation_type="independent", n_resamples=math.inf)
    assert permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(ref.pvalue)
    assert compare({0: 1, 1: 2, 2: 3}, {0: 4, 1: 5, 2: 6}, "permutation").p == pytest.approx(0.1)


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04)
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: p * m / rank = 0.02, 0.02, 0.04, 0.04 (sorted), then the running minimum from the top
    assert adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust(p, "none") == p
    with_nan = adjust([0.5, math.nan, 0.01], "holm")  # nan stays nan and is not counted (m=2)
    assert math.isnan(with_nan[1]) and with_nan[::2] == pytest.approx([0.5, 0.02])
    assert adjust([0.9, 0.8], "holm") == [1.0, 1.0]  # 0.8 * 2 is capped at 1; order is kept
    with pytest.raises(ValueError, match="unknown correction"):
        adjust(p, "sidak")


def test_equivalence_is_two_one_sided_tests():
    d = welch([0.500, 0.505, 0.498, 0.502, 0.501], [0.499, 0.503, 0.500, 0.497, 0.502])
    p = equivalence(d, 0.02)
    lower = sp.t.sf((d.estimate + 0.02) / d.se, d.df)
    upper = sp.t.sf((0.02 - d.estimate) / d.se, d.df)
    assert p == pytest.approx(max(lower, upper)) and p < 0.001
    # the same p < alpha <=> the (1 - 2 alpha) interval lies within the margin
    iv = welch(*[[0.5, 0.505, 0.498, 0.502, 0.501], [0.499, 0.503, 0.5, 0.497, 0.502]], 0.90)
    assert -0.02 < iv.low and iv.high < 0.02
    wide = welch([0.4, 0.5, 0.6], [0.45, 0.55, 0.5])
    assert equivalence(wide, 0.02) > 0.05  # a wide interval shows no equivalence


def test_minimum_detectable_difference_by_hand_and_its_power():
    # sd 0.02 both, 5 seeds each: se = 0.02 * sqrt(2/5) = 0.0126491; df = 8;
    # t(0.975, 8) = 2.306004, t(0.8, 8) = 0.888890 -> 3.194894 * 0.0126491 = 0.0404126
    mdd = min_detectable_difference(0.02, 0.02, 5, 5)
    assert mdd == pytest.approx(0.0404126, abs=1e-6)
    se, df = 0.02 * math.sqrt(2 / 5), 8
    crit = sp.t.ppf(0.975, df)
    power = sp.nct.sf(crit, df, mdd / se) + sp.nct.cdf(-crit, df, mdd / se)
    assert power == pytest.approx(0.8, abs=0.03)  # the approximation is close to exact
    assert math.isnan(min_detectable_difference(0.02, 0.02, 1, 5))


def test_seeds_needed_is_the_smallest_that_reaches_the_margin():
    n = seeds_needed(0.02, 0.02, 0.02)
    assert min_detectable_difference(0.02, 0.02, n, n) <= 0.02
    assert min_detectable_difference(0.02, 0.02, n - 1, n - 1) > 0.02
    assert n == 17
    assert seeds_needed(math.nan, 0.02, 0.02) is None


def test_above_chance():
    assert above_chance([0.30, 0.32, 0.31], 0.1)
    assert not above_chance([0.09, 0.12, 0.10], 0.1)
    assert not above_chance([0.157, 0.05], 0.1)  # two seeds far apart: not shown above chance
    assert above_chance([0.5], 0.1) and not above_chance([], 0.1)

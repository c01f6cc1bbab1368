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


# ----------------------------------------------------------------------------- hierarchy
def test_with_several_searches_the_runs_of_a_search_are_one_cluster():
    # 2 searches x 2 seeds: search means a = (1.5, 3.5), b = (1.0, 1.0) -> Welch on the means
    a = {0: 1.0, 1: 3.0, 2: 2.0, 3: 4.0}  # seed index i trains search i mod 2
    b = {0: 0.9, 1: 0.9, 2: 1.1, 3: 1.1}
    clusters = {i: i % 2 for i in range(4)}
    d = compare(a, b, clusters=clusters)
    by_hand = welch([1.5, 3.5], [1.0, 1.0])
    assert (d.estimate, d.se, d.df, d.p) == pytest.approx(
        (by_hand.estimate, by_hand.se, by_hand.df, by_hand.p))
    assert (d.level, d.n_a, d.runs_a) == ("searches", 2, 4)
    assert compare(a, b).level == "runs" and compare(a, b).n_a == 4  # ignoring the searches
    iv = mean_interval(a, clusters=clusters)
    assert (iv.mean, iv.n, iv.level) == (2.5, 2, "searches")
    assert iv.half_width == pytest.approx(sp.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))


@pytest.mark.parametrize("searches", [3, 4])
def test_hierarchical_intervals_cover_the_truth_95_percent_of_the_time(searches):
    """2,000 simulated studies with a known between-search variance: the intervals over the
    searches' means cover the true difference 93-97% of the time; treating the runs as
    independent (what extune did before) covers it far less often."""
    import numpy as np

    rng = np.random.default_rng(searches)
    seeds_per_search, sd_search, sd_seed, truth = 4, 0.02, 0.01, 0.05
    clusters = {i: i % searches for i in range(searches * seeds_per_search)}
    hits = naive_hits = 0
    studies = 2000
    for _ in range(studies):
        arms = []
        for mean in (0.5 + truth, 0.5):
            effect = rng.normal(0, sd_search, searches)
            arms.append({i: mean + effect[s] + rng.normal(0, sd_seed)
                         for i, s in clusters.items()})
        d = compare(*arms, clusters=clusters)
        hits += d.low <= truth <= d.high
        naive = compare(*arms)
        naive_hits += naive.low <= truth <= naive.high
    assert 0.93 <= hits / studies <= 0.97
    assert naive_hits / studies < 0.75


def test_a_test_set_variance_widens_the_interval_welch_satterthwaite():
    from extune.study.stats import with_test_variance

    a, b = [0.50, 0.52, 0.51, 0.53], [0.48, 0.47, 0.49, 0.50]
    plain = compare(dict(enumerate(a)), dict(enumerate(b)))
    v = 0.016 ** 2  # one model's accuracy on 1,000 test images: sqrt(0.25 / 1000)
    d = compare(dict(enumerate(a)), dict(enumerate(b)), test_variance=v)
    se = math.sqrt(plain.se ** 2 + v)
    df = se ** 4 / (plain.se ** 4 / plain.df)  # the test-set term's df infinite
    assert (d.se, d.df) == pytest.approx((se, df))
    assert (d.low, d.high) == pytest.approx(sp.t.interval(0.95, df, loc=d.estimate, scale=se))
    assert d.p == pytest.approx(2 * sp.t.sf(abs(d.estimate) / se, df))
    assert d.p > plain.p and d.test_variance == v
    assert with_test_variance(0.0, 3, v) == (math.sqrt(v), math.inf)


# ----------------------------------------------------------------- adjusted intervals
def test_holm_adjusted_intervals_and_detectable_differences_by_hand_and_scipy():
    """Three claims of one family: each interval is at the level its Holm step used, so it
    excludes 0 exactly when the adjusted p is below 0.05; detectable differences at the
    family's corrected level (Holm's first step, alpha / m)."""
    from extune.study.claims import BUILTIN_CLAIMS, claim_rows, metric_by_name

    values = {  # excon vs supcon on three primary metrics, 4 seeds each
        ("excon", "accuracy"): [0.60, 0.62, 0.61, 0.63],
        ("supcon", "accuracy"): [0.55, 0.56, 0.54, 0.57],
        ("excon", "avg_drop"): [0.30, 0.35, 0.28, 0.33],
        ("supcon", "avg_drop"): [0.31, 0.30, 0.34, 0.29],
        ("excon", "fgsm_accuracy"): [0.20, 0.23, 0.21, 0.22],
        ("supcon", "fgsm_accuracy"): [0.19, 0.205, 0.18, 0.20],
    }
    rows = {r["metric"]: r for r in claim_rows(
        lambda arm, metric: dict(enumerate(values.get((arm, metric.name), []))),
        BUILTIN_CLAIMS, ["excon", "supcon"], ["accuracy", "avg_drop", "fgsm_accuracy"],
        untested={}, margins=lambda m: 0.02, test="welch", correction="holm",
        confidence=0.95)}
    raw = {m: welch(values[("excon", m)], values[("supcon", m)]) for m in rows}
    order = sorted(rows, key=lambda m: raw[m].p)  # accuracy, fgsm_accuracy, avg_drop
    assert order == ["accuracy", "fgsm_accuracy", "avg_drop"]
    holm = [min(1, 3 * raw["accuracy"].p)]
    holm.append(max(holm[0], min(1, 2 * raw["fgsm_accuracy"].p)))
    holm.append(max(holm[1], raw["avg_drop"].p))
    for metric, p_holm in zip(order, holm, strict=True):
        row, d = rows[metric], raw[metric]
        assert row["p_adjusted"] == pytest.approx(p_holm)
        level = 0.05 * d.p / p_holm  # the adjusted test's level
        assert row["alpha_adjusted"] == pytest.approx(level)
        assert row["interval"] == pytest.approx(list(sp.t.interval(1 - level, d.df,
                                                                   loc=d.estimate, scale=d.se)))
        assert row["interval_simultaneous"] == pytest.approx(list(sp.t.interval(
            1 - 0.05 / 3, d.df, loc=d.estimate, scale=d.se)))  # Bonferroni over the family
        mdd = (sp.t.ppf(1 - 0.05 / 6, d.df) + sp.t.ppf(0.8, d.df)) * d.se
        assert row["mdd"] == pytest.approx(mdd)
        shown = row["interval"][0] > 0 or row["interval"][1] < 0
        assert shown == (p_holm < 0.05) == (row["verdict"] in ("holds", "reversed"))
    assert rows["accuracy"]["alpha_adjusted"] == pytest.approx(0.05 / 3)  # Holm's first step
    assert metric_by_name("avg_drop").higher_is_better is False


# ------------------------------------------------------------------- test-set bootstrap
def test_the_test_set_bootstrap_pairs_images_and_matches_the_analytic_variance():
    import numpy as np

    from extune.study.resample import TestSetBootstrap

    rng = np.random.default_rng(0)
    n = 1000
    hard = rng.random(n) < 0.3  # images every model tends to get wrong
    outputs = {}
    for arm, skill in (("a", 0.75), ("b", 0.70)):
        outputs[arm] = {}
        for seed in range(4):
            correct = np.where(hard, rng.random(n) < skill - 0.4, rng.random(n) < skill + 0.1)
            outputs[arm][seed] = {"test/correct": correct,
                                  "test/confidence": np.clip(rng.normal(0.7, 0.1, n), 0.1, 1),
                                  "test/alignment": rng.normal(0.3, 0.2, 500)}
    boot = TestSetBootstrap(outputs, resamples=4000, seed=1)
    per_image = {arm: np.mean([o["test/correct"] for o in runs.values()], axis=0)
                 for arm, runs in outputs.items()}
    diff = per_image["a"] - per_image["b"]
    analytic = diff.var() / n  # the bootstrap's own variance of a mean, paired by image
    assert boot.variance("a", "b", "accuracy") == pytest.approx(analytic, rel=0.1)
    unpaired = per_image["a"].var() / n + per_image["b"].var() / n
    assert boot.variance("a", "b", "accuracy") < 0.6 * unpaired  # shared hard images cancel
    assert boot.variance("a", None, "accuracy") == pytest.approx(per_image["a"].var() / n,
                                                                 rel=0.1)
    assert boot.variance("a", "b", "alignment") > 0  # its own 500 images, resampled
    assert boot.variance("a", "b", "ece") > 0 and boot.variance("a", "b", "shift_ece") is None
    again = TestSetBootstrap(outputs, resamples=4000, seed=1)
    assert again.variance("a", "b", "ece") == boot.variance("a", "b", "ece")  # seeded


def test_ece_from_per_image_outputs_is_torchmetrics_ece():
    import numpy as np
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    from extune.study.resample import ece

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    logits[0] = torch.tensor([100.0] + [0.0] * 9)  # a confidence of exactly 1: its own bin
    labels = torch.randint(0, 10, (500,), generator=g)
    expected = float(multiclass_calibration_error(logits.softmax(1), labels, num_classes=10,
                                                  n_bins=15, norm="l1"))
    confidence, predicted = logits.softmax(1).max(1)
    got = ece(confidence.numpy(), (predicted == labels).numpy())
    assert got.shape == (1,) and got[0] == pytest.approx(expected, abs=1e-6)
    rows = np.stack([np.arange(500), np.arange(500)[::-1]])  # two "resamples": the same set
    assert ece(confidence.numpy(), (predicted == labels).numpy(), rows) == pytest.approx(
        [expected, expected], abs=1e-6)

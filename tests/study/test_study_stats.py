"""Intervals, paired differences and verdicts on hand-made numbers (no Ray, no MLflow)."""

from __future__ import annotations

import math

import pytest

from extune.search.stats import (
    HOLDS,
    NOT_SHOWN,
    REVERSED,
    mean_interval,
    paired_difference,
    verdict,
)


def test_interval_of_three_values_by_hand():
    # mean 2, sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    iv = mean_interval([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0)
    assert iv.sd == pytest.approx(1.0)
    assert iv.half_width == pytest.approx(2.484138, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-6)
    assert iv.text() == "2.000 ± 2.484"


def test_interval_level_changes_the_width():
    values = [0.5, 0.6, 0.55, 0.62, 0.58]
    assert mean_interval(values, 0.99).half_width > mean_interval(values, 0.95).half_width \
        > mean_interval(values, 0.8).half_width


def test_one_value_has_no_interval_and_non_finite_values_are_left_out():
    iv = mean_interval([0.7, math.nan])
    assert iv.n == 1 and iv.mean == 0.7 and not iv.defined
    assert iv.to_dict()["low"] is None
    assert mean_interval([]).n == 0


def test_clear_win_holds():
    a = {0: 0.80, 1: 0.82, 2: 0.81}
    b = {0: 0.70, 1: 0.71, 2: 0.69}
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(0.11)
    assert diff.low > 0
    assert verdict(diff, higher_is_better=True) == HOLDS


def test_tie_is_not_shown():
    a = {0: 0.70, 1: 0.74, 2: 0.69}
    b = {0: 0.72, 1: 0.71, 2: 0.70}
    diff = paired_difference(a, b)
    assert diff.low < 0 < diff.high
    assert verdict(diff, higher_is_better=True) == NOT_SHOWN


def test_loss_is_reversed():
    a = {0: 0.60, 1: 0.61, 2: 0.59}
    b = {0: 0.70, 1: 0.72, 2: 0.71}
    assert verdict(paired_difference(a, b), higher_is_better=True) == REVERSED


def test_lower_is_better_turns_the_verdict():
    lower_ece = paired_difference({0: 0.02, 1: 0.03, 2: 0.025}, {0: 0.08, 1: 0.09, 2: 0.085})
    assert lower_ece.high < 0
    assert verdict(lower_ece, higher_is_better=False) == HOLDS
    assert verdict(lower_ece, higher_is_better=True) == REVERSED


def test_pairs_by_seed_index_not_by_order():
    # the same per-seed gap of +0.1 although b lists its seeds in another order
    a = {0: 0.5, 1: 0.7, 2: 0.9}
    b = {2: 0.8, 0: 0.4, 1: 0.6}
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(0.1)
    assert diff.sd == pytest.approx(0.0, abs=1e-12)
    assert verdict(diff, True) == HOLDS  # unpaired, the spread of the seeds would hide it


def test_unpaired_seeds_are_left_out_and_one_pair_shows_nothing():
    diff = paired_difference({0: 0.9, 1: 0.8}, {1: 0.1, 2: 0.2})
    assert diff.n == 1
    assert verdict(diff, True) == NOT_SHOWN

"""Intervals (dpo_recipes/report/statistics.py)."""

import math

import pytest

from dpo_recipes.report.statistics import (balanced_mean, clustered_win_rate, hierarchical_bootstrap, paired_t_interval,
                                t_interval, wilson_interval)


def test_wilson_interval_reproduces_published_values():
    """Newcombe (1998), Statistics in Medicine 17:857, table II, method 3 (Wilson score without continuity
    correction)."""
    for (x, n), (low, high) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                                (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        assert wilson_interval(x, n) == pytest.approx((low, high), abs=5e-5)


def test_t_interval_matches_the_hand_computation():
    """values 1..5: mean 3; sample sd sqrt(((-2)^2 + (-1)^2 + 0 + 1 + 2^2) / 4) = sqrt(2.5) = 1.581139;
    se = 1.581139 / sqrt(5) = 0.707107; t(0.975, df 4) = 2.776445 (tables); half = 2.776445 * 0.707107 = 1.963243."""
    out = t_interval([1, 2, 3, 4, 5])
    assert (out["mean"], out["n"], out["df"]) == (3.0, 5, 4)
    assert out["se"] == pytest.approx(0.707107, abs=1e-6)
    assert (out["low"], out["high"]) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-6)


def test_t_interval_level_and_single_value():
    """90%: t(0.95, df 4) = 2.131847, half = 2.131847 * 0.707107 = 1.507443."""
    assert t_interval([1, 2, 3, 4, 5], level=0.90)["high"] == pytest.approx(3 + 1.507443, abs=1e-6)
    one = t_interval([0.7])
    assert one["mean"] == 0.7 and one["df"] == 0 and math.isnan(one["low"]) and math.isnan(one["se"])
    with pytest.raises(ValueError):
        t_interval([])


def test_paired_t_interval_matches_the_hand_computation():
    """a - b = (0.10, 0.03, 0.07): mean 0.066667; deviations 0.033333, -0.036667, 0.003333, squares sum
    0.0024667, / 2 = 0.00123333, sd 0.035119, se 0.035119 / sqrt(3) = 0.020276; t(0.975, df 2) = 4.302653;
    half = 0.087241."""
    out = paired_t_interval([0.60, 0.55, 0.58], [0.50, 0.52, 0.51])
    assert out["mean"] == pytest.approx(0.066667, abs=1e-6) and out["df"] == 2
    assert out["se"] == pytest.approx(0.020276, abs=1e-6)
    assert (out["low"], out["high"]) == pytest.approx((0.066667 - 0.087241, 0.066667 + 0.087241), abs=1e-5)
    # pairing matters: seeds that move both methods together cancel (differences 0.05, 0.04, 0.06: se 0.005774)
    assert paired_t_interval([0.6, 0.7, 0.8], [0.55, 0.66, 0.74])["se"] == pytest.approx(0.005774, abs=1e-6)
    with pytest.raises(ValueError):
        paired_t_interval([1, 2], [1, 2, 3])


def test_hierarchical_bootstrap_resamples_seeds():
    """Two seeds whose pairs are all 0 and all 1: a replicate draws seeds {0,0}, {0,1}, {1,0} or {1,1} with
    probability 1/4 each and averages to 0, 0.5, 0.5 or 1; the pairs inside a seed are constant. So the 95%
    percentile interval is [0, 1] and the point is 0.5. Resampling pairs alone would give [0.5, 0.5]."""
    out = hierarchical_bootstrap([[0, 0, 0, 0], [1, 1, 1, 1]], n_boot=4000)
    assert out["mean"] == 0.5 and (out["low"], out["high"]) == (0.0, 1.0) and out["n_seeds"] == 2


def test_hierarchical_bootstrap_resamples_pairs_within_seeds():
    """One seed, pairs 0,1,0,1 (mean 0.5): the replicate mean is Binomial(4, 1/2) / 4, whose 2.5% and 97.5%
    quantiles are 0 and 1 (P(0) = P(4) = 1/16 > 2.5%); identical seeds add nothing, so three copies give a
    narrower interval than one (12 pairs) but the same point."""
    one = hierarchical_bootstrap([[0, 1, 0, 1]], n_boot=4000)
    assert one["mean"] == 0.5 and (one["low"], one["high"]) == (0.0, 1.0)
    three = hierarchical_bootstrap([[0, 1, 0, 1]] * 3, n_boot=4000)
    assert three["mean"] == 0.5 and 0.0 < three["low"] < 0.5 < three["high"] < 1.0


def test_clustered_win_rate_matches_the_hand_computation():
    """Prompt means A (1, 1) -> 1, B (1, 0) -> 0.5, C (0.5, 0) -> 0.25, D (1, 1) -> 1: mean 0.6875; deviations
    0.3125, -0.1875, -0.4375, 0.3125, squares sum 0.421875, / 3 = 0.140625, sd 0.375, se 0.1875;
    t(0.975, df 3) = 3.182446, half 0.596709: low 0.090791, high 1.284 clipped to 1."""
    out = clustered_win_rate([1, 1, 1, 0, 0.5, 0, 1, 1], ["A", "A", "B", "B", "C", "C", "D", "D"])
    assert out["win_rate"] == pytest.approx(0.6875) and out["se"] == pytest.approx(0.1875)
    assert out["low"] == pytest.approx(0.090791, abs=1e-6) and out["high"] == 1.0
    assert (out["n_prompts"], out["n_outcomes"]) == (4, 8)
    # the same 8 outcomes treated as independent would give a narrower interval: clustering is what widens it
    low, high = wilson_interval(5.5, 8)
    assert high - low < out["high"] - out["low"]


def test_balanced_mean_weighs_groups_equally():
    """Chosen shorter: 1, 1, 1 (mean 1); chosen longer: 0 (mean 0): balanced 0.5, plain mean 0.75."""
    assert balanced_mean([1, 1, 1, 0], ["short", "short", "short", "long"]) == 0.5
    with pytest.raises(ValueError):
        balanced_mean([1, 0], ["a"])

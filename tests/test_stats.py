"""Intervals (dpo_recipes/stats.py)."""

import pytest

from dpo_recipes.stats import wilson_interval


def test_wilson_interval_reproduces_published_values():
    """Newcombe (1998), Statistics in Medicine 17:857, table II, method 3 (Wilson score without continuity
    correction)."""
    for (x, n), (low, high) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                                (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        assert wilson_interval(x, n) == pytest.approx((low, high), abs=5e-5)

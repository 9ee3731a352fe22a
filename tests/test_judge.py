"""The judge's win-rate (dpo_recipes/report/judge.py). With a real reward model as the judge:
tests/e2e/test_evaluation_report.py."""

import pytest

from dpo_recipes.report.judge import win_rate
from dpo_recipes.report.statistics import wilson_interval


def test_win_rate_counts_ties_half():
    result = win_rate([1.0, 0.2, 0.5, 0.3], [0.0, 0.4, 0.5, 0.9], ["a", "b", "c", "same"], ["x", "y", "z", "same"])
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (1, 2, 1, 4)  # equal score, equal text
    assert result["win_rate"] == pytest.approx(0.5)
    assert result["ci95"] == pytest.approx(list(wilson_interval(2.0, 4)))

"""Generation and the KL estimates (dpo_recipes/generation.py). Against the exact KL of a trained model:
tests/e2e/test_evaluation_report.py."""

import math

import pytest
import torch

from dpo_recipes.generation import kl_estimates


def test_kl_estimates_are_zero_for_identical_models_and_sum_over_tokens():
    same = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])]
    zero = kl_estimates(same, same)
    assert zero["k1"]["per_completion"]["mean"] == 0 and zero["k3"]["per_completion"]["mean"] == 0
    policy, reference = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])], [torch.tensor([-1.5, -1.0]), torch.tensor([-0.7])]
    est = kl_estimates(policy, reference)
    per_seq = [(-1.0 + 1.5) + (-2.0 + 1.0), -0.5 + 0.7]
    assert est["k1"]["per_completion"]["mean"] == pytest.approx(sum(per_seq) / 2)
    assert est["k1"]["per_token"]["mean"] == pytest.approx(sum(per_seq) / 3)
    k3 = [sum(math.exp(r - p) - 1 - (r - p) for p, r in zip(ps.tolist(), rs.tolist())) for ps, rs in zip(policy, reference)]
    assert est["k3"]["per_completion"]["mean"] == pytest.approx(sum(k3) / 2)
    assert est["tokens"] == 3 and est["completions"] == 2

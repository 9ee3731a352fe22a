"""Reporting (dpo_recipes/report/run_record.py): the training curves' series and the redaction of secrets. Plots of real runs
and `make plots`: tests/e2e/test_make_plots.py."""

import math

from dpo_recipes.report.run_record import plot_series


def test_series_skip_missing_and_non_finite_values():
    history = [
        {"step": 1, "loss": 0.69, "learning_rate": 1e-3, "rewards/margins": 0.0},
        {"step": 2, "loss": float("nan"), "learning_rate": 2e-3},
        {"step": 3, "loss": 0.5, "learning_rate": None, "rewards/margins": float("inf")},
        {"step": 3, "eval_loss": 0.55, "eval_rewards/margins": 0.2},
        {"step": 3, "eval_loss": 0.55, "eval_rewards/margins": 0.2},  # the final evaluation repeats the last one
        {"step": 3, "train_loss": 0.6, "train_runtime": 1.0},
    ]
    series = plot_series(history)
    assert series["loss.png"][1] == {"loss": [(1, 0.69), (3, 0.5)], "eval_loss": [(3, 0.55)]}
    assert series["learning_rate.png"][1] == {"learning_rate": [(1, 1e-3), (2, 2e-3)]}
    assert series["reward_margins.png"][1] == {"rewards/margins": [(1, 0.0)], "eval_rewards/margins": [(3, 0.2)]}
    assert "reward_accuracy.png" not in series and "rewards.png" not in series  # nothing logged: no empty plot
    assert all(math.isfinite(v) for _, lines in series.values() for pts in lines.values() for _, v in pts)


def test_redact_hides_secrets_but_keeps_token_counts(monkeypatch):
    from dpo_recipes.report.run_record import redact

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    out = redact({"hub_token": "x", "token": "y", "wandb_api_key": "z", "num_tokens": 123, "eval_num_tokens": 9.0,
                  "note": "uses hf_abcdefghijklmnop here", "nested": [{"hub_token": "w"}]})
    assert out == {"hub_token": "<redacted>", "token": "<redacted>", "wandb_api_key": "<redacted>", "num_tokens": 123,
                   "eval_num_tokens": 9.0, "note": "uses <redacted> here", "nested": [{"hub_token": "<redacted>"}]}

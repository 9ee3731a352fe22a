"""The policy's win-rate over the reference, judged by a one-output reward model (the report's `judge_model`)."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dpo_recipes.errors import UserError
from .statistics import wilson_interval
from dpo_recipes.data.tokenization import reward_ids


def load_judge(path: str, device, trust_remote_code: bool = False):
    """(model, tokenizer) of a one-output sequence-classification reward model."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype="auto", trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise UserError(f"judge_model: cannot load {path!r}: {str(err).splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise UserError(f"judge_model: {path} has {model.config.num_labels} outputs; a reward model has one "
                        "(num_labels=1)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def judge_scores(judge, judge_tokenizer, prompts: list, replies: list[str]) -> list[float]:
    """The reward of each (prompt, reply), rendered as the reward model was trained (tokenization.reward_ids), one
    sequence at a time so that no padding enters the score."""

    device = next(judge.parameters()).device
    scores = []
    for prompt, reply in zip(prompts, replies):
        completion = [{"role": "assistant", "content": reply}] if isinstance(prompt, list) else reply
        try:
            ids = reward_ids(judge_tokenizer, {"prompt": prompt, "chosen": completion}, "chosen")
        except ValueError as err:  # e.g. a conversational prompt and a tokenizer without a chat template
            raise UserError(f"judge_model: cannot render a held-out prompt: {str(err).splitlines()[0]}") from None
        scores.append(float(judge(input_ids=torch.tensor([ids], device=device)).logits[0, 0]))
    return scores


def win_rate(policy_scores: list[float], reference_scores: list[float], policy_replies: list[str],
             reference_replies: list[str]) -> dict:
    """Wins, ties (identical replies or equal scores) and losses of the policy; win-rate with ties counted half."""
    wins = ties = losses = 0
    for ps, rs, pr, rr in zip(policy_scores, reference_scores, policy_replies, reference_replies):
        if pr == rr or ps == rs:
            ties += 1
        elif ps > rs:
            wins += 1
        else:
            losses += 1
    n = wins + ties + losses
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": rate,
            "ci95": [low, high], "interval": "Wilson score, 95%, ties counted as half a win",
            "mean_reward": {"policy": sum(policy_scores) / n if n else None,
                            "reference": sum(reference_scores) / n if n else None}}

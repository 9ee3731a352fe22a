"""Generation for the evaluation report: completions with every sampling option that reshapes the policy's
distribution turned off, the log-probs of given completion tokens, and the Monte-Carlo KL(policy || reference)."""

from __future__ import annotations

import math

import torch
from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from .statistics import mean_se


def _generation_config(tokenizer, model, max_new_tokens: int, sample: bool, n: int):
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    # Every option that reshapes the next-token distribution is set to "off": generate() fills options left unset
    # from the model's generation_config (often top_p 0.9, temperature 0.6), and the KL estimate needs samples from
    # the policy itself.
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        num_return_sequences=n,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


def _eos_ids(config) -> set[int]:
    eos = config.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def _padded(rows: list[list[int]], pad_id: int, device, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded to one width (at least 1) on the left or the right, and their attention mask (0 over the
    padding)."""
    width = max(1, max(len(r) for r in rows))
    pads = [[pad_id] * (width - len(r)) for r in rows]
    masks = [([0] * (width - len(r)), [1] * len(r)) for r in rows]
    ids = [p + r if left else r + p for p, r in zip(pads, rows)]
    mask = [zeros + ones if left else ones + zeros for zeros, ones in masks]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, sample: bool, n: int = 1,
             seed: int = 0, batch_size: int = 16) -> list[list[list[int]]]:
    """`n` completions of every prompt (token ids), each cut after its first EOS token (which is kept).

    Prompts are generated together, left-padded with the tokenizer's pad token, at most `batch_size` sequences
    (prompts times `n`) per call of the model's generate(); transformers derives each row's positions from the
    attention mask, so a greedy completion is the one the prompt gets alone. Sampling is seeded once per chunk
    (`seed` + chunk index): the draws depend on the seed and on how the prompts are chunked."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_chunk = max(1, batch_size // n)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers calls top_k=0 / min_p=0 invalid flags; here they mean "off"
    try:
        config = _generation_config(tokenizer, model, max_new_tokens, sample, n)
        config.pad_token_id = pad
        eos = _eos_ids(config)
        completions: list[list[list[int]]] = []
        for chunk, start in enumerate(range(0, len(prompts), per_chunk)):
            ids, mask = _padded(prompts[start : start + per_chunk], pad, device)
            torch.manual_seed(seed + chunk)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            rows = out[:, ids.shape[1] :].tolist()
            for i in range(0, len(rows), n):
                completions.append([row[: next((j + 1 for j, t in enumerate(row) if t in eos), len(row))]
                                    for row in rows[i : i + n]])
    finally:
        hf_logging.set_verbosity(verbosity)
    return completions


@torch.no_grad()
def completion_token_logps(model, prompts: list[list[int]], completions: list[list[list[int]]], pad_id: int,
                           batch_size: int = 16) -> list[torch.Tensor]:
    """log p(y_t | prompt, y_<t) of every completion token (float64), from the full softmax at those positions;
    `completions[i]` are completions of `prompts[i]` (as generate() returns them). One tensor per completion, prompt
    by prompt. Rows are scored `batch_size` at a time: the prompt left-padded, the completion right-padded, so every
    completion starts in the same column and positions come from the attention mask."""
    device = next(model.parameters()).device
    pairs = [(p, c) for p, cs in zip(prompts, completions) for c in cs]
    out: list[torch.Tensor] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompt_ids, prompt_mask = _padded([p for p, _ in chunk], pad_id, device, left=True)
        completion_ids, completion_mask = _padded([c for _, c in chunk], pad_id, device, left=False)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        width = completion_ids.shape[1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Only the positions that predict completion tokens need logits (a full vocabulary row each).
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=width + 1).logits[:, :-1].double()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, -width:, None]).squeeze(-1).cpu()
        out += [logps[i, : len(c)] for i, (_, c) in enumerate(chunk)]
    return out


def kl_estimates(policy_logps: list[torch.Tensor], reference_logps: list[torch.Tensor]) -> dict:
    """k1 and k3 Monte-Carlo estimates of KL(pi || pi_ref) from completions sampled from pi, per completion
    (mean over completions of the per-completion sum) and per token (sum over all tokens / number of tokens, with
    the ratio estimator's standard error), each with its standard error across completions."""
    k1 = torch.stack([(p - r).sum() for p, r in zip(policy_logps, reference_logps)])
    k3 = torch.stack([(torch.exp(r - p) - 1 - (r - p)).sum() for p, r in zip(policy_logps, reference_logps)])
    lengths = torch.tensor([float(len(p)) for p in policy_logps], dtype=torch.float64)
    out = {"completions": len(policy_logps), "tokens": int(lengths.sum().item()),
           "mean_completion_tokens": lengths.mean().item()}
    for name, per_seq in (("k1", k1), ("k3", k3)):
        per_token = (per_seq.sum() / lengths.sum()).item()
        n = per_seq.numel()
        # Ratio estimator: the per-token mean is (sum of sequence sums) / (sum of lengths), sequences independent.
        resid = per_seq - per_token * lengths
        se_token = (math.sqrt((resid**2).sum().item() / (n * (n - 1))) / lengths.mean().item()) if n > 1 else float("nan")
        out[name] = {"per_completion": mean_se(per_seq), "per_token": {"mean": per_token, "se": se_token}}
    return out

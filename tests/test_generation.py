"""Generation and the KL estimates (dpo_recipes/generation.py). Against the exact KL of a trained model:
tests/e2e/test_evaluation_report.py."""

import math

import pytest
import torch

from dpo_recipes.generation import completion_token_logps, generate, kl_estimates


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


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["Hi", "What is the capital of Peru, and why?", "Name a prime number larger than ten but not by much."]
    return [tokenizer(t)["input_ids"] for t in texts]


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) == 3  # left padding of different widths
    batched = generate(model, tokenizer, prompts, max_new_tokens=12, sample=False, batch_size=16)
    alone = [generate(model, tokenizer, [p], max_new_tokens=12, sample=False)[0] for p in prompts]
    assert batched == alone
    assert all(len(c) == 1 and len(c[0]) > 0 for c in batched)


def test_sampled_generation_is_seeded_chunked_and_cut_after_the_first_eos(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    model.generation_config.eos_token_id = list(range(0, len(tokenizer), 3))  # an EOS every few tokens
    try:
        first = generate(model, tokenizer, prompts, max_new_tokens=16, sample=True, n=4, seed=7, batch_size=8)
        again = generate(model, tokenizer, prompts, max_new_tokens=16, sample=True, n=4, seed=7, batch_size=8)
        other = generate(model, tokenizer, prompts, max_new_tokens=16, sample=True, n=4, seed=8, batch_size=8)
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert first == again and first != other
    assert [len(c) for c in first] == [4, 4, 4]
    flat = [c for cs in first for c in cs]
    assert any(len(c) < 16 for c in flat)
    for c in flat:  # ends at its first EOS, or runs to the limit without one
        eos_at = [i for i, t in enumerate(c) if t % 3 == 0]
        assert eos_at == [len(c) - 1] or (not eos_at and len(c) == 16), c


def test_batched_completion_logps_equal_the_model_on_each_sequence_alone(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    completions = [[[5, 6, 7], [8]], [[9, 10]], [[11, 12, 13, 14], [15, 16]]]
    batched = completion_token_logps(model, prompts, completions, tokenizer.pad_token_id, batch_size=16)
    expected = []
    with torch.no_grad():
        for p, cs in zip(prompts, completions):
            for c in cs:
                logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].double()
                expected.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1))
    assert [len(t) for t in batched] == [3, 1, 2, 4, 2]
    for got, want in zip(batched, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

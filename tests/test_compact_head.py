"""The compact LM head on a CPU (dpo_recipes/models/compact_head.py): TRL's fused head's answers, from the logits of
the scored positions alone."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from dpo_recipes.models import compact_head
from dpo_recipes.models.compact_head import add_compact_head
from dpo_recipes.models.precision import fp32_lm_head
from dpo_recipes.models.tiny import build_tiny
from tests.helpers import bf16_trainer

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def head_rows(model) -> list[int]:
    """Records how many positions reach the LM head per call (a hook on it)."""
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    return seen


def two_models(path, dtype=torch.float32):
    """The same weights twice: TRL's fused head alone, and the compact head over it."""
    models = []
    for compact in (False, True):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        fp32_lm_head(model)
        add_fused_lm_head(model, outputs=OUTPUTS)
        if compact:
            add_compact_head(model, outputs=OUTPUTS)
        models.append(model)
    return models


def batch(vocab, packed):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 24), generator=gen)
    labels = ids.clone()
    labels[:, :9] = -100  # prompts
    labels[2, 17:] = -100  # a shorter row
    kwargs = {"input_ids": ids, "labels": labels}
    if packed:  # one row of two sequences, positions restarting (transformers reads the packing from them)
        kwargs = {"input_ids": ids[:1], "labels": labels[:1],
                  "position_ids": torch.cat([torch.arange(10), torch.arange(14)]).unsqueeze(0)}
    return kwargs


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: final-logit soft-capping, applied by the model
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_compact_head_gives_the_fused_heads_outputs_and_gradients(tmp_path, family, packed):
    path = build_tiny(family, tmp_path / family)
    fused, compact = two_models(path)
    kwargs = batch(fused.config.vocab_size, packed)
    seen = head_rows(compact)
    a = fused(**kwargs, fused_lm_head=True)
    b = compact(**kwargs, fused_lm_head=True)
    scored = int((kwargs["labels"][:, 1:] != -100).sum())
    rows, width = kwargs["labels"].shape
    assert seen == [scored] < [rows * (width - 1)]  # the head saw the scored positions alone (TRL's: every one)
    assert b.label_mask.equal(a.label_mask)
    assert b.is_top1.equal(a.is_top1)
    for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-5)
        assert getattr(b, name)[~a.label_mask].eq(0).all()
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-6)
    a.log_probs.sum().backward()
    b.log_probs.sum().backward()
    pairs = [(p.grad, q.grad) for p, q in zip(fused.parameters(), compact.parameters()) if p.grad is not None]
    assert len(pairs) == sum(1 for p in compact.parameters() if p.grad is not None) > 0
    for p, q in pairs:
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_compact_head_of_a_bf16_model_stays_fp32(tiny_llama):
    fused, compact = two_models(tiny_llama, torch.bfloat16)
    kwargs = batch(fused.config.vocab_size, packed=False)
    with torch.no_grad():
        a, b = (m(**kwargs, fused_lm_head=True).log_probs for m in (fused, compact))
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_what_the_compact_head_does_not_cover_goes_to_trls_head(tiny_llama, monkeypatch):
    fused, compact = two_models(tiny_llama)
    kwargs = batch(fused.config.vocab_size, packed=False)
    seen = head_rows(compact)
    with torch.no_grad():
        plain = compact(input_ids=kwargs["input_ids"]).logits  # not a fused call: the model's own forward
        assert seen == [kwargs["input_ids"].numel()] and plain.shape[:2] == kwargs["input_ids"].shape
        monkeypatch.setattr(compact_head, "MAX_LOGITS", 10 * fused.config.vocab_size)  # too many logits to build
        expected = fused(**kwargs, fused_lm_head=True).log_probs
        assert compact(**kwargs, fused_lm_head=True).log_probs.equal(expected)  # TRL's own, bit for bit
    assert len(seen) == 1  # TRL's head reads the weight directly: no call of the head module


@pytest.mark.parametrize("extra", [{"shift_labels": "labels"}, {"output_router_logits": True},
                                   {"num_items_in_batch": 7}, {"args": True}],
                         ids=["shift_labels", "router_logits", "num_items_in_batch", "positional"])
def test_calls_the_compact_head_does_not_cover_reach_the_forward_beneath_unchanged(tiny_llama, extra):
    extra = dict(extra)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    calls = []
    model.forward = lambda *args, **kwargs: calls.append((args, kwargs)) or "beneath"  # stands in for TRL's head
    add_compact_head(model)
    kwargs = batch(model.config.vocab_size, packed=False)
    ids = kwargs.pop("input_ids")
    if extra.pop("shift_labels", None):
        kwargs["shift_labels"] = kwargs["labels"][:, 1:]
    args = (ids,) if extra.pop("args", None) else ()
    if not args:
        kwargs["input_ids"] = ids
    assert model(*args, **kwargs, **extra, fused_lm_head=True) == "beneath"
    (seen_args, seen), = calls
    assert len(seen_args) == len(args) and "logits_to_keep" not in seen and seen["fused_lm_head"] is True
    assert {k: seen[k] for k in extra} == extra and seen["labels"] is kwargs["labels"]
    assert seen["shift_labels"] is kwargs.get("shift_labels")


def test_a_covered_call_asks_the_forward_beneath_for_the_scored_positions_only(tiny_llama):
    """The control for the test above: the same call with nothing extra takes the compact path."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    calls = []
    previous = model.forward
    model.forward = lambda *args, **kwargs: calls.append(kwargs) or previous(*args, **kwargs)
    add_compact_head(model)
    kwargs = batch(model.config.vocab_size, packed=False)
    with torch.no_grad():
        model(**kwargs, fused_lm_head=True)
    (seen,) = calls
    assert seen["logits_to_keep"].sum() == (kwargs["labels"][:, 1:] != -100).sum() and "labels" not in seen


def test_trainer_scores_only_completions_and_still_starts_at_ln2(tiny_llama, tmp_path):
    """Default on a CPU: the policy's and the reference's passes both go through the compact head (a fresh adapter
    gives ln 2 exactly); off: TRL's head, whose first loss agrees to float rounding."""
    losses, rows = {}, {}
    for on in (True, False):
        trainer = bf16_trainer(tiny_llama, tmp_path / str(on), cpu_compact_lm_head=on)
        rows[on] = head_rows(trainer.model.get_base_model())
        trainer.train()
        losses[on] = next(e for e in trainer.state.log_history if "loss" in e)["loss"]
        assert ("compact_lm_head" in trainer.layout) == on  # the reference cache's key tells the two apart
    assert losses[True] == pytest.approx(math.log(2), rel=1e-6)
    assert losses[False] == pytest.approx(math.log(2), rel=1e-6)
    assert rows[True] and not rows[False]  # TRL's fused head reads the head's weight and never calls the module

"""Reference log-probs cached on disk: computed once, reused when nothing they depend on changed."""

import pytest
import torch
from datasets import load_dataset

from tests.helpers import REPO
from dpo_recipes.train.config import parse_config
from dpo_recipes.models.loading import load_model, load_tokenizer
from dpo_recipes.train.trainer import PreferenceTrainer


class CountingTrainer(PreferenceTrainer):
    """Counts reference forward passes (the thing the cache must avoid)."""

    reference_forwards = 0

    def compute_ref_log_probs(self, model, inputs):
        CountingTrainer.reference_forwards += 1
        return super().compute_ref_log_probs(model, inputs)


def build(tiny_llama, tmp_path, *extra):
    args = ["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--model_name_or_path", str(tiny_llama),
            "--precompute_ref_log_probs", "true", "--ref_logps_cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(tmp_path / "out"), "--max_length", "64", *extra]
    _, train, model_args = parse_config(args)
    tokenizer = load_tokenizer(str(tiny_llama), model_args, False, None)
    model, peft = load_model(str(tiny_llama), model_args, False)
    data = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"))["train"].select(range(40))
    held_out = load_dataset("json", data_files=str(REPO / "data/demo/test.jsonl"))["train"].select(range(20))
    CountingTrainer.reference_forwards = 0
    trainer = CountingTrainer(model=model, args=train, train_dataset=data, eval_dataset=held_out,
                              processing_class=tokenizer, peft_config=peft)
    return trainer, CountingTrainer.reference_forwards


def test_second_run_does_no_reference_forward(tiny_llama, tmp_path):
    first, forwards = build(tiny_llama, tmp_path)
    assert forwards > 0 and first.ref_cache_hits == []
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # train and eval
    second, forwards = build(tiny_llama, tmp_path)
    assert forwards == 0 and second.ref_cache_hits == ["train", "eval"]
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    assert second.eval_dataset["ref_rejected_logps"] == first.eval_dataset["ref_rejected_logps"]


def test_cached_values_are_the_reference_log_probs(tiny_llama, tmp_path):
    build(tiny_llama, tmp_path)
    trainer, _ = build(tiny_llama, tmp_path)
    rows = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.data_collator(rows)
    batch.pop("row_id", None)
    with torch.no_grad():
        chosen, rejected = PreferenceTrainer.compute_ref_log_probs(trainer, trainer.model, batch)
    torch.testing.assert_close(chosen, torch.tensor([r["ref_chosen_logps"] for r in rows]), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(rejected, torch.tensor([r["ref_rejected_logps"] for r in rows]), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("change, hit", [
    (("--max_length", "48"), False),  # truncation changes the log-probs (TRL's own cache misses this)
    (("--truncation_mode", "keep_end"), False),
    (("--lora_r", "4", "--seed", "7"), True),  # the reference is the base model: the adapter does not matter
])
def test_key_follows_what_the_values_depend_on(tiny_llama, tmp_path, change, hit):
    build(tiny_llama, tmp_path)
    trainer, forwards = build(tiny_llama, tmp_path, *change)
    assert (forwards == 0) is hit
    assert (trainer.ref_cache_hits == ["train", "eval"]) is hit


@pytest.mark.parametrize("layout", [("--padding_free", "true"), ("--padding_free", "true", "--prefix_sharing", "true")])
def test_key_records_the_batch_layout(tiny_llama, tmp_path, layout):
    """TRL precomputes while the trainer hides padding_free from it: the key must still see the real layout."""
    build(tiny_llama, tmp_path)
    trainer, forwards = build(tiny_llama, tmp_path, *layout)
    assert forwards > 0 and trainer.ref_cache_hits == []
    again, forwards = build(tiny_llama, tmp_path, *layout)
    assert forwards == 0 and again.ref_cache_hits == ["train", "eval"]


def test_shared_prompt_precompute_gives_the_padded_values(tiny_llama, tmp_path):
    padded, _ = build(tiny_llama, tmp_path)
    shared, _ = build(tiny_llama, tmp_path, "--padding_free", "true", "--prefix_sharing", "true")
    for split in ("train_dataset", "eval_dataset"):
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            torch.testing.assert_close(torch.tensor(getattr(shared, split)[column]),
                                       torch.tensor(getattr(padded, split)[column]), rtol=1e-6, atol=1e-4)

"""The real-model recipe (recipes/smollm2-135m) end to end, reduced: SmolLM2-135M-Instruct from the project cache,
two steps on four HH pairs, then the evaluation report."""

import gzip
import json
import math

import pytest

from tests.helpers import REPO, run

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."  # the reference's greedy reply (dequantised Q4_1 weights)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    data = root / "data"
    data.mkdir()
    with gzip.open(REPO / "data/hh-rlhf/harmless-base-test.jsonl.gz", "rt") as f:
        (data / "train.jsonl").write_text("".join(line for _, line in zip(range(4), f)))
    held_out = {"chosen": f"\n\nHuman: {QUESTION}\n\nAssistant: {ANSWER}",  # the HH transcript format
                "rejected": f"\n\nHuman: {QUESTION}\n\nAssistant: I would rather not say."}
    (data / "test.jsonl").write_text(json.dumps(held_out) + "\n")
    out = root / "run"
    args = ["--dataset_name", str(data), "--dataset_train_split", "train", "--dataset_test_split", "test",
            "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--eval_report_pairs", "1", "--eval_report_prompts", "1",
            "--eval_report_samples", "1", "--eval_report_max_new_tokens", "12", "--eval_report_examples", "1"]
    run([str(REPO / ".venv/bin/python"), "recipes/smollm2-135m/train.py", "--config",
         "recipes/smollm2-135m/config.yaml", *args], timeout=900)
    return out


def test_first_loss_is_ln2(real_run):
    history = json.loads((real_run / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # Fresh adapter (B = 0): the policy is the reference, h = 0 and the loss is -log sigmoid(0).
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)


def test_report_written_with_the_reference_answer(real_run):
    report = json.loads((real_run / "eval_report.json").read_text())
    assert (real_run / "eval_report.md").is_file() and (real_run / "README.md").is_file()
    assert report["model_kind"] == "lora" and report["pairs"]["pairs"] == 1
    (example,) = report["generations"]
    assert example["prompt"].endswith(QUESTION)
    assert example["reference"].startswith(ANSWER)
    card = (real_run / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Q4_1" in card


def test_recipe_held_out_split_is_seeded_and_at_least_300_pairs():
    from dpo_recipes.train.config import parse_config
    from dpo_recipes.data.preparation import load_preference_data
    from dpo_recipes.models.loading import load_tokenizer, resolve_model_path

    script, training, model_args = parse_config(["--config", str(REPO / "recipes/smollm2-135m/config.yaml")])
    tokenizer = load_tokenizer(resolve_model_path(model_args, None), model_args, False, None)
    load = lambda seed: load_preference_data(script, seed=seed, tokenizer=tokenizer,  # noqa: E731
                                             max_length=training.max_length)
    first, again, other = load(training.seed), load(training.seed), load(training.seed + 1)
    assert len(first.eval) >= 300 and len(first.train) + len(first.eval) == 2273  # the audit's kept pairs
    assert first.eval["chosen"] == again.eval["chosen"] and first.eval["chosen"] != other.eval["chosen"]
    pairs = lambda ds: {json.dumps([c, r]) for c, r in zip(ds["chosen"], ds["rejected"])}  # noqa: E731
    assert not pairs(first.eval) & pairs(first.train)

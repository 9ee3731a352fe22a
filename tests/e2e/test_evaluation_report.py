"""The evaluation report (dpo_recipes/report/evaluation.py), the model card, TensorBoard logging and the opt-in hub push,
on real runs of the demo recipe (tiny Llama, real tokenizer, small data) and a tiny reward model as the judge."""

import dataclasses
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, run
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.data.tokenization import tokenize_pair
from dpo_recipes.report.evaluation import ReportSettings, pair_logps, pair_metrics
from dpo_recipes.report.generation import kl_estimates
from dpo_recipes.train.config import read_run_config
from dpo_recipes.report.statistics import wilson_interval

SECRET = "hf_evaluationTestSecret0123456789"
ENV = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest on a shared CPU


def small_data(tmp: Path) -> Path:
    """32 training and 16 held-out pairs of the bundled demo data."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", 32), ("test", 16)):
        lines = (REPO / f"data/demo/{name}.jsonl").read_text().splitlines()[:rows]
        (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp


def train(out: Path, data: Path, *extra: str):
    args = ["--config", "recipes/demo-cpu/config.yaml", "--dataset_name", str(data), "--output_dir", str(out),
            "--max_steps", "4", "--learning_rate", "0.02", "--warmup_steps", "0", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--logging_steps", "1", "--eval_strategy", "steps",
            "--eval_steps", "2", "--save_strategy", "no", "--eval_report_pairs", "16", "--eval_report_prompts", "3",
            "--eval_report_samples", "2", "--eval_report_max_new_tokens", "8", "--eval_report_examples", "2", *extra]
    return run([sys.executable, "recipes/demo-cpu/train.py", *args], env={**ENV, "HF_TOKEN": SECRET})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    out = root / "run"
    # padding-free: the project's loss path, whose held-out pass the report reuses (the full fine-tune below takes
    # TRL's path, and its report scores the pairs itself)
    proc = train(out, small_data(root / "data"), "--hub_token", SECRET, "--padding_free", "true")
    return out, proc


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_llama):
    """A tiny one-output reward model of the tiny Llama's architecture, with its tokenizer (random weights)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    config = AutoConfig.from_pretrained(tiny_llama, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def rescored_pairs(run_dir: Path) -> dict:
    """The held-out pairs scored again by the report's own scorer (what `make eval` runs) from the saved model and
    its reference: independent of the trainer's pass, which the end-of-run report reuses."""
    script_args, training, _ = read_run_config(run_dir)
    models, _ = load(run_dir)
    data = load_preference_data(script_args, seed=training.seed, tokenizer=models.tokenizer,
                                max_length=training.max_length, truncation_mode=training.truncation_mode)
    settings = ReportSettings.from_args(script_args, training)
    tokenized = [tokenize_pair(models.tokenizer, data.eval[i]) for i in range(len(data.eval))]
    policy = pair_logps(models.policy, tokenized, settings, models.device)
    with models.reference_model() as reference:
        reference_logps = pair_logps(reference, tokenized, settings, models.device)
    return pair_metrics(policy, reference_logps, settings.beta)


def load(run_dir: Path):
    from dpo_recipes.report.evaluation import load_run_models
    from dpo_recipes.train.config import read_run_config
    from dpo_recipes.models.loading import resolve_model_path

    script_args, training, model_args = read_run_config(run_dir)
    return load_run_models(run_dir, resolve_model_path(model_args, script_args.tiny_model), model_args), training


@pytest.mark.slow
def test_the_run_writes_the_report(lora_run):
    out, proc = lora_run
    report = json.loads((out / "eval_report.json").read_text())
    md = (out / "eval_report.md").read_text()
    for heading in ("## Held-out preference pairs (16 of 16 rows)", "## KL(policy ‖ reference) on 3 held-out prompts",
                    "## Generations (greedy, at most 8 new tokens"):
        assert heading in md
    assert report["written_by"] == "the training run" and report["global_step"] == 4
    assert report["model_kind"] == "lora" and len(report["generations"]) == 3
    assert md.count("### Prompt") == 2  # eval_report_examples
    assert report["kl"]["completions"] == 6 and "win_rate" not in report  # 3 prompts x 2 samples; no judge given
    assert report["kl"]["k3"]["per_completion"]["mean"] > 0  # the policy has moved away from the reference
    numbers = [report["pairs"]["reward_margin"]["mean"], report["kl"]["k1"]["per_completion"]["mean"]]
    assert all(math.isfinite(x) for x in numbers)
    assert "evaluation report ->" in proc.stdout


@pytest.mark.slow
def test_pair_metrics_equal_the_trainers_evaluation(lora_run):
    """The end-of-run report takes its pair numbers from the trainer's final evaluate() (one pass); the report's own
    scorer, run again on the saved adapter (as `make eval` does), gets the same numbers: same tokenization,
    truncation and reference as training. eval_metrics.json averages two equal batches of 8."""
    out, _ = lora_run
    written = json.loads((out / "eval_report.json").read_text())["pairs"]
    assert written["scored_by"] == "the training run's held-out pass"
    pairs = rescored_pairs(out)
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert written["pairs"] == pairs["pairs"] == 16
    assert written["reward_margin"]["mean"] == pytest.approx(pairs["reward_margin"]["mean"], abs=1e-4)
    assert pairs["reward_accuracy"]["mean"] == pytest.approx(metrics["eval_rewards/accuracies"], abs=1e-6)
    for ours, theirs in (("reward_margin", "margins"), ("reward_chosen", "chosen"), ("reward_rejected", "rejected")):
        assert pairs[ours]["mean"] == pytest.approx(metrics[f"eval_rewards/{theirs}"], abs=1e-4)
    assert pairs["logps"]["policy"]["chosen"]["mean"] == pytest.approx(metrics["eval_logps/chosen"], abs=1e-3)
    assert pairs["logps"]["policy"]["rejected"]["mean"] == pytest.approx(metrics["eval_logps/rejected"], abs=1e-3)


@pytest.mark.slow
def test_peft_reference_is_the_base_model(lora_run):
    """For LoRA the reference is the base model with the adapter disabled: the same logits as the base loaded alone,
    and different from the policy's."""
    from transformers import AutoModelForCausalLM

    models, _ = load(lora_run[0])
    base_path = json.loads((lora_run[0] / "adapter_config.json").read_text())["base_model_name_or_path"]
    ids = models.tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_path)(ids).logits
        with models.reference_model() as reference:
            ref = reference(ids).logits
        policy = models.policy(ids).logits
    assert torch.equal(ref, base)
    assert (policy - base).abs().max() > 1e-3


@pytest.mark.slow
def test_kl_estimate_matches_the_exact_kl(lora_run):
    """With one new token the KL between policy and reference is exact from their next-token distributions. The k1
    and k3 Monte-Carlo estimates from 400 sampled tokens per prompt agree with it within 4 standard errors, although
    the model's generation_config asks for top-k / top-p sampling (which must not leak into the estimate)."""
    from dpo_recipes.report.generation import completion_token_logps, generate
    from dpo_recipes.data.tokenization import generation_prompt_ids

    models, _ = load(lora_run[0])
    models.policy.generation_config.top_k = 3
    models.policy.generation_config.top_p = 0.5
    tok = models.tokenizer
    prompts = [[{"role": "user", "content": text}] for text in ("What is the capital of Peru?", "Name a prime.")]
    for i, prompt in enumerate(prompts):
        ids = generation_prompt_ids(tok, {"prompt": prompt})
        samples = generate(models.policy, tok, [ids], max_new_tokens=1, sample=True, n=400, seed=i, batch_size=400)
        policy_logps = completion_token_logps(models.policy, [ids], samples, tok.pad_token_id)
        with models.reference_model() as reference:
            reference_logps = completion_token_logps(reference, [ids], samples, tok.pad_token_id)
            ref_next = torch.log_softmax(reference(torch.tensor([ids])).logits[0, -1].double(), -1)
        pol_next = torch.log_softmax(models.policy(torch.tensor([ids])).logits[0, -1].double(), -1)
        exact = (pol_next.exp() * (pol_next - ref_next)).sum().item()
        estimate = kl_estimates(policy_logps, reference_logps)
        assert len({s[0] for s in samples[0]}) > 3  # real sampling from the whole distribution
        for name in ("k1", "k3"):
            stat = estimate[name]["per_completion"]
            assert abs(stat["mean"] - exact) < 4 * stat["se"] + 1e-9, (name, stat, exact)
        assert estimate["k3"]["per_completion"]["se"] < estimate["k1"]["per_completion"]["se"]


@pytest.mark.slow
def test_make_eval_with_a_judge_on_the_finished_run(lora_run, reward_model, tmp_path):
    """`make eval` alone on a finished run folder, with a reward model as the judge: the win-rate of the policy's
    greedy replies over the reference's, from scores that the reward model gives when run here directly."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = tmp_path / "run"
    shutil.copytree(lora_run[0], run_dir)
    args = f"--judge_model {reward_model} --eval_report_prompts 4 --eval_report_samples 2 --eval_report_max_new_tokens 8"
    proc = run(["make", "--no-print-directory", "eval", f"RUN={run_dir}", f"ARGS={args}"], env=ENV)
    assert "replacing the report written" in proc.stderr  # the run's own report is replaced, and it says so
    report = json.loads((run_dir / "eval_report.json").read_text())
    assert report["written_by"] == "make eval"
    w = report["win_rate"]
    assert w["n"] == 4 and len(report["generations"]) == 4
    judge = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tok = AutoTokenizer.from_pretrained(reward_model)
    rows = [json.loads(line) for line in (REPO / "data/demo/test.jsonl").read_text().splitlines()]
    prompts = []
    for row in rows:  # the first 4 distinct held-out prompts, in order
        if row["prompt"] not in prompts:
            prompts.append(row["prompt"])
    wins = ties = 0
    for prompt, gen, scores in zip(prompts, report["generations"], w["scores"]):
        assert gen["prompt"] == "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
        for side in ("policy", "reference"):
            ids = tok.apply_chat_template(prompt + [{"role": "assistant", "content": gen[side]}],
                                          return_tensors="pt", return_dict=True)["input_ids"]
            with torch.no_grad():
                score = judge(input_ids=ids).logits[0, 0].item()
            assert score == pytest.approx(scores[side], abs=1e-5)
        same = gen["policy"] == gen["reference"] or scores["policy"] == scores["reference"]
        ties += same
        wins += (not same) and scores["policy"] > scores["reference"]
    assert (w["wins"], w["ties"]) == (wins, ties)
    assert w["win_rate"] == pytest.approx((wins + ties / 2) / 4)
    assert w["ci95"] == pytest.approx(list(wilson_interval(wins + ties / 2, 4)))
    md = (run_dir / "eval_report.md").read_text()
    assert "## Win-rate against the reference (4 held-out prompts)" in md and "Wilson" in md
    assert "win-rate against the reference" in (run_dir / "README.md").read_text()  # the card is rewritten too


@pytest.mark.slow
def test_bad_eval_inputs_stop_with_one_line(lora_run, tiny_llama, tmp_path):
    cases = [
        (["make", "--no-print-directory", "eval"], "set RUN=<run folder>"),
        ([sys.executable, "-m", "dpo_recipes.commands.evaluate", str(tmp_path)], "not a run folder of this project"),
        ([sys.executable, "-m", "dpo_recipes.commands.evaluate", str(lora_run[0]), "--judge_model", str(tiny_llama)],
         "judge_model:"),
        ([sys.executable, "-m", "dpo_recipes.commands.evaluate", str(lora_run[0]), "--eval_report_prompts", "0"],
         "eval_report_prompts must be an integer >= 1"),
    ]
    for cmd, message in cases:
        proc = run(cmd, env=ENV, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (cmd, proc.stderr[-2000:])
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, (cmd, proc.stderr)


@pytest.mark.slow
def test_tensorboard_event_files_are_written(lora_run):
    """The demo recipe logs to TensorBoard (report_to: tensorboard): event files under output_dir/runs/ with the
    training loss of every logged step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((lora_run[0] / "runs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "eval/rewards/accuracies" in acc.Tags()["scalars"]


@pytest.mark.slow
def test_model_card_describes_the_run_without_secrets(lora_run):
    out, _ = lora_run
    card = (out / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "<!-- written by dpo-recipes: model_card.py -->" in card
    assert f"| beta | {manifest['config']['training']['beta']:g} |" in card
    assert f"| learning_rate | {manifest['config']['training']['learning_rate']:g} |" in card
    assert f"dpo-recipes commit `{manifest['git_commit']}`" in card
    assert f"trl {manifest['versions']['trl']}" in card
    assert "![loss](plots/loss.png)" in card and "KL(policy ‖ reference)" in card
    for path in out.rglob("*"):  # the token given on the command line and in HF_TOKEN is nowhere in the outputs
        if path.is_file() and path.suffix in (".md", ".json", ".txt", ".yaml", ".jinja"):
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET.encode() not in (out / "training_args.bin").read_bytes()


@pytest.mark.slow
def test_hub_push_is_off_by_default_and_wired(lora_run, tmp_path):
    """Nothing is pushed unless asked (the default and every recipe say push_to_hub false); when asked, the run's
    last step calls the Hub with the repository from hub_model_id or the folder name. Offline here, so the call
    stops at huggingface_hub's offline guard, reported in one line naming the repository."""
    import yaml

    from dpo_recipes.train.config import PreferenceConfig
    from dpo_recipes.errors import UserError
    from dpo_recipes.train.config import read_run_config
    from dpo_recipes.report.end_of_run import finish_run_outputs
    from dpo_recipes.report.model_card import hub_repo_id

    assert PreferenceConfig.__dataclass_fields__["push_to_hub"].default is False
    for config in (REPO / "recipes").glob("*/config.yaml"):
        assert not (yaml.safe_load(config.read_text()) or {}).get("push_to_hub", False), config
    out, proc = lora_run
    assert "pushed" not in proc.stdout
    assert hub_repo_id({"hub_model_id": None}, out) == out.name
    assert hub_repo_id({"hub_model_id": "me/dpo-run"}, out) == "me/dpo-run"

    run_dir = tmp_path / "copy"
    shutil.copytree(out, run_dir)
    script_args, training, model_args = read_run_config(run_dir)
    script_args.eval_report = False
    finish_run_outputs(run_dir, script_args, training, model_args, None)  # push_to_hub false: no hub call
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    asked = dataclasses.replace(training, push_to_hub=True, hub_model_id="me/dpo-run")
    with pytest.raises(UserError, match=r"repository 'me/dpo-run' failed: .*offline mode is enabled"):
        finish_run_outputs(run_dir, script_args, asked, model_args, None)


@pytest.mark.slow
def test_full_fine_tune_report_uses_the_initial_model_as_reference(tmp_path):
    """A full fine-tune's report compares with the initial model (a second copy), and still matches the trainer."""
    out = tmp_path / "full"
    train(out, small_data(tmp_path / "data"), "--use_peft", "false", "--learning_rate", "1e-3",
          "--eval_report_prompts", "1", "--eval_report_examples", "1", "--report_to", "none")
    report = json.loads((out / "eval_report.json").read_text())
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert report["model_kind"] == "full" and (out / "model.safetensors").is_file()
    assert report["pairs"]["scored_by"] == "the report (the saved model and its reference)"  # TRL's loss path
    pairs = rescored_pairs(out)  # the report's own scorer: the saved model against the initial one, loaded again
    assert pairs["reward_margin"]["mean"] == pytest.approx(metrics["eval_rewards/margins"], abs=1e-4)
    assert pairs["reward_accuracy"]["mean"] == pytest.approx(metrics["eval_rewards/accuracies"], abs=1e-6)
    assert report["pairs"]["reward_margin"]["mean"] == pytest.approx(metrics["eval_rewards/margins"], abs=1e-4)
    assert "the initial model" in (out / "eval_report.md").read_text()

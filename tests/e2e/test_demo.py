"""The tiny demo recipe (recipes/demo-cpu) through the real launcher (`make train RECIPE=demo-cpu`), checked on its
outputs and values. The default recipe, demo-smollm2, trains the real model: tests/e2e/test_smollm2.py."""

import json
import math

import pytest
import torch

from dpo_recipes.threads import threads_per_process
from tests.helpers import REPO, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    args = f"--max_steps 6 --logging_steps 1 --eval_steps 3 --save_steps 3 --output_dir {out}"
    proc = run(["make", "--no-print-directory", "train", "RECIPE=demo-cpu", f"ARGS={args}"])
    (out / "make_train.log").write_text(proc.stdout + proc.stderr)
    return out


def test_log_has_no_warning_the_user_cannot_act_on(demo_run):
    """No FutureWarning from a renamed key (gradient_checkpointing), no launcher or DeepSpeed notice, no dataset-card
    notice: the demo's log holds its own output only."""
    log = (demo_run / "make_train.log").read_text()
    for noise in ("Warning", "WARNING", "deprecated", "were not passed to `accelerate launch`", "Repo card metadata"):
        assert noise not in log, (noise, [line for line in log.splitlines() if noise in line][:3])


def test_outputs_written(demo_run):
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "trainer_state.json",
                 "eval_metrics.json", "manifest.json", "plots/loss.png", "plots/reward_margins.png",
                 "plots/reward_accuracy.png"):
        assert (demo_run / name).is_file(), name
    assert not list(demo_run.glob("*.bin")) or all(p.name == "training_args.bin" for p in demo_run.glob("*.bin"))


def test_first_loss_is_ln2_and_all_values_finite(demo_run):
    history = json.loads((demo_run / "trainer_state.json").read_text())["log_history"]
    train_logs = [e for e in history if "loss" in e]
    assert train_logs[0]["step"] == 1
    # A fresh LoRA adapter (B = 0) leaves the policy equal to the reference: h = 0 and -log sigmoid(0) = ln 2.
    assert train_logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert [e["step"] for e in train_logs] == list(range(1, 7))
    for entry in history:
        for key, value in entry.items():
            if isinstance(value, float):
                assert math.isfinite(value), (key, entry)


def test_manifest_records_the_run(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert manifest["seed"] == 42
    assert manifest["config"]["training"]["beta"] == 0.1
    assert manifest["versions"]["trl"] == "1.16.0"
    assert manifest["datasets"]["train"]["rows"] == 2000 and manifest["datasets"]["train"]["fingerprint"]
    assert manifest["git_commit"]
    # The launcher gave the one training process every core, or OMP_NUM_THREADS when this test runs under it.
    assert manifest["threads"]["torch_threads"] == threads_per_process(1)


def test_saved_adapter_reloads_and_changes_logprobs(demo_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = json.loads((demo_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(demo_run)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of Peru?"}, {"role": "assistant", "content": "Sure! Lima."}],
        return_tensors="pt", return_dict=True,
    )["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(base_path)
    with torch.no_grad():
        before = torch.log_softmax(base(ids).logits, -1)
        tuned = PeftModel.from_pretrained(base, demo_run)
        after = torch.log_softmax(tuned(ids).logits, -1)
    assert (after - before).abs().max().item() > 1e-4

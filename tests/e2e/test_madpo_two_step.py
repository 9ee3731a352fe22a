"""MADPO's margins and the paper's two-step method on a CPU: train a tiny reward model with TRL's RewardTrainer
(`python -m dpo_recipes.commands.reward_model`), score every pair with it, train MADPO through the recipe; and the recipe's one
line when there are no margins. The other margin sources (score columns, a margin column) and their errors:
tests/test_margins.py."""

import json
import math
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.helpers import REPO, run
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_splits
from dpo_recipes.train.margins import add_reward_margins
from dpo_recipes.train.trainer import MARGIN_COLUMN

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")
FAST = ["--activation_checkpointing", "false", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16", "--warmup_steps", "0"]


@pytest.fixture(scope="module")
def mini_demo(tmp_path_factory):
    """48 training and 16 held-out pairs of the bundled demo data (conversational)."""
    folder = tmp_path_factory.mktemp("mini-demo")
    for split, rows in (("train", 48), ("test", 16)):
        lines = (REPO / f"data/demo/{split}.jsonl").read_text().splitlines()[:rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def reward_model(mini_demo, tmp_path_factory):
    """Step one: a tiny reward model (LoRA, merged on save) trained for 4 steps through the command line."""
    out = tmp_path_factory.mktemp("reward-model") / "rm"
    run([sys.executable, "-m", "dpo_recipes.commands.reward_model", "--config", DEMO, "--dataset_name", str(mini_demo),
         "--output_dir", str(out), "--max_steps", "4", "--learning_rate", "1e-3", *FAST], timeout=600)
    return out


def madpo_args(*extra):
    return parse_config(["--config", DEMO, "--loss_type", "madpo", *extra])


@pytest.mark.slow
def test_reward_model_step_trains_a_standalone_model(reward_model):
    config = json.loads((reward_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    assert (reward_model / "model.safetensors").is_file() and not (reward_model / "adapter_config.json").exists()
    history = json.loads((reward_model / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]  # it learns: the chosen replies are stylistically distinct
    held_out = json.loads((reward_model / "eval_metrics.json").read_text())
    assert held_out["eval_accuracy"] > 0.5


@pytest.mark.slow
def test_margins_are_the_reward_models_score_differences(reward_model, mini_demo):
    script_args, training_args, _ = madpo_args("--dataset_name", str(mini_demo),
                                                "--reward_model_name_or_path", str(reward_model),
                                                "--per_device_eval_batch_size", "5")  # batches of mixed lengths
    train, held_out = load_preference_splits(script_args, seed=0)
    train, held_out = add_reward_margins(script_args, training_args, train, held_out)
    assert len(train) == 48 and len(held_out) == 16

    # Each side scored on its own, unpadded, through the reward model's chat template
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)

    def score(messages):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    for row in list(held_out.select(range(6))) + list(train.select(range(3))):
        expected = score(row["prompt"] + row["chosen"]) - score(row["prompt"] + row["rejected"])
        assert row[MARGIN_COLUMN] == pytest.approx(expected, abs=1e-5)
    margins = list(held_out[MARGIN_COLUMN])
    assert max(margins) - min(margins) > 1e-3  # pairs get different margins

    # TRL's RewardTrainer logged the mean chosen-minus-rejected reward on the same held-out pairs with the in-memory
    # LoRA model: the merged model on disk, scored by margins.py, gives the same number.
    logged = json.loads((reward_model / "eval_metrics.json").read_text())["eval_margin"]
    assert sum(margins) / len(margins) == pytest.approx(logged, abs=1e-5)


@pytest.mark.slow
def test_madpo_trains_with_the_reward_models_margins(reward_model, mini_demo, tmp_path):
    out = tmp_path / "madpo"
    run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--dataset_name", str(mini_demo),
         "--loss_type", "madpo", "--reward_model_name_or_path", str(reward_model), "--max_steps", "2",
         "--output_dir", str(out), *FAST], timeout=600)
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in logs] == [1, 2]
    assert all(math.isfinite(e["loss"]) and "madpo/weight_mean" in e for e in logs)
    # Step 1 runs with policy == reference (h = 0): loss = mean w(m) * ln 2 over the batch, and w is not all 1
    first = logs[0]
    assert first["loss"] == pytest.approx(first["madpo/weight_mean"] * math.log(2), rel=1e-6)
    assert abs(first["madpo/weight_mean"] - 1.0) > 1e-4
    # Then the adapter moves: the implicit rewards leave 0 and the LoRA B matrices are no longer zero
    assert logs[-1]["rewards/margins"] != 0.0
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert "eval_madpo/weight_mean" in json.loads((out / "eval_metrics.json").read_text())


SCORE_SCRIPT = """
import json, sys
from accelerate import PartialState
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_splits
from dpo_recipes.train.margins import add_reward_margins
state = PartialState()
s, t, _ = parse_config(["--config", sys.argv[1], "--loss_type", "madpo", "--dataset_name", sys.argv[2],
                        "--reward_model_name_or_path", sys.argv[3], "--per_device_eval_batch_size", "4"])
train, held_out = add_reward_margins(s, t, *load_preference_splits(s, seed=0))
with open(f"{sys.argv[4]}.{state.process_index}.json", "w") as f:
    json.dump({"world": state.num_processes, "margins": [*train["reward_margin"], *held_out["reward_margin"]]}, f)
"""


@pytest.mark.slow
def test_two_processes_share_the_scoring_and_agree(reward_model, mini_demo, tmp_path, venv_bin):
    script = tmp_path / "score.py"
    script.write_text(SCORE_SCRIPT)
    args = [DEMO, str(mini_demo), str(reward_model)]
    with socket.socket() as free:  # a port no other test is using
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    run([str(venv_bin / "torchrun"), "--nproc_per_node", "2", "--master_port", port, str(script), *args,
         str(tmp_path / "two")], env={"PYTHONPATH": str(REPO)})
    rank0, rank1 = (json.loads((tmp_path / f"two.{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["world"] == 2
    assert rank0["margins"] == rank1["margins"]  # every process trains on the same numbers
    script_args, training_args, _ = madpo_args("--dataset_name", str(mini_demo),
                                                "--reward_model_name_or_path", str(reward_model))
    single = add_reward_margins(script_args, training_args, *load_preference_splits(script_args, seed=0))
    expected = [*single[0][MARGIN_COLUMN], *single[1][MARGIN_COLUMN]]
    assert len(expected) == 64
    assert rank0["margins"] == pytest.approx(expected, abs=1e-5)  # each row's margin lands in its own place


@pytest.mark.slow
def test_recipe_without_margins_exits_2_with_one_line(tmp_path):
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--loss_type", "madpo",
                "--output_dir", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data/demo (train): loss_type madpo needs reward margins"), last
    assert "Traceback" not in proc.stderr

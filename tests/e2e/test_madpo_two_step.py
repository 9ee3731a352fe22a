"""MADPO's margins and the paper's two-step method on a CPU: train a tiny reward model with TRL's RewardTrainer
(`python -m dpo_recipes.reward_model`), score every pair with it, train MADPO through the recipe. Also the other
margin sources (score columns, a margin column) and the errors when there is none."""

import json
import math
import socket
import sys

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.helpers import REPO, run
from dpo_recipes.config import parse_config
from dpo_recipes.data import load_preference_splits
from dpo_recipes.errors import UserError
from dpo_recipes.margins import add_reward_margins
from dpo_recipes.trainer import MARGIN_COLUMN

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
    run([sys.executable, "-m", "dpo_recipes.reward_model", "--config", DEMO, "--dataset_name", str(mini_demo),
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
from dpo_recipes.config import parse_config
from dpo_recipes.data import load_preference_splits
from dpo_recipes.margins import add_reward_margins
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


# --- the other margin sources, and the errors -------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored_rows(n, chosen_key="score_chosen", rejected_key="score_rejected"):
    """UltraFeedback-binarized style: a string prompt, whole conversations, one score per side."""
    rows = []
    for i in range(n):
        question = f"What is {i} plus {i}?"
        rows.append({
            "prompt": question,
            "chosen": [{"role": "user", "content": question}, {"role": "assistant", "content": f"It is {2 * i}."}],
            "rejected": [{"role": "user", "content": question}, {"role": "assistant", "content": "No idea."}],
            chosen_key: 7.0 + i,
            rejected_key: 4.5 - i / 2,
        })
    return rows


def test_margins_from_ultrafeedback_score_columns(tmp_path):
    data = write_jsonl(tmp_path / "scored.jsonl", scored_rows(20))
    script_args, training_args, _ = madpo_args("--dataset_name", str(data), "--eval_fraction", "0.25",
                                               "--score_margin_scale", "0.5")
    train, held_out = load_preference_splits(script_args, seed=0)
    train, held_out = add_reward_margins(script_args, training_args, train, held_out)
    for ds in (train, held_out):
        assert list(ds[MARGIN_COLUMN]) == [0.5 * (c - r) for c, r in zip(ds["score_chosen"], ds["score_rejected"])]
    assert sorted([*train[MARGIN_COLUMN], *held_out[MARGIN_COLUMN]]) == [0.5 * (2.5 + 1.5 * i) for i in range(20)]


def test_score_columns_need_an_explicit_scale(tmp_path):
    """Score differences are not Bradley-Terry logit margins (the paper's): without score_margin_scale, one line."""
    data = write_jsonl(tmp_path / "scored.jsonl", scored_rows(8))
    script_args, training_args, _ = madpo_args("--dataset_name", str(data))
    train, held_out = load_preference_splits(script_args, seed=0)
    with pytest.raises(UserError, match=r"\(train\): score columns 'score_chosen' and 'score_rejected' are not "
                                        r"reward-model margins .* set score_margin_scale"):
        add_reward_margins(script_args, training_args, train, held_out)
    for bad, message in ((["--score_margin_scale", "0"], "score_margin_scale must be > 0"),
                         (["--score_margin_scale", "1", "--reward_model_name_or_path", "rm"],
                          "score_margin_scale is only used by loss_type madpo with score columns")):
        with pytest.raises(UserError, match=message):
            madpo_args("--dataset_name", str(data), *bad)
    with pytest.raises(UserError, match="score_margin_scale is only used"):
        parse_config(["--config", DEMO, "--score_margin_scale", "1"])


def test_score_column_names_are_configurable(tmp_path):
    data = write_jsonl(tmp_path / "scored.jsonl", scored_rows(8, "rating_good", "rating_bad"))
    script_args, training_args, _ = madpo_args("--dataset_name", str(data), "--score_chosen_column", "rating_good",
                                               "--score_rejected_column", "rating_bad", "--score_margin_scale", "1")
    train, held_out = load_preference_splits(script_args, seed=0)
    train, _ = add_reward_margins(script_args, training_args, train, held_out)
    assert list(train[MARGIN_COLUMN]) == [c - r for c, r in zip(train["rating_good"], train["rating_bad"])]


def pairs(n, **columns):
    rows = {"prompt": ["q"] * n, "chosen": ["good"] * n, "rejected": ["bad"] * n}
    return Dataset.from_dict({**rows, **columns})


def test_an_existing_margin_column_is_used_as_given():
    script_args, training_args, _ = madpo_args()
    given = pairs(3, reward_margin=[0.5, -1.0, 2.0], score_chosen=[1.0, 1.0, 1.0], score_rejected=[0.0, 0.0, 0.0])
    train, _ = add_reward_margins(script_args, training_args, given, None)
    assert list(train[MARGIN_COLUMN]) == [0.5, -1.0, 2.0]


def test_bad_scores_name_the_row():
    script_args, training_args, _ = madpo_args("--score_margin_scale", "1")
    bad = pairs(3, score_chosen=[1.0, None, 2.0], score_rejected=[0.0, 0.0, 0.0])
    with pytest.raises(UserError, match=r"\(train\): row 1: 'score_chosen' must be a finite number, got None"):
        add_reward_margins(script_args, training_args, bad, None)


def test_no_margin_source_is_one_clear_error():
    script_args, training_args, _ = madpo_args()
    with pytest.raises(UserError, match=r"data/demo \(train\): loss_type madpo needs reward margins: set "
                                        r"reward_model_name_or_path"):
        add_reward_margins(script_args, training_args, pairs(2), pairs(2))


def test_reward_model_and_margin_column_together_refuse_to_overwrite(tmp_path):
    script_args, training_args, _ = madpo_args("--reward_model_name_or_path", str(tmp_path))
    with pytest.raises(UserError, match=r"already has a 'reward_margin' column and reward_model_name_or_path is set"):
        add_reward_margins(script_args, training_args, pairs(2, reward_margin=[1.0, 2.0]), None)


def test_a_folder_that_is_not_a_reward_model_is_one_clear_error(tmp_path):
    script_args, training_args, _ = madpo_args("--reward_model_name_or_path", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"reward_model_name_or_path: cannot load"):
        add_reward_margins(script_args, training_args, pairs(2), None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss_type", "madpo", "--madpo_c_max", "1.0"], "config: madpo_c_max must be a finite number > 1, got 1.0"),
        (["--loss_type", "madpo", "--madpo_c_min", "1.5"], "config: madpo_c_min must be in (0, 1), got 1.5"),
        (["--loss_type", "madpo", "--madpo_tau", "0"], "config: madpo_tau must be a finite number > 0, got 0.0"),
        (["--reward_model_name_or_path", "rm"], "config: reward_model_name_or_path is only used by loss_type madpo"),
    ],
)
def test_madpo_config_mistakes(args, message):
    with pytest.raises(UserError) as err:
        parse_config(["--config", DEMO, *args])
    assert message in str(err.value)


@pytest.mark.slow
def test_recipe_without_margins_exits_2_with_one_line(tmp_path):
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--loss_type", "madpo",
                "--output_dir", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data/demo (train): loss_type madpo needs reward margins"), last
    assert "Traceback" not in proc.stderr


def test_reward_model_step_refuses_4bit_with_one_line(capsys, tmp_path):
    from dpo_recipes.reward_model import main

    with pytest.raises(SystemExit) as exit_code:
        main(["--config", DEMO, "--load_in_4bit", "true", "--output_dir", str(tmp_path / "rm")])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: config: the reward model step does not support load_in_4bit")
    assert err[0] == "reward model: skipping DPO-only keys beta, loss_type"


def test_shipped_madpo_variants_are_the_papers_two_steps():
    """The shared variants/madpo.yaml with every recipe's own layer scores pairs with a reward model trained on the
    recipe's data (step 1's default folder), never with score columns."""
    import yaml

    shared = yaml.safe_load((REPO / "variants" / "madpo.yaml").read_text())
    assert shared == {"loss_type": "madpo"}
    variants = sorted(REPO.glob("recipes/*/variants/madpo.yaml"))
    assert variants
    for path in variants:
        recipe = path.parent.parent
        variant = {**shared, **yaml.safe_load(path.read_text())}
        output_dir = yaml.safe_load((recipe / "config.yaml").read_text())["output_dir"]
        assert variant == {"loss_type": "madpo", "reward_model_name_or_path": f"{output_dir}-reward-model"}, path
        assert f"-m dpo_recipes.reward_model --config recipes/{recipe.name}/config.yaml" in path.read_text()

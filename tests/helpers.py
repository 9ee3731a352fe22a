"""What the tests share besides fixtures (conftest.py): the repository root, running a command from it, small data
helpers (pairs, files of each type, the one-line error a data file stops with) and a small bf16 trainer. Import as
`from tests.helpers import REPO, run`."""

import gzip
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_recipes.models.precision import fp32_lm_head
from dpo_recipes.train.config import PreferenceConfig, ScriptArguments
from dpo_recipes.train.trainer import PreferenceTrainer
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.errors import UserError

REPO = Path(__file__).resolve().parent.parent
# The per-token metrics TRL logs for DPO next to the reward metrics
TOKEN_METRICS = ("entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy")


def run(cmd, timeout=900, env=None, check=True):
    """Run a command from the repository root; on failure show the tail of its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def demo_subset(folder, train_rows, test_rows):
    """A dataset folder with the first rows of each bundled demo split (the same pairs every time)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("test", test_rows)):
        lines = (REPO / f"data/demo/{name}.jsonl").read_text().splitlines()[:rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def text_pairs(n, tag="p"):
    """n standard (text) pairs with distinct prompts."""
    return [{"prompt": f"{tag} question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def write_rows(path, rows):
    """Write rows in the format the file name says: .jsonl, .json, .parquet or .csv, optionally .gz."""
    suffix = path.name.removesuffix(".gz").rsplit(".", 1)[1]
    frame = pd.DataFrame(rows)
    if suffix == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif suffix == "json":
        data = json.dumps(rows).encode()
    elif suffix == "csv":
        data = frame.to_csv(index=False).encode()
    else:
        frame.to_parquet(path.with_suffix(".tmp"))
        data = path.with_suffix(".tmp").read_bytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


GOOD_PAIR = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


def jsonl(path, *lines):
    """A JSON Lines file of the given rows (dicts) and raw lines (strings)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def error_of(path, **kwargs) -> str:
    """The one-line error that loading the data at path (with these ScriptArguments) stops with."""
    with pytest.raises(UserError) as err:
        load_preference_data(ScriptArguments(dataset_name=str(path), **kwargs), seed=0)
    message = str(err.value)
    assert "\n" not in message
    return message


def bf16_trainer(model_dir, out, steps=1, dtype=torch.bfloat16, **overrides):
    """A PreferenceTrainer on 8 demo pairs: `model_dir`'s weights in `dtype` (head fp32, precision.py), a LoRA
    adapter in fp32, `steps` steps; `overrides`: PreferenceConfig fields."""
    rows = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"), split="train").select(range(8))
    args = PreferenceConfig(output_dir=str(out), loss_type=["sigmoid"], beta=0.1, max_length=128,
                            per_device_train_batch_size=4, max_steps=steps, logging_steps=1, learning_rate=1e-3,
                            use_cpu=True, bf16=False, report_to="none", save_strategy="no", seed=0,
                            padding_free=True, **overrides)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    assert fp32_lm_head(model) == (dtype == torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"],
                      task_type="CAUSAL_LM")
    return PreferenceTrainer(model=model, args=args, train_dataset=rows, peft_config=lora,
                             processing_class=AutoTokenizer.from_pretrained(model_dir))

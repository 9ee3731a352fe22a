"""A non-finite gradient stops training under DeepSpeed too: 2 CPU processes, ZeRO-2 and ZeRO-3 (the
llama3-lora-zero3 recipe's launcher made CPU-only as in `make smoke`; ZeRO-2 swaps in zero2.json).

DeepSpeed steps inside `backward` and frees the gradients before `on_pre_optimizer_step`, so a check of `p.grad` never
fires there. The loss stays finite: a test-only forward hook (in the script this test writes, not in the product)
multiplies the gradient reaching the final norm's output by inf at one chosen step."""

import os
import subprocess

import pytest
import yaml

from tests.helpers import REPO
from dpo_recipes.cli import read_yaml
from dpo_recipes.commands.launchers import cpu_launcher_config
from dpo_recipes.commands.smoke import smoke_overrides, write_smoke_data

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "llama3-lora-zero3"
POISON_STEP = 2

SCRIPT = f"""
import sys
import torch
sys.path.insert(0, {str(REPO)!r})
from dpo_recipes.commands import train as run

load_model, forwards = run.load_model, []


def poison(module, inputs, output):  # one policy forward per optimizer step (no accumulation, no checkpointing)
    if torch.is_grad_enabled() and module.training:
        forwards.append(1)
        if len(forwards) == {POISON_STEP}:
            output.register_hook(lambda grad: grad * float("inf"))


def load_and_poison(*args, **kwargs):
    model, peft_config = load_model(*args, **kwargs)
    model.model.norm.register_forward_hook(poison)
    return model, peft_config


run.load_model = load_and_poison
run.main({str(RECIPE)!r})
"""


@pytest.mark.parametrize("zero_json", ["zero2.json", "zero3.json"])
def test_non_finite_gradient_stops_deepspeed(tmp_path, zero_json):
    from dpo_recipes.models.loading import CACHE_DIR
    from dpo_recipes.models.tiny import build_tiny

    launcher = cpu_launcher_config(read_yaml(RECIPE / "accelerate.yaml"))
    launcher["deepspeed_config"] = {**launcher["deepspeed_config"],
                                    "deepspeed_config_file": f"accelerate_configs/deepspeed/{zero_json}"}
    if zero_json == "zero2.json":
        launcher["deepspeed_config"]["zero3_init_flag"] = False
    (tmp_path / "launcher.yaml").write_text(yaml.safe_dump(launcher))
    (tmp_path / "train.py").write_text(SCRIPT)
    out = tmp_path / "run"
    args = smoke_overrides(read_yaml(RECIPE / "config.yaml"), build_tiny("llama", CACHE_DIR / "tiny-llama"),
                           write_smoke_data(tmp_path), out)
    args += ["--max_steps", "3", "--gradient_accumulation_steps", "1", "--activation_checkpointing", "false",
             "--eval_report", "false"]
    proc = subprocess.run(
        [str(REPO / ".venv/bin/accelerate"), "launch", "--config_file", str(tmp_path / "launcher.yaml"),
         str(tmp_path / "train.py"), "--config", str(RECIPE / "config.yaml"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert f"error: non-finite gradient at step {POISON_STEP}; training stopped" in output, output[-4000:]
    assert "{'loss'" in proc.stdout  # step 1 trained and logged: the run was fine until the poisoned step
    assert not (out / "run_complete.json").exists()

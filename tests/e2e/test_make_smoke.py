"""Every recipe run on the real stack (`make smoke`) through its own launcher on CPU, its result reloaded and
checked; and the one-line stops of `make train` / `make smoke` before anything runs.

Recipes are discovered from recipes/*/: a new folder is tested without touching this file.
"""

import json
import math
import sys

import pytest

from tests.helpers import run
from tests.test_recipes import GPU_RECIPES, RECIPES, config, launcher
from dpo_recipes.commands.launchers import CPU_MAX_PROCESSES, deepspeed_json
from dpo_recipes.commands.smoke import SMOKE_STEPS


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without GPUs")
@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipe_without_gpu_stops_at_once(recipe):
    proc = run(["make", "--no-print-directory", "train", f"RECIPE={recipe}"], check=False, timeout=120)
    assert proc.returncode == 2
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert ours == [f"error: recipe {recipe} trains on {launcher(recipe)['num_processes']} CUDA GPU(s) "
                    f"(recipes/{recipe}/accelerate.yaml) and this machine has none; to check the recipe on CPU run: "
                    f"make smoke RECIPE={recipe}"]
    assert "Traceback" not in proc.stderr and "accelerate launch" not in proc.stdout


@pytest.mark.slow
def test_unknown_variant_is_one_line():
    proc = run(["make", "--no-print-directory", "smoke", "RECIPE=qwen2.5-0.5b", "VARIANT=nope"], check=False)
    assert proc.returncode == 2
    assert "error: recipe qwen2.5-0.5b has no VARIANT 'nope'; variants: cdpo ipo madpo rdpo" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_smoke(recipe, tmp_path):
    out = tmp_path / "smoke"
    proc = run(["make", "--no-print-directory", "smoke", f"RECIPE={recipe}", f"SMOKE_OUT={out}"], timeout=600)
    assert f"smoke {recipe}: OK" in proc.stdout
    report = json.loads((out / "smoke_report.json").read_text())
    cfg, launch, wanted = config(recipe), report["launch"], launcher(recipe)
    ds = deepspeed_json(wanted)

    # It ran through the recipe's own launcher: process count, DeepSpeed stage, offload, precision, as the ranks saw it.
    assert launch["device"] == "cpu"
    assert launch["num_processes"] == min(int(wanted["num_processes"]), CPU_MAX_PROCESSES)
    assert launch["distributed_type"] == {"NO": "NO", "MULTI_GPU": "MULTI_CPU"}.get(wanted["distributed_type"],
                                                                                     wanted["distributed_type"])
    assert launch["zero_stage"] == (ds["zero_optimization"]["stage"] if ds else None)
    offload = (ds or {}).get("zero_optimization", {}).get("offload_optimizer", {}).get("device")
    assert launch["offload_optimizer"] == offload
    if offload == "cpu" and "optimizer" in ds:
        assert launch["optimizer"] == "DeepSpeedCPUAdam"
    assert launch["mixed_precision"] == ("bf16" if cfg.get("bf16") else "no")

    # It trained: SMOKE_STEPS finite losses, and the saved result, reloaded, moves the log-probs.
    assert len(report["losses"]) == SMOKE_STEPS and all(math.isfinite(v) for v in report["losses"])
    assert report["max_logprob_change"] > 1e-4
    if cfg.get("use_peft"):
        assert report["result"] == "adapter"
        assert report["lora_modules"] == sorted(cfg["lora_target_modules"])
        assert report["base_quantized_4bit"] == bool(cfg.get("load_in_4bit"))
    else:
        assert report["result"] == "full"
        assert report["saved_dtype"] == ("bfloat16" if ds else cfg.get("dtype", "float32"))


@pytest.mark.slow
def test_smoke_cli_rejects_a_folder_that_is_not_a_recipe(tmp_path):
    proc = run([sys.executable, "-m", "dpo_recipes.commands.smoke", "run", str(tmp_path)], check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path}: not a recipe folder (no train.py)"

"""Every family of dpo_recipes/models/families.py trains: the demo recipe with a tiny model of the family in place of its
own, two LoRA steps on every linear layer, the run's outputs written; and `make smoke`'s path runs a recipe whose
tiny_model is one of the families no shipped recipe uses."""

import json
import math
import shutil
import sys

import pytest
import yaml

from tests.helpers import REPO, run
from dpo_recipes.models.families import FAMILIES

SHIPPED = {yaml.safe_load(p.read_text())["tiny_model"] for p in REPO.glob("recipes/*/config.yaml")}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_two_tiny_steps(family, tmp_path):
    out = tmp_path / "run"
    run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml",
         "--tiny_model", family, "--max_steps", "2", "--logging_steps", "1", "--warmup_steps", "0",
         "--eval_strategy", "no", "--save_strategy", "no", "--per_device_train_batch_size", "4",
         "--lora_target_modules", "all-linear", "--report_to", "none", "--output_dir", str(out)], timeout=600)
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as its reference
    assert losses[1] != losses[0], "the first step moved the adapter"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["script"]["tiny_model"] == family


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in SHIPPED])
def test_smoke_of_a_recipe_set_to_the_family(family, tmp_path):
    """qwen2.5-0.5b (a full fine-tune, one process) copied with `tiny_model: <family>`, through the smoke run."""
    (tmp_path / "accelerate_configs").symlink_to(REPO / "accelerate_configs")
    recipe = tmp_path / "recipes" / f"smoke-{family}"
    shutil.copytree(REPO / "recipes" / "qwen2.5-0.5b", recipe, symlinks=True)
    config = yaml.safe_load((recipe / "config.yaml").read_text())
    config["tiny_model"] = family
    if family == "gemma2":  # no SDPA attention (the smoke run refuses it in one line: tests/test_families.py)
        config["attn_implementation"] = "eager"
    (recipe / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run([sys.executable, "-m", "dpo_recipes.commands.smoke", "run", str(recipe), "--out", str(tmp_path / "out")],
               timeout=600)
    assert f"smoke smoke-{family}: OK" in proc.stdout
    report = json.loads((tmp_path / "out" / "smoke_report.json").read_text())
    assert report["max_logprob_change"] > 1e-4

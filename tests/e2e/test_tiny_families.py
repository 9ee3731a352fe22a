"""Every family of dpo_recipes/families.py trains: the demo recipe with a tiny model of the family in place of its
own, two LoRA steps on every linear layer, the run's outputs written."""

import json
import math
import sys

import pytest

from tests.helpers import run
from dpo_recipes.families import FAMILIES


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

"""How the demo recipe's settings are chosen (bench/demo_settings.py): the rule on hand-made candidates, and the
committed choice is the recipe's."""

import json
import sys

import yaml

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import demo_settings  # noqa: E402


def row(lr, steps, uptake, kl):
    return {"learning_rate": lr, "steps": steps, "validation_style_uptake": uptake, "validation_kl_k3": kl}


def test_highest_uptake_within_the_kl_limit_and_a_tie_goes_to_the_smaller_kl():
    rows = [row(1e-4, 8, 0.10, 0.3), row(3e-4, 24, 0.90, 3.5), row(3e-4, 8, 0.40, 1.2), row(1e-4, 24, 0.40, 0.9)]
    assert demo_settings.choose(rows) == rows[3]  # 0.90 is over the KL limit; 0.40 twice: the smaller KL
    assert demo_settings.choose([row(3e-4, 24, 0.9, 3.01)]) is None


def test_the_recipe_uses_the_committed_choice():
    result = json.loads((REPO / "bench/results/demo_settings.json").read_text())
    chosen = result["chosen"]
    assert chosen == demo_settings.choose(result["candidates"])
    config = yaml.safe_load((REPO / "recipes/demo-smollm2/config.yaml").read_text())
    assert (config["learning_rate"], config["max_steps"]) == (chosen["learning_rate"], chosen["steps"])

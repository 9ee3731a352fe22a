"""Every recipe folder checked as files: complete, documented and pinned, its config and variants parse, its launcher
config fits; and the shared launcher configs. Each recipe run on the real stack (`make smoke`):
tests/e2e/test_make_smoke.py.

Recipes are discovered from recipes/*/: a new folder is tested without touching this file.
"""

import os

import pytest
import yaml

from tests.helpers import REPO
from dpo_recipes.config import parse_config
from dpo_recipes.reporting import version_drift
from dpo_recipes.variants import known_variants, variant_files
from dpo_recipes.launchers import CPU_MAX_PROCESSES, cpu_launcher_config, deepspeed_json

RECIPES = sorted(p.name for p in (REPO / "recipes").iterdir() if (p / "train.py").is_file())
VARIANTS = [(r, v) for r in RECIPES for v in known_variants(REPO / "recipes" / r)]
GPU_RECIPES = [r for r in RECIPES if not yaml.safe_load((REPO / "recipes" / r / "accelerate.yaml").read_text())
               .get("use_cpu", False)]
CPU = ["--use_cpu", "true"]  # parse GPU recipes on any machine (transformers refuses bf16 without a GPU otherwise)
LAUNCHERS = sorted(p.name for p in (REPO / "accelerate_configs").glob("*.yaml"))


def launcher(recipe: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / recipe / "accelerate.yaml").read_text())


def config(recipe: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / recipe / "config.yaml").read_text())


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_folder_is_complete(recipe):
    folder = REPO / "recipes" / recipe
    link = folder / "accelerate.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)), "accelerate.yaml: a relative symlink"
    assert link.resolve().parent == REPO / "accelerate_configs"
    assert "from dpo_recipes.run import main" in (folder / "train.py").read_text()
    cfg = config(recipe)
    assert cfg["tiny_model"] in ("llama", "qwen2", "mistral"), "make smoke needs tiny_model"
    assert recipe in cfg["output_dir"], "output_dir names the recipe"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "demo-cpu"])
def test_recipe_docs_and_pins(recipe):
    folder = REPO / "recipes" / recipe
    readme = (folder / "README.md").read_text()
    assert f"make train RECIPE={recipe}" in readme and f"make smoke RECIPE={recipe}" in readme
    for section in ("## Hardware", "## Memory", "## Expected metrics"):
        assert section in readme, section
    assert (folder / "versions.txt").is_file()
    assert version_drift(folder) == [], "versions.txt must match the stack the smoke test validates"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_config_parses(recipe):
    # use_cpu: bf16 on a machine without a GPU is refused by transformers unless the run is declared CPU-only.
    script, train, model = parse_config(["--config", str(REPO / "recipes" / recipe / "config.yaml"), *CPU])
    assert train.output_dir and model.model_name_or_path or script.tiny_model
    if model.load_in_4bit:
        assert model.use_peft and model.bnb_4bit_quant_type == "nf4" and model.use_bnb_nested_quant
        assert model.dtype == "bfloat16", "QLoRA computes in bf16"
    if deepspeed_json(launcher(recipe)) is not None:
        assert train.bf16, "DeepSpeed's bf16 'auto' follows the recipe's bf16"


@pytest.mark.parametrize("recipe, variant", VARIANTS)
def test_variant_layers_over_recipe(recipe, variant):
    folder = REPO / "recipes" / recipe
    layers = [token for path in variant_files(folder, variant) for token in ("--config", str(path))]
    _, train, _ = parse_config(["--config", str(folder / "config.yaml"), *layers, *CPU])
    assert train.loss_type == [variant]
    assert train.output_dir == config(recipe)["output_dir"], "a variant changes the loss, not the rest"


def test_every_gpu_recipe_has_the_four_loss_variants_and_its_own_reward_model():
    for recipe in GPU_RECIPES:
        assert {"ipo", "cdpo", "rdpo", "madpo"} <= {v for r, v in VARIANTS if r == recipe}, recipe
        own = yaml.safe_load((REPO / "recipes" / recipe / "variants" / "madpo.yaml").read_text())
        assert own == {"reward_model_name_or_path": f"outputs/{recipe}-reward-model"}, recipe


def test_each_variant_exists_once():
    shared = {p.name: p.read_text() for p in (REPO / "variants").glob("*.yaml")}
    for path in (REPO / "recipes").glob("*/variants/*.yaml"):
        assert path.read_text() != shared.get(path.name), f"{path} repeats variants/{path.name}"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_configs(name):
    cfg = yaml.safe_load((REPO / "accelerate_configs" / name).read_text())
    ds = deepspeed_json(cfg)
    if ds is not None:
        # Training arguments stay the single source of truth: DeepSpeed reads them through "auto".
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto", key
        assert ds["bf16"]["enabled"] == "auto"
        assert "mixed_precision" not in cfg, "precision comes from the JSON's 'auto' (the recipe's bf16)"
        if ds["zero_optimization"]["stage"] == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    cpu = cpu_launcher_config(cfg)
    assert cpu["use_cpu"] is True and "mixed_precision" not in cpu
    assert cpu["num_processes"] == min(int(cfg["num_processes"]), CPU_MAX_PROCESSES)
    assert cpu["distributed_type"] != "MULTI_GPU"


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

"""Every recipe folder checked as files: complete, documented and pinned, its config and variants parse, its launcher
config fits; and the shared launcher configs. Each recipe run on the real stack (`make smoke`):
tests/e2e/test_make_smoke.py.

Recipes are discovered from recipes/*/: a new folder is tested without touching this file.
"""

import ast
import importlib
import importlib.util
import os
import shutil

import pytest
import yaml

from tests.helpers import REPO
from dpo_recipes.train.config import parse_config
from dpo_recipes.models.families import SMOKE_FAMILIES
from dpo_recipes.report.run_record import version_drift
from dpo_recipes.commands.variants import known_variants, variant_files
from dpo_recipes.commands.launchers import CPU_MAX_PROCESSES, cpu_launcher_config, deepspeed_json

RECIPES = sorted(p.name for p in (REPO / "recipes").iterdir() if (p / "train.py").is_file())
VARIANTS = [(r, v) for r in RECIPES for v in known_variants(REPO / "recipes" / r)]
GPU_RECIPES = [r for r in RECIPES if not yaml.safe_load((REPO / "recipes" / r / "accelerate.yaml").read_text())
               .get("use_cpu", False)]
CPU = ["--use_cpu", "true"]  # parse GPU recipes on any machine (transformers refuses bf16 without a GPU otherwise)
LAUNCHERS = sorted(p.name for p in (REPO / "accelerate_configs").glob("*.yaml"))
_spec = importlib.util.spec_from_file_location("new_recipe", REPO / "scripts" / "new_recipe.py")  # a script
new_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(new_recipe)


def launcher(recipe: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / recipe / "accelerate.yaml").read_text())


def config(recipe: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / recipe / "config.yaml").read_text())


def check_folder(folder):
    link = folder / "accelerate.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)), "accelerate.yaml: a relative symlink"
    assert link.resolve().parent == REPO / "accelerate_configs"
    check_train_script(folder / "train.py")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["tiny_model"] in SMOKE_FAMILIES, "make smoke needs tiny_model, a family of dpo_recipes/models/families.py"
    assert folder.name in cfg["output_dir"], "output_dir names the recipe"


def check_train_script(path):
    """train.py runs the package's training path, or is a recipe's own script (make new-recipe ... OWN=1): no
    relative imports, every dpo_recipes name it imports exists, a docstring saying what it is, a __main__ block."""
    script = path.read_text()
    if "from dpo_recipes.commands.train import main" in script:
        return
    tree = ast.parse(script)
    assert "own training script" in ast.get_docstring(tree), "an own train.py says what it is"
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: a relative import cannot run as a script"
            if node.module.startswith("dpo_recipes"):
                module = importlib.import_module(node.module)
                assert all(hasattr(module, a.name) for a in node.names), f"line {node.lineno}: {node.module}"
    assert script.rstrip().endswith('if __name__ == "__main__":\n    main(Path(__file__).resolve().parent)')


def check_docs_and_pins(folder):
    readme = (folder / "README.md").read_text()
    assert f"make train RECIPE={folder.name}" in readme and f"make smoke RECIPE={folder.name}" in readme
    for section in ("## Hardware", "## Memory", "## Expected metrics"):
        assert section in readme, section
    assert (folder / "versions.txt").is_file()
    assert version_drift(folder) == [], "versions.txt must match the stack the smoke test validates"


def check_config_parses(folder):
    # use_cpu: bf16 on a machine without a GPU is refused by transformers unless the run is declared CPU-only.
    script, train, model = parse_config(["--config", str(folder / "config.yaml"), *CPU])
    assert train.output_dir and model.model_name_or_path or script.tiny_model
    if model.load_in_4bit:
        assert model.use_peft and model.bnb_4bit_quant_type == "nf4" and model.use_bnb_nested_quant
        assert model.dtype == "bfloat16", "QLoRA computes in bf16"
    if deepspeed_json(yaml.safe_load((folder / "accelerate.yaml").read_text())) is not None:
        assert train.bf16, "DeepSpeed's bf16 'auto' follows the recipe's bf16"


def check_variant(folder, variant):
    layers = [token for path in variant_files(folder, variant) for token in ("--config", str(path))]
    _, train, _ = parse_config(["--config", str(folder / "config.yaml"), *layers, *CPU])
    assert train.loss_type == [variant]
    output_dir = yaml.safe_load((folder / "config.yaml").read_text())["output_dir"]
    assert train.output_dir == output_dir, "a variant changes the loss, not the rest"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_folder_is_complete(recipe):
    check_folder(REPO / "recipes" / recipe)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "demo-cpu"])
def test_recipe_docs_and_pins(recipe):
    check_docs_and_pins(REPO / "recipes" / recipe)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_config_parses(recipe):
    check_config_parses(REPO / "recipes" / recipe)


@pytest.mark.parametrize("recipe, variant", VARIANTS)
def test_variant_layers_over_recipe(recipe, variant):
    check_variant(REPO / "recipes" / recipe, variant)


@pytest.mark.parametrize("own", [False, True])
def test_a_copy_passes_the_recipe_checks_under_its_own_name(tmp_path, own):
    """make new-recipe in a copy of the repository's layout: the new recipe passes every check above, and its README,
    configs and comments name it, not the template (OWN=1: its own train.py, which says what it is)."""
    source, name = "qwen2.5-0.5b", "mine"
    for folder in ("dpo_recipes", "accelerate_configs"):
        (tmp_path / folder).symlink_to(REPO / folder)
    shutil.copytree(REPO / "recipes" / source, tmp_path / "recipes" / source, symlinks=True)
    changes = new_recipe.copy_recipe(tmp_path / "recipes", name, source, own)
    folder = tmp_path / "recipes" / name
    for check in (check_folder, check_docs_and_pins, check_config_parses):
        check(folder)
    for variant in known_variants(folder):
        check_variant(folder, variant)
    readme = (folder / "README.md").read_text()
    assert readme.count(source) == 1 and readme.startswith(f"# {name} (copied from {source}")
    assert "Qwen/Qwen2.5-0.5B-Instruct" in readme and "`qwen2.5-7b-full-zero3`" in readme  # not the recipe's name
    for path in [folder / "config.yaml", *(folder / "variants").glob("*.yaml")]:
        assert source not in path.read_text(), path
    assert f"recipes/{name}/config.yaml" in (folder / "variants" / "madpo.yaml").read_text()
    assert any("9 mention(s)" in change for change in changes)
    script = (folder / "train.py").read_text()
    assert (script == (REPO / "recipes" / source / "train.py").read_text()) != own
    if own:
        docstring = ast.get_docstring(ast.parse(script))
        assert docstring.startswith(f"Recipe {name}'s own training script") and "-> tokenizer ->" in docstring
        assert "A recipe's train.py calls" not in docstring


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
        assert f"-m dpo_recipes.commands.reward_model --config recipes/{recipe.name}/config.yaml" in path.read_text()

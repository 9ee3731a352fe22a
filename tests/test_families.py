"""The table of model families (dpo_recipes/models/families.py) against the pinned transformers, and what reads it: the tiny
models' templates, the memory estimate's defaults, the one line for an unknown family. Each family trains two tiny
steps in tests/e2e/test_tiny_families.py."""

import jinja2
import pytest
import torch
import transformers
import yaml
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from trl import ModelConfig

from tests.helpers import REPO
from dpo_recipes.commands import estimate
from dpo_recipes.commands import smoke
from dpo_recipes.errors import UserError
from dpo_recipes.models.families import FAMILIES, SPLIT_LINEAR, family_of, split_projections
from dpo_recipes.models.loading import CACHE_DIR, load_model
from dpo_recipes.models.tiny import build_tiny

CONVERSATION = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi there."}]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_class_exists_and_is_what_auto_builds(name):
    family = FAMILIES[name]
    assert hasattr(transformers, family.model_class), f"transformers {transformers.__version__}"
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family.model_type] == family.model_class
    assert family_of(family.model_type) is family


@pytest.mark.parametrize("name", FAMILIES)
def test_linear_modules_are_the_classes(name):
    """The table's linear modules are those of a decoder layer of the class, and as split projections they are the
    ones the estimate has shapes for."""
    family = FAMILIES[name]
    config = transformers.AutoConfig.for_model(family.model_type, hidden_size=16, intermediate_size=32, vocab_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=8, pad_token_id=0, **family.config)
    model = transformers.AutoModelForCausalLM.from_config(config)
    layer = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert layer == set(family.linear)
    assert sorted(split_projections(family.linear)) == sorted(SPLIT_LINEAR)


@pytest.mark.parametrize("name", FAMILIES)
def test_template_ends_each_answer_with_the_eos_token(name):
    """Generation stops at eos: the template must put it right after an answer, and the prompt must open one."""
    family = FAMILIES[name]
    template = jinja2.Environment().from_string(family.template)
    text = template.render(messages=CONVERSATION, bos_token=family.bos or "", eos_token=family.eos)
    assert f"Hi there.{family.eos}" in text and text.index("Hello?") < text.index("Hi there.")
    prompt = template.render(messages=CONVERSATION[:1], bos_token=family.bos or "", eos_token=family.eos,
                             add_generation_prompt=True)
    assert prompt.startswith(text[:text.index("Hello?")]) and len(prompt) > text.index("Hello?") + len("Hello?")
    used = [t for t in family.extra if t in text or t in prompt]
    assert used, "the template's turn markers are the family's special tokens"


def test_estimate_reads_the_bias_default_from_the_table():
    config = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1000}
    assert estimate.architecture_from_config({**config, "model_type": "qwen2"}).qkv_bias  # Qwen2 never writes it
    assert not estimate.architecture_from_config({**config, "model_type": "qwen3"}).qkv_bias
    assert not estimate.architecture_from_config({**config, "model_type": "qwen2", "attention_bias": False}).qkv_bias


def test_estimate_counts_fused_projections_as_their_parts(tmp_path):
    """phi3's LoRA targets name fused modules; the estimate's shapes are the split projections they hold."""
    recipe = tmp_path / "recipes" / "phi"
    recipe.mkdir(parents=True)
    (recipe / "accelerate.yaml").symlink_to(REPO / "accelerate_configs" / "cpu.yaml")
    config = {"tiny_model": "phi3", "use_peft": True, "lora_r": 8, "use_cpu": True, "bf16": False}
    targets = []
    for modules in (["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], list(SPLIT_LINEAR), "all-linear"):
        (recipe / "config.yaml").write_text(yaml.safe_dump({**config, "lora_target_modules": modules}))
        setup, _ = estimate.recipe_setup("phi", root=tmp_path)
        targets.append(setup.lora_targets)
    assert targets == [SPLIT_LINEAR] * 3


def test_unknown_family_or_attention_is_one_line_naming_it(tmp_path):
    recipe = tmp_path / "r"
    recipe.mkdir()
    (recipe / "config.yaml").write_text("tiny_model: gemma9\n")
    with pytest.raises(UserError, match=r"tiny_model 'gemma9' is not a family of dpo_recipes/models/families.py \(llama, "):
        smoke.run_smoke(recipe, tmp_path / "out")
    (recipe / "config.yaml").write_text("dataset_name: data/demo\n")
    with pytest.raises(UserError, match="set tiny_model"):
        smoke.run_smoke(recipe, tmp_path / "out")
    with pytest.raises(UserError, match="tiny_model 'gemma9' is not a family"):
        estimate.find_architecture(None, "gemma9")
    (recipe / "config.yaml").write_text("tiny_model: gemma2\nattn_implementation: sdpa\n")
    with pytest.raises(UserError, match="the gemma2 family's Gemma2ForCausalLM has no SDPA attention in transformers; "
                                        "set eager"):
        smoke.run_smoke(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything is built or written"


def test_docs_list_every_family():
    docs = (REPO / "docs/recipes.md").read_text()
    rows = {line.split("`")[1] for line in docs.split("## Tiny model families")[1].splitlines()
            if line.startswith("| `")}
    assert rows == set(FAMILIES)


def test_a_real_run_with_an_attention_the_model_lacks_stops_in_one_line():
    """Not only the smoke run: loading a Gemma 2 model with sdpa (transformers raises a ValueError) names the key."""
    path = build_tiny("gemma2", CACHE_DIR / "tiny-gemma2")
    with pytest.raises(UserError, match=r"^config: attn_implementation 'sdpa': Gemma2ForCausalLM does not support an "
                                        r"attention implementation through .*; set attn_implementation: eager"):
        load_model(str(path), ModelConfig(model_name_or_path=str(path), attn_implementation="sdpa"), False)

"""The pre-flight of `make train` (dpo_recipes/commands/launch.py): quantised weights against the launcher's DeepSpeed stage.
What a user sees through the launcher itself is in tests/e2e/test_input_errors.py."""

import re

import pytest

from tests.helpers import REPO


ZERO3 = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"deepspeed_config_file":
                                                                 "accelerate_configs/deepspeed/zero3.json"}}


@pytest.mark.parametrize("model, launcher, message", [
    (dict(load_in_4bit=True, dtype="bfloat16"), ZERO3, "QLoRA under DeepSpeed ZeRO-3 needs bnb_4bit_quant_storage "
                                                       "equal to dtype (bfloat16)"),
    (dict(load_in_4bit=True, dtype="bfloat16", bnb_4bit_quant_storage="float16"), ZERO3, "got float16"),
    (dict(load_in_8bit=True, dtype="bfloat16"), ZERO3, "load_in_8bit cannot run under DeepSpeed ZeRO-3"),
    (dict(load_in_4bit=True, dtype="bfloat16", bnb_4bit_quant_storage="bfloat16"), ZERO3, None),
    (dict(load_in_4bit=True, dtype="bfloat16"), {"distributed_type": "NO"}, None),  # one GPU: no sharding needed
])
def test_quantised_weights_and_zero3(model, launcher, message):
    from trl import ModelConfig

    from dpo_recipes.errors import UserError
    from dpo_recipes.commands.launch import check_quantisation_launcher

    args = ModelConfig(use_peft=True, **model)
    if message is None:
        check_quantisation_launcher(args, launcher)
        return
    with pytest.raises(UserError, match=re.escape(message)):
        check_quantisation_launcher(args, launcher)


def test_qlora_zero3_recipe_stores_4bit_in_its_compute_dtype():
    import yaml

    config = yaml.safe_load((REPO / "recipes/llama3-70b-qlora-zero3/config.yaml").read_text())
    assert config["load_in_4bit"] and config["bnb_4bit_quant_storage"] == config["dtype"] == "bfloat16"
    launcher = yaml.safe_load((REPO / "recipes/llama3-70b-qlora-zero3/accelerate.yaml").read_text())
    assert launcher["deepspeed_config"]["deepspeed_config_file"].endswith("zero3.json")

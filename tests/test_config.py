import sys

import pytest

from tests.helpers import REPO, run
from dpo_recipes.config import parse_config
from dpo_recipes.errors import UserError

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")


def test_yaml_then_cli_override_wins():
    script, train, model = parse_config(["--config", DEMO, "--beta", "0.25", "--output_dir", "/tmp/x"])
    assert train.beta == 0.25
    assert train.output_dir == "/tmp/x"
    assert train.max_length == 128  # from the YAML
    assert model.lora_r == 16 and model.use_peft
    assert script.tiny_model == "llama"


def test_unknown_yaml_key_suggests(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("tiny_model: llama\ndataset_name: data/demo\nlearning_rat: 0.1\n")
    with pytest.raises(UserError, match=r"c.yaml: unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_config(["--config", str(bad)])


def test_unknown_cli_key_suggests():
    with pytest.raises(UserError, match=r"command line: unknown key 'bta' \(did you mean 'beta'\?\)"):
        parse_config(["--config", DEMO, "--bta", "0.1"])


def test_wrong_yaml_type(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("tiny_model: llama\nmax_steps: many\n")
    with pytest.raises(UserError, match=r"key 'max_steps' must be int, got str 'many'"):
        parse_config(["--config", str(bad)])


def test_yaml_scientific_notation_is_a_float(tmp_path):
    ok = tmp_path / "c.yaml"
    ok.write_text("tiny_model: llama\ndataset_name: data/demo\nlearning_rate: 5e-7\nuse_cpu: true\nbf16: false\n")
    _, train, _ = parse_config(["--config", str(ok)])
    assert train.learning_rate == 5e-7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--label_smoothing", "0.1"], "label_smoothing=0.1 has no effect with loss_type ['sigmoid']"),
        (["--loss_type", "cdpo", "--label_smoothing", "0.6"], "label_smoothing must be in [0, 0.5)"),
        (["--use_peft", "false", "--load_in_4bit", "true"], "load_in_4bit (QLoRA) needs use_peft"),
        (["--beta", "0"], "beta must be a finite number > 0"),
        (["--loss_type", "cdpo", "hinge"], "loss_type ['hinge'] is TRL's and cannot be combined with cdpo"),
        (["--loss_type", "hinge", "--padding_free", "true"], "cannot be combined with padding_free"),
        (["--loss_type", "cdpo", "--label_smoothing", "0.1", "--ld_alpha", "0.5"],
         "ld_alpha is applied by TRL's loss only and cannot be combined with cdpo"),
        (["--use_weighting", "true", "--padding_free", "true"], "use_weighting is applied by TRL's loss only"),
        (["--bnb_4bit_quant_storage", "bfloat16"], "bnb_4bit_quant_storage is only used with load_in_4bit"),
        (["--prefix_sharing", "true"], "prefix_sharing needs padding_free: true"),
        (["--prefix_sharing", "true", "--padding_free", "true", "--attn_implementation", "flash_attention_2"],
         "prefix_sharing needs attn_implementation in ['sdpa', 'eager', 'flex_attention'], got 'flash_attention_2'"),
    ],
)
def test_combinations_that_cannot_work(args, message):
    with pytest.raises(UserError) as err:
        parse_config(["--config", DEMO, *args])
    assert message in str(err.value)


@pytest.mark.slow
def test_bad_config_exits_2_with_one_line():
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--bta", "1"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: command line: unknown key 'bta' (did you mean 'beta'?)"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unknown_recipe_lists_recipes():
    proc = run(["make", "--no-print-directory", "train", "RECIPE=nope"], check=False)
    assert proc.returncode != 0
    assert "unknown RECIPE 'nope'" in proc.stderr and "demo-cpu" in proc.stderr


def test_lora_dropout_needs_dropout_on():
    """TRL's disable_dropout (default true) zeroes every nn.Dropout, LoRA's included: a lora_dropout does nothing."""
    with pytest.raises(UserError) as err:
        parse_config(["--config", DEMO, "--lora_dropout", "0.05"])
    assert str(err.value).startswith("config: lora_dropout 0.05 does nothing while disable_dropout is true")
    _, train, model = parse_config(["--config", DEMO, "--lora_dropout", "0.05", "--disable_dropout", "false"])
    assert model.lora_dropout == 0.05 and not train.disable_dropout


RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/config.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_parse_without_future_warnings(recipe):
    """A run's log holds only warnings the user should act on: no deprecated key in a recipe, none set by default."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, train, _ = parse_config(["--config", str(REPO / "recipes" / recipe / "config.yaml"),
                                    "--use_cpu", "true", "--bf16", "false"])
    assert train.activation_checkpointing is not None


def test_checkpointing_default_and_deprecated_name(tmp_path):
    import warnings

    plain = REPO / "recipes/demo-cpu/config.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, train, _ = parse_config(["--config", str(plain), "--activation_checkpointing", "true"])
    assert train.activation_checkpointing and train.gradient_checkpointing  # the old name mirrors the new one
    with pytest.raises(UserError, match="gradient_checkpointing and activation_checkpointing are both set"):
        parse_config(["--config", str(plain), "--gradient_checkpointing", "true"])  # the demo sets the new name
    old = tmp_path / "old.yaml"
    old.write_text("tiny_model: llama\ndataset_name: data/demo\nuse_cpu: true\nbf16: false\n"
                   "gradient_checkpointing: false\n")
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):  # the user's own old key: worth a warning
        _, train, _ = parse_config(["--config", str(old)])
    assert train.activation_checkpointing is False


def test_trl_checkpointing_default_is_kept_without_warning(tmp_path):
    import warnings

    config = tmp_path / "c.yaml"
    config.write_text("tiny_model: llama\ndataset_name: data/demo\nuse_cpu: true\nbf16: false\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, train, _ = parse_config(["--config", str(config)])
    assert train.activation_checkpointing is True  # TRL's DPOConfig default: checkpointing on


def test_peft_without_lora_dropout_key_is_not_refused(tmp_path):
    """ModelConfig's own default lora_dropout (0.05) is not the user's choice: only a written one is refused."""
    config = tmp_path / "c.yaml"
    config.write_text("tiny_model: llama\ndataset_name: data/demo\nuse_cpu: true\nbf16: false\nuse_peft: true\n")
    _, _, model = parse_config(["--config", str(config)])
    assert model.use_peft and model.lora_dropout == 0.05


@pytest.mark.slow
@pytest.mark.parametrize("family, config, message", [
    ("mamba", {}, "prefix_sharing needs a model whose forward takes a 4D attention mask"),
    ("mistral", {"sliding_window": 32}, "cannot keep mistral's sliding window (32 tokens) with max_length 128"),
])
def test_prefix_sharing_stops_before_the_model_loads(tiny_llama, tmp_path, family, config, message):
    """A model that would ignore (or misread) the shared-prompt mask: one line, exit 2, and no weights needed."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.for_model(family, **config).save_pretrained(tmp_path)  # a config only: loading weights would fail
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path)
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--model_name_or_path", str(tmp_path),
                "--padding_free", "true", "--prefix_sharing", "true", "--output_dir", str(tmp_path / "out")],
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path}: ") and message in last and "Traceback" not in proc.stderr

"""Configuration (dpo_recipes/train/config.py): YAML then command line, unknown keys and wrong types in one line, the
combinations that cannot work, safe defaults (no remote code unless asked, safe YAML), and settings that would only
fail late checked up front. Through a recipe's train.py: tests/e2e/test_input_errors.py."""

import pytest

from tests.helpers import REPO
from dpo_recipes.train.config import parse_config
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


@pytest.mark.parametrize("argv,message", [
    (["--report_to", "wandb"], "report_to wandb needs the wandb package"),
    (["--report_to", "trackio"], "report_to trackio needs the trackio package"),
    (["--judge_model", "./no/such/reward-model"], "judge_model './no/such/reward-model' not found"),
    (["--eval_report_examples", "9"], "eval_report_examples (9) cannot exceed eval_report_prompts (8)"),
    (["--eval_report_generation_batch_size", "0"], "eval_report_generation_batch_size must be an integer >= 1, got 0"),
])
def test_report_and_logging_settings_are_checked_before_training(argv, message):
    """Settings that would only fail at the end of a run (or at the trainer's start, after the model has loaded)
    stop at the config, in one line. (wandb and trackio are not installed here.)"""
    import importlib.util

    from dpo_recipes.train.config import parse_config
    from dpo_recipes.errors import UserError

    package = argv[1] if argv[0] == "--report_to" else None
    if package and importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(UserError) as err:
        parse_config(["--config", str(REPO / "recipes/demo-cpu/config.yaml"), *argv])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_trust_remote_code_is_off_by_default():
    _, train, _ = parse_config(["--config", DEMO])
    assert train.trust_remote_code is False


def test_yaml_python_tags_are_refused(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("tiny_model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse_config(["--config", str(bad)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss_type", "madpo", "--madpo_c_max", "1.0"], "config: madpo_c_max must be a finite number > 1, got 1.0"),
        (["--loss_type", "madpo", "--madpo_c_min", "1.5"], "config: madpo_c_min must be in (0, 1), got 1.5"),
        (["--loss_type", "madpo", "--madpo_tau", "0"], "config: madpo_tau must be a finite number > 0, got 0.0"),
        (["--reward_model_name_or_path", "rm"],
         "config: reward_model_name_or_path is only used by a loss that needs reward margins (madpo)"),
    ],
)
def test_madpo_config_mistakes(args, message):
    with pytest.raises(UserError) as err:
        parse_config(["--config", DEMO, *args])
    assert message in str(err.value)


def test_liger_kernels_that_cannot_run_stop_with_the_config(monkeypatch):
    """transformers imports Liger only after the model has loaded; the config check says so first."""
    import importlib.util

    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    with pytest.raises(UserError, match=r"^config: use_liger_kernel needs the liger-kernel package, which is not "
                                        r"installed"):
        parse_config(["--config", DEMO, "--use_liger_kernel", "true"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^config: use_liger_kernel needs a CUDA GPU .* set use_liger_kernel: false$"):
        parse_config(["--config", DEMO, "--use_liger_kernel", "true"])

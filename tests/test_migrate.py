"""Bring your config: real alignment-handbook and TRL 0.x DPO configs (tests/legacy_configs.py) through
`python -m dpo_recipes.commands.migrate`, and the one-error report of unknown keys in config.py. `make migrate` and a recipe
run on an old config: tests/e2e/test_make_migrate.py."""

import re

import pytest
import yaml

from tests import legacy_configs as legacy
from tests.helpers import REPO, demo_subset
from dpo_recipes.commands import audit
from dpo_recipes.commands import migrate
from dpo_recipes.train.config import OPTIONAL_TRACKERS, _known_keys, parse_config
from dpo_recipes.data.sources import sources_from_args
from dpo_recipes.errors import UserError
from dpo_recipes.renames import CHANGES

CPU = ["--use_cpu", "true"]  # this machine has no GPU: transformers refuses bf16 unless the run is CPU-only


def convert_file(tmp_path, text: str, name="old.yaml"):
    """Write `text`, convert it with the CLI entry point, return (migration, old mapping, new mapping, new path)."""
    old_path, new_path = tmp_path / name, tmp_path / f"new-{name}"
    old_path.write_text(text)
    migration = migrate.main([str(old_path), "-o", str(new_path)])
    return migration, yaml.safe_load(text), yaml.safe_load(new_path.read_text()), new_path


def assert_unchanged_keys_kept(migration, old: dict, new: dict):
    for key, value in old.items():
        if key not in migration.changed():
            assert new[key] == value, key


def test_handbook_zephyr_full(tmp_path):
    migration, old, new, path = convert_file(tmp_path, legacy.HANDBOOK_ZEPHYR_FULL["text"])
    assert migration.changed() == {
        "torch_dtype": "converted", "dataset_mixer": "converted", "dataset_splits": "converted",
        "preprocessing_num_workers": "renamed", "evaluation_strategy": "renamed", "max_prompt_length": "removed",
        "warmup_ratio": "converted", "logging_first_step": "added",
    }
    assert_unchanged_keys_kept(migration, old, new)
    assert "# removed max_prompt_length: 512 (TRL 0.29)" in path.read_text()
    script, train, model = parse_config(["--config", str(path), *CPU])
    assert model.dtype == "float32"  # null: float32 under transformers 4, 'auto' under 5
    assert (script.dataset_name, script.dataset_train_split, script.dataset_test_split) == (
        "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "test_prefs")
    assert train.beta == 0.01 and train.learning_rate == 5e-7 and train.max_length == 1024
    assert train.lr_scheduler_type == "cosine" and train.num_train_epochs == 1
    assert train.warmup_steps == 0.1 and train.get_warmup_steps(1000) == 100  # warmup_ratio 0.1 of 1000 steps
    assert (train.per_device_train_batch_size, train.gradient_accumulation_steps) == (8, 2)
    assert train.eval_strategy == "steps" and train.eval_steps == 100 and train.dataset_num_proc == 12
    assert train.optim == "adamw_torch" and train.logging_first_step  # the handbook's default, kept
    assert train.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_handbook_zephyr_qlora(tmp_path):
    migration, old, new, path = convert_file(tmp_path, legacy.HANDBOOK_ZEPHYR_QLORA["text"])
    assert migration.changed() == {
        "torch_dtype": "renamed", "use_flash_attention_2": "converted", "dataset_mixer": "converted",
        "dataset_splits": "converted", "preprocessing_num_workers": "renamed", "evaluation_strategy": "renamed",
        "max_prompt_length": "removed", "warmup_ratio": "converted", "logging_first_step": "added",
        "lora_dropout": "converted",  # TRL's disable_dropout zeroed it: 0.0 says what trained
    }
    assert_unchanged_keys_kept(migration, old, new)
    script, train, model = parse_config(["--config", str(path), *CPU])
    assert model.dtype == "bfloat16" and model.attn_implementation == "flash_attention_2"
    assert model.use_peft and model.load_in_4bit
    assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (128, 128, 0.0)
    assert model.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert train.beta == 0.01 and train.learning_rate == 5e-6 and train.optim == "paged_adamw_32bit"
    assert (train.per_device_train_batch_size, train.gradient_accumulation_steps) == (4, 4)
    assert train.warmup_steps == 0.1 and train.lr_scheduler_type == "cosine"


def test_handbook_two_dataset_mixer_becomes_a_mixture(tmp_path):
    migration, old, new, path = convert_file(tmp_path, legacy.HANDBOOK_CAI["text"])
    assert set(migration.changed()) == {"torch_dtype", "dataset_mixer", "dataset_splits", "preprocessing_num_workers",
                                        "evaluation_strategy", "max_prompt_length", "warmup_ratio",
                                        "logging_first_step"}
    assert_unchanged_keys_kept(migration, old, new)  # optim: rmsprop, do_train, lr_scheduler_type: linear, ...
    script, train, _ = parse_config(["--config", str(path), *CPU])
    sources = sources_from_args(script)
    assert [(s.name, s.split, s.test_split, s.fraction) for s in sources] == [
        ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "test_prefs", 1.0),
        ("HuggingFaceH4/cai-conversation-harmless", "train_prefs", "test_prefs", 1.0),
    ]
    assert train.beta == 0.1 and train.num_train_epochs == 3 and train.optim == "rmsprop"


def test_handbook_hub_model_revision(tmp_path):
    migration, old, new, path = convert_file(tmp_path, legacy.HANDBOOK_ALIGN_SCAN["text"])
    assert migration.changed() == {
        "torch_dtype": "converted", "dataset_mixer": "converted", "dataset_splits": "converted",
        "preprocessing_num_workers": "renamed", "evaluation_strategy": "renamed", "hub_model_revision": "renamed",
        "max_prompt_length": "removed", "warmup_ratio": "converted", "max_length": "added",
        "logging_first_step": "added",
    }  # no max_length: TRL 0.8's trainer used 512 (TRL 1.16: 1024)
    assert_unchanged_keys_kept(migration, old, new)
    _, train, _ = parse_config(["--config", str(path), *CPU])
    assert train.hub_revision == "dpo-beta-0.01" and train.loss_type == ["sigmoid"] and train.max_length == 512


def test_handbook_2025_mixture(tmp_path):
    migration, old, new, path = convert_file(tmp_path, legacy.HANDBOOK_ZEPHYR_FULL_2025["text"])
    assert migration.changed() == {
        "torch_dtype": "converted", "dataset_mixture": "converted", "dataset_mixture.test_split_size": "kept out",
        "max_prompt_length": "removed", "warmup_ratio": "converted",
    }  # its DPOConfig is TRL's: no handbook defaults to add
    script, _, _ = parse_config(["--config", str(path), *CPU])
    assert [(s.name, s.config, s.split, s.test_split) for s in sources_from_args(script)] == [
        ("HuggingFaceH4/ultrafeedback_binarized", "default", "train_prefs", None),
        ("HuggingFaceH4/ultrafeedback_binarized", "default", "test_prefs", None),
    ]
    assert "# kept out dataset_mixture.test_split_size: 2000" in path.read_text()


# The handbook's current configs (its TRL 0.19 API): key -> what migrate does with it, and the local stand-in for
# each dataset id and split (the hub is out of reach in tests).
CURRENT_HANDBOOK = {
    "smollm3-apo": (legacy.HANDBOOK_SMOLLM3_APO, {
        "torch_dtype": "renamed", "dataset_mixture": "converted", "warmup_ratio": "converted",
        "padding_free": "converted"}, {
        "HuggingFaceTB/smoltalk2": "DATA", "config: Preference": "config: default",
        "llama_3.1_tulu_3_8b_preference_mixture_no_think": "train", "tulu_3_8b_pref_mix_Qwen3_32B_Qwen3_0.6B_think":
        "test"}),
    "starchat2-15b": (legacy.HANDBOOK_STARCHAT2, {
        "torch_dtype": "renamed", "dataset_mixture": "converted", "dataset_mixture.test_split_size": "kept out",
        "max_prompt_length": "removed", "warmup_ratio": "converted"}, {
        "HuggingFaceH4/ultrafeedback_binarized": "DATA", "HuggingFaceH4/orca_dpo_pairs": "OTHER_DATA",
        "train_prefs": "train", "test_prefs": "test"}),
    "zephyr-7b-gemma": (legacy.HANDBOOK_ZEPHYR_GEMMA, {
        "torch_dtype": "renamed", "dataset_mixture": "converted", "dataset_mixture.test_split_size": "kept out",
        "max_prompt_length": "removed", "warmup_ratio": "converted"}, {"argilla/dpo-mix-7k": "DATA"}),
}


@pytest.mark.parametrize("name", CURRENT_HANDBOOK)
def test_current_handbook_config_converts_and_audits(name, tmp_path, tiny_llama, capsys):
    """A 2025 handbook config converts, passes the config checks, and its data goes through the audit with a local
    model's tokenizer; its report_to (wandb, not pinned) stays, and a run without the package stops in one line that
    says how to install it."""
    source, changed, local = CURRENT_HANDBOOK[name]
    data = demo_subset(tmp_path / "data", 60, 20)
    folders = {"DATA": demo_subset(tmp_path / "one", 30, 10), "OTHER_DATA": tmp_path / "other"}
    folders["OTHER_DATA"].mkdir()
    for split, rows in (("train", 30), ("test", 10)):  # other pairs: a repeated pair would be dropped as such
        lines = (data / f"{split}.jsonl").read_text().splitlines()[rows:]
        (folders["OTHER_DATA"] / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    text = source["text"]
    for old, new in local.items():
        text = text.replace(old, str(folders.get(new, new)))
    migration, old, new, path = convert_file(tmp_path, text)
    assert migration.changed() == changed
    assert_unchanged_keys_kept(migration, old, new)
    assert new["report_to"] == old["report_to"] and "wandb" in new["report_to"]
    out = capsys.readouterr().out
    assert "passes this project's config checks" in out and "`make trackers` installs wandb" in out
    # Liger needs a CUDA GPU: the check ran with it off, said so, and the file keeps it.
    assert ("use_liger_kernel needs liger-kernel and a CUDA GPU" in out) == bool(old.get("use_liger_kernel"))
    assert new.get("use_liger_kernel") == old.get("use_liger_kernel")
    run = ["--config", str(path), "--model_name_or_path", str(tiny_llama), "--output_dir", str(tmp_path / "run"),
           "--dataset_num_proc", "1", *CPU]
    if "use_liger_kernel" in old:  # the Liger kernels are not part of the pinned stack
        run += ["--use_liger_kernel", "false"]
    with pytest.raises(SystemExit) as exit_:
        audit.main(run)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: config: report_to wandb needs the wandb package, which is not "
                                               "installed: `make trackers` installs it (requirements-trackers.txt)")
    report = audit.main([*run, "--report_to", "tensorboard"])
    assert report["rows_read"] == 40 * len(old["dataset_mixture"]["datasets"]) // 2


def test_apo_zero_padding_free_becomes_padded():
    """TRL computes apo_zero and has no padding-free path; this project's packed path computes only its own losses."""
    migration = migrate.convert({"loss_type": ["apo_zero"], "padding_free": True}, "old.yaml")
    assert migration.changed() == {"padding_free": "converted"} and migration.config["padding_free"] is False
    assert "apo_zero is computed by TRL" in migration.steps[0].note
    for ours in ({"loss_type": "cdpo", "padding_free": True}, {"padding_free": True}):
        assert migrate.convert(ours, "old.yaml").changed() == {}  # this project's losses pack pairs


def test_trackers_file_pins_the_optional_trackers():
    pins = [line.split("==")[0] for line in (REPO / "requirements-trackers.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert pins == list(OPTIONAL_TRACKERS)
    assert "-r requirements-trackers.txt" in (REPO / "Makefile").read_text().split("\ntrackers:")[1].split("\n\n")[0]


def test_trl_086_documented_command_needs_no_change(tmp_path):
    config = legacy.command_to_config(legacy.TRL_086_DPO_COMMAND["text"])
    migration = migrate.convert(config, "trl.yaml")
    assert migration.changed() == {} and migration.config == config
    path = tmp_path / "trl.yaml"
    path.write_text(migrate.render(migration, "trl.yaml"))
    # report_to wandb needs the wandb package, which the pinned stack does not have
    _, train, model = parse_config(["--config", str(path), *CPU, "--report_to", "none"])
    assert train.learning_rate == 1e-3 and train.warmup_steps == 150 and train.optim == "rmsprop"
    assert not train.remove_unused_columns and train.logging_first_step
    assert model.use_peft and (model.lora_r, model.lora_alpha) == (16, 16)


def test_unknown_keys_are_reported_at_once_with_their_renames(tmp_path):
    old = tmp_path / "config_qlora.yaml"
    old.write_text(legacy.HANDBOOK_ZEPHYR_QLORA["text"])
    with pytest.raises(UserError) as err:
        parse_config(["--config", str(old)])
    message = str(err.value)
    unknown = [k for k in yaml.safe_load(old.read_text()) if k not in _known_keys()]
    assert re.findall(r"'(\w+)' \(", message) == unknown and len(unknown) == 8
    assert "'torch_dtype' (now 'dtype', TRL 0.27)" in message and "torch_compile" not in message
    assert "'max_prompt_length' (removed in TRL 0.29)" in message
    assert f"python -m dpo_recipes.commands.migrate {old}" in message


def test_unknown_key_without_a_rename_suggests_the_closest():
    with pytest.raises(UserError, match=r"command line: 2 unknown keys 'bta' \(did you mean 'beta'\?\), "
                                        r"'rpo_alpha' \(removed in TRL 0.29\)$"):
        parse_config(["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--bta", "1", "--rpo_alpha", "1"])


@pytest.mark.parametrize("old, changed, new", [
    ({"warmup_ratio": 0.1, "warmup_steps": 20}, {"warmup_ratio": "removed"}, {"warmup_steps": 20}),
    ({"warmup_steps": 0, "warmup_ratio": 0.05}, {"warmup_ratio": "converted"}, {"warmup_steps": 0.05}),
    ({"warmup_ratio": 1.5}, {"warmup_ratio": "kept out"}, {}),
    ({"torch_dtype": "float16", "dtype": "bfloat16"}, {"torch_dtype": "removed"}, {"dtype": "bfloat16"}),
    ({"gradient_checkpointing_use_reentrant": True}, {"gradient_checkpointing_use_reentrant": "converted"},
     {"gradient_checkpointing_kwargs": {"use_reentrant": True}}),
    ({"include_inputs_for_metrics": True}, {"include_inputs_for_metrics": "converted"},
     {"include_for_metrics": ["inputs"]}),
    ({"push_to_hub_organization": "org", "hub_model_id": "m"}, {"push_to_hub_organization": "converted"},
     {"hub_model_id": "org/m"}),
    ({"use_flash_attention_2": False}, {"use_flash_attention_2": "removed"}, {}),
    ({"rpo_alpha": 1.0, "generate_during_eval": True}, {"rpo_alpha": "removed", "generate_during_eval": "removed"},
     {}),
    ({"lerning_rate": 0.1}, {"lerning_rate": "kept out"}, {}),
    ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, {"env": "removed"}, {}),
    ({"dataset_splits": ["train", "test"], "optim": "adamw_torch", "logging_first_step": False, "max_length": 64},
     {"dataset_splits": "kept out"}, {"optim": "adamw_torch", "logging_first_step": False, "max_length": 64}),
    ({"dataset_mixer": {"a": 0.5, "b": 0}, "dataset_splits": ["train"]},
     {"dataset_mixer": "converted", "dataset_splits": "converted", "optim": "added", "logging_first_step": "added",
      "max_length": "added"},
     {"dataset_mixture": [{"name": "a", "split": "train", "test_split": None, "fraction": 0.5}],
      "optim": "rmsprop", "logging_first_step": True, "max_length": 512}),
])
def test_conversions(old, changed, new):
    migration = migrate.convert(old, "old.yaml")
    assert migration.changed() == changed
    assert migration.config == new


def test_every_table_entry_is_gone_from_the_pinned_stack():
    """A renamed or removed key that still exists would be converted for nothing; a new name that does not exist
    would give a config that fails."""
    known = _known_keys()
    assert not [c.old for c in CHANGES.values() if c.old in known]
    assert not [c.new for c in CHANGES.values() if c.new and c.new not in known]


def test_chat_template_goes_to_a_file(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"tiny_model": "llama", "dataset_name": "data/demo",
                                   "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    migrate.main([str(old), "-o", str(tmp_path / "new.yaml")])
    new = yaml.safe_load((tmp_path / "new.yaml").read_text())
    assert new["chat_template_path"] == str(tmp_path / "new.chat_template.jinja")
    assert (tmp_path / "new.chat_template.jinja").read_text().startswith("{% for m in messages %}")


def test_never_writes_over_a_file_unless_asked(tmp_path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(legacy.HANDBOOK_ZEPHYR_FULL["text"])
    new.write_text("mine\n")
    with pytest.raises(SystemExit) as exit_:
        migrate.main([str(old), "-o", str(new)])
    assert exit_.value.code == 2 and new.read_text() == "mine\n"
    assert capsys.readouterr().err.strip() == (f"error: {new}: exists; choose another output with -o, or pass "
                                               "--force to replace it")
    migrate.main([str(old), "-o", str(new), "--force"])
    assert yaml.safe_load(new.read_text())["dtype"] == "float32"
    migrate.main([str(old)])  # default: next to the old file
    assert (tmp_path / "old.migrated.yaml").is_file()


def test_converted_handbook_recipe_passes_the_audit(tmp_path, tiny_llama):
    """The zephyr recipe with its data pointed at local files (the hub is out of reach in tests): the converted file
    goes through the data audit with a local model's tokenizer."""
    data = demo_subset(tmp_path / "data", 60, 20)
    text = legacy.HANDBOOK_ZEPHYR_FULL["text"].replace("HuggingFaceH4/ultrafeedback_binarized", str(data))
    text = text.replace("- train_prefs", "- train").replace("- test_prefs", "- test")
    _, _, _, path = convert_file(tmp_path, text)
    report = audit.main(["--config", str(path), "--model_name_or_path", str(tiny_llama), "--output_dir",
                         str(tmp_path / "run"), "--dataset_num_proc", "1", *CPU])
    assert report["rows_read"] == 80 and report["splits"]["train"]["rows"] + report["splits"]["eval"]["rows"] == 80


def test_docs_table_lists_every_change():
    rows = {line.split("`")[1]: line for line in (REPO / "docs/migrating.md").read_text().splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(CHANGES)
    for key, change in CHANGES.items():
        assert f"| {change.changed_in or '-'} |" in rows[key], key

"""Configuration: one YAML file, then command-line overrides (TrlParser style), checked before any model loads.

Three dataclasses make the namespace, and keys keep their TRL / transformers names:
- `ScriptArguments`: data and run fields of this project;
- `PreferenceConfig`: TRL's `DPOConfig` plus the knobs of our loss variants;
- `ModelConfig`: TRL's model, quantisation and LoRA fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from trl import DPOConfig, ModelConfig, TrlParser

from dpo_recipes.cli import OneLineErrors, read_yaml
from dpo_recipes.data.sources import check_data_args
from dpo_recipes.errors import UserError
from .losses import LOSSES, MADPO_DEFAULTS, check_loss_config, load_losses_file, needs_margins
from dpo_recipes.names import RUN_CONFIG
from .packing import check_shared_prompts
from dpo_recipes.renames import CHANGES


@dataclass
class ScriptArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, local directory, or local .jsonl/.json/.parquet/.csv file (gzip too)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Held-out split to evaluate on."})
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction carved (with `seed`) into a held-out split when the data has none."},
    )
    dataset_columns: dict | str | None = field(
        default=None,
        metadata={"help": "Column mapping {ours: theirs} for other column names, e.g. {prompt: question, chosen: "
                  "good, rejected: bad} (YAML), or 'prompt=question,chosen=good,rejected=bad' on the command line."},
    )
    dataset_mixture: list | str | None = field(
        default=None,
        metadata={"help": "Several sources instead of dataset_name: a YAML list of {name, split, test_split, config, "
                  "columns, weight or fraction}; on the command line the same list as a YAML string. See docs/data.md."},
    )
    dataset_mixture_rows: int | None = field(
        default=None,
        metadata={"help": "With mixture weights: total training rows (default: the most that repeats no row)."},
    )
    data_stop_on: list[str] | None = field(
        default=None,
        metadata={"help": "Row defects that stop the run instead of being dropped and counted (missing_field, "
                  "wrong_type, empty_field, bad_transcript, prompt_mismatch, identical_pair, duplicate_pair, "
                  "prompt_too_long; or all / none). Default: missing_field wrong_type."},
    )
    tiny_model: str | None = field(
        default=None,
        metadata={"help": "Build a tiny random model of this family (dpo_recipes/models/families.py) locally and train it, "
                  "when model_name_or_path is not given. Used by the CPU demo and smoke tests."},
    )
    chat_template_path: str | None = field(
        default=None, metadata={"help": "A Jinja chat template file that replaces the tokenizer's own."}
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "madpo: a sequence-classification reward model (directory or hub id) that scores every "
                  "pair once for its margin r(chosen) - r(rejected). Train one: python -m dpo_recipes.commands.reward_model."},
    )
    score_chosen_column: str = field(
        default="score_chosen",
        metadata={"help": "madpo without a reward model: column with the chosen reply's score (UltraFeedback style)."},
    )
    score_rejected_column: str = field(
        default="score_rejected", metadata={"help": "madpo without a reward model: the rejected reply's score column."}
    )
    score_margin_scale: float | None = field(
        default=None,
        metadata={"help": "madpo with score columns (an extension, not the paper): the factor that puts score_chosen - "
                  "score_rejected on the logit scale of a Bradley-Terry reward margin, which MADPO's weights and "
                  "tau = ln 999 assume. No default: score columns are refused without it (docs/losses.md)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace whatever output_dir holds. Without it a finished run, or another config's run, "
                  "stops with an error, and an unfinished run of the same config resumes."},
    )
    # The held-out evaluation report written at the end of a run (docs/evaluation.md); `make eval` rewrites it.
    eval_report: bool = field(
        default=True,
        metadata={"help": "Write eval_report.md/.json (held-out rewards, log-probs, KL to the reference, generations) "
                  "at the end of the run."},
    )
    eval_report_pairs: int | None = field(
        default=64, metadata={"help": "Held-out pairs scored by policy and reference for the report (null: all)."}
    )
    eval_report_prompts: int = field(
        default=8, metadata={"help": "Held-out prompts for the KL estimate, the win-rate and the generations."}
    )
    eval_report_samples: int = field(
        default=4, metadata={"help": "Completions sampled from the policy per prompt for the KL estimate."}
    )
    eval_report_max_new_tokens: int = field(
        default=32, metadata={"help": "Longest completion generated for the KL estimate, win-rate and examples."}
    )
    eval_report_examples: int = field(
        default=3, metadata={"help": "Prompts shown with the policy's and the reference's greedy replies side by side."}
    )
    eval_report_generation_batch_size: int = field(
        default=16, metadata={"help": "Sequences the report generates (and scores for the KL) in one batch; larger "
                              "is faster where memory allows (a small model on a CPU: 64)."}
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "A reward model (AutoModelForSequenceClassification, one output) that scores the policy's "
                  "and the reference's greedy replies: the report then gives the policy's win-rate."},
    )
    eval_report_probes: str | None = field(
        default=None,
        metadata={"help": "A probes file (JSON: style_prompts, facts; dpo_recipes/report/probes.py): the report adds the "
                  "share of greedy replies in the chosen style and fact accuracy, reference against policy."},
    )


@dataclass
class PreferenceConfig(DPOConfig):
    ipo_normalize: bool = field(
        default=True,
        metadata={"help": "ipo: divide each side's log-ratio by its completion length (TRL's form); false gives "
                  "the paper's summed form."},
    )
    prefix_sharing: bool = field(
        default=False,
        metadata={"help": "With padding_free: each pair's prompt is computed once, as [prompt | chosen | rejected] "
                  "with a mask that keeps the two replies apart (Wang & Hegde 2024). Same log-probs, fewer tokens. "
                  "Needs attn_implementation sdpa or eager (flex_attention on GPU)."},
    )
    cpu_adapter_matmuls_in_half: bool = field(
        default=True,
        metadata={"help": "bf16 / fp16 weights on a CPU: LoRA's matmuls in that precision on the unconverted input, its "
                  "weights, optimizer and loss still fp32 (models/precision.py); false: PEFT's fp32 adapter matmuls, "
                  "as before this option (for runs that must match earlier ones)."},
    )
    cpu_compact_lm_head: bool = field(
        default=True,
        metadata={"help": "On a CPU: the LM head and an fp32 log-softmax on the scored (completion) positions only "
                  "(models/compact_head.py); TRL's fused head scores every position there. False: TRL's fused head, "
                  "as before this option (for runs that must match earlier ones)."},
    )
    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={"help": "precompute_ref_log_probs: where reference log-probs are cached (default .cache/ref_logps "
                  "in the repository, or $DPO_RECIPES_CACHE/ref_logps)."},
    )
    # MADPO's knobs, with the defaults the loss registered (losses.MADPO_DEFAULTS).
    madpo_c_max: float = field(default=MADPO_DEFAULTS["madpo_c_max"], metadata={"help": "madpo: c_max of the adaptive "
                               "scale."})
    madpo_c_min: float | None = field(default=MADPO_DEFAULTS["madpo_c_min"], metadata={"help": "madpo: c_min (default "
                                      "1/c_max)."})
    madpo_lambda: float = field(default=MADPO_DEFAULTS["madpo_lambda"], metadata={"help": "madpo: steepness lambda."})
    madpo_tau: float = field(default=MADPO_DEFAULTS["madpo_tau"], metadata={"help": "madpo: threshold tau (default "
                             "ln 999)."})
    loss_knobs: dict | str | None = field(
        default=None,
        metadata={"help": "Knobs of losses registered by a recipe's losses.py. Normally written as top-level keys "
                  "(`my_knob: 0.5`, `--my_knob 0.5`), which are collected here and checked against the loss."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated name of activation_checkpointing (transformers 5.24)."}
    )

    def __post_init__(self):
        # TRL's default (checkpointing on) under transformers' current name: TRL sets the deprecated
        # `gradient_checkpointing`, so every run would warn about a key the user never wrote.
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        super().__post_init__()
        if isinstance(self.loss_knobs, str):
            self.loss_knobs = yaml.safe_load(self.loss_knobs)
        if self.loss_knobs is not None and not isinstance(self.loss_knobs, dict):
            raise ValueError(f"loss_knobs must be a mapping of knob: value, got {self.loss_knobs!r}")
        # The loss, its knobs and the batch layout, checked once, where the arguments are made (from a config by
        # parse_config, which turns the ValueError into one line, or in Python): the trainer trusts them.
        check_loss_config(self)


DATACLASSES = (ScriptArguments, PreferenceConfig, ModelConfig)
_UnionType = type(int | None)


class _Parser(OneLineErrors, TrlParser):
    """TrlParser whose errors are one line (argparse would print a usage of several hundred options)."""


def _known_keys() -> set[str]:
    return {f.name for cls in DATACLASSES for f in dataclasses.fields(cls) if f.init}


def _custom_knobs() -> dict[str, object]:
    """Knobs of registered losses that are not fields of the dataclasses (a recipe's own losses): name -> default."""
    fields = _known_keys()
    return {k: v for loss in LOSSES.values() for k, v in loss.knobs.items() if k not in fields}


def _check_knob_type(key: str, value, default, where: str):
    """A custom knob's value must have its default's type; returns it as that type."""
    if default is None or value is None:
        return value
    converted = _config_scalar(value, {type(default)})
    if converted is None:
        raise UserError(f"{where}: key '{key}' must be {type(default).__name__}, got {type(value).__name__} {value!r}")
    return converted


def _config_scalar(value, kinds: set[type]):
    """`value` read as one of `kinds` (bool, int, float, str) the way a config reads it, or None if it is none of
    them: an int is a float, a float may come as text (YAML 1.1 reads 5e-7 as a string), a str key takes a number
    as its text, and a bool is never a number."""
    if isinstance(value, bool):
        return value if bool in kinds else None
    if isinstance(value, int) and int in kinds:
        return value
    if isinstance(value, (int, float)) and float in kinds:
        return float(value)
    if isinstance(value, str) and float in kinds:
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, (str, int, float)) and str in kinds:
        return str(value)
    return None


def _pop_custom_knobs(argv: list[str], config: dict) -> dict:
    """Take the custom loss knobs out of the YAML layers and the command line (TrlParser does not know them)."""
    custom = _custom_knobs()
    knobs = {}
    for key in [k for k in config if k in custom]:
        knobs[key] = config.pop(key)
    i = 0
    while i < len(argv):
        key, eq, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if key in custom:
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"command line: --{key} needs a value")
                value = argv.pop(i + 1)
            argv.pop(i)
            knobs[key] = yaml.safe_load(value)
            continue
        i += 1
    return {k: _check_knob_type(k, v, custom[k], "config") for k, v in knobs.items()}


def _pop_option(argv: list[str], key: str) -> str | None:
    """Take `--key value` / `--key=value` out of argv; its value (the last one given), or None."""
    value, i = None, 0
    while i < len(argv):
        if argv[i] == f"--{key}" and i + 1 < len(argv):
            value = argv.pop(i + 1)
            argv.pop(i)
        elif argv[i].startswith(f"--{key}="):
            value = argv.pop(i).split("=", 1)[1]
        else:
            i += 1
    return value


def _knob_mapping(value) -> dict:
    """loss_knobs as written (a YAML mapping, or its text on the command line), its recipe knobs typed as their
    defaults; one line if it is not a mapping."""
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"config: loss_knobs must be a mapping of knob: value, got {value!r}")
    custom = _custom_knobs()
    return {k: _check_knob_type(k, v, custom[k], "config") if k in custom else v for k, v in value.items()}


def _unknown(keys: list[str], where: str, known: set[str], file: bool = False) -> UserError:
    """One error for all unknown keys: what replaced a renamed or removed key (renames.py), else the closest key."""
    parts = []
    for key in keys:
        if key in CHANGES:
            hint = CHANGES[key].short()
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else ""
        parts.append(f"'{key}'" + (f" ({hint})" if hint else ""))
    noun = "unknown key" if len(keys) == 1 else f"{len(keys)} unknown keys"
    message = f"{where}: {noun} {', '.join(parts)}"
    if file and any(key in CHANGES for key in keys):
        message += f"; `python -m dpo_recipes.commands.migrate {where}` writes a converted copy (docs/migrating.md)"
    return UserError(message)


def _field_types() -> dict[str, typing.Any]:
    types = {}
    for cls in DATACLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            types.setdefault(f.name, hints.get(f.name))
    return types


def _check_yaml_types(config: dict, path: str) -> None:
    """YAML values bypass argparse's type conversion, so check the scalar ones here."""
    types = _field_types()
    for key, value in config.items():
        expected = types.get(key)
        allowed = set(typing.get_args(expected)) if typing.get_origin(expected) in (typing.Union, _UnionType) else {expected}
        if value is None:
            if type(None) not in allowed:
                raise UserError(f"{path}: key '{key}' must not be null")
            continue
        scalar = [t for t in allowed if t in (int, float, bool, str)]
        if not scalar or len(allowed - {type(None)}) != len(scalar):
            continue  # lists, dicts, enums: argparse / the dataclass checks them
        ok = _config_scalar(value, set(scalar)) is not None
        if not ok:
            names = "/".join(t.__name__ for t in scalar)
            raise UserError(f"{path}: key '{key}' must be {names}, got {type(value).__name__} {value!r}")


def read_config_layers(paths: list[str | Path]) -> dict:
    """YAML config files (a recipe, then variants) merged in order, each one's keys checked: later files override
    the keys they set. A file's folder may hold a losses.py, whose losses register their knobs as keys first."""
    config: dict = {}
    for path in paths:
        layer = read_yaml(path)
        load_losses_file(Path(path).parent / "losses.py")
        known = _known_keys() | set(_custom_knobs())
        layer.pop("env", None)  # TrlParser's env block is not supported: keep secrets out of configs
        unknown = [key for key in layer if key not in known]
        if unknown:
            raise _unknown(unknown, str(path), known, file=True)
        _check_yaml_types(layer, str(path))
        config.update(layer)
    return config


def parse_config(argv: list[str] | None = None):
    """Parse `--config file.yaml` and overrides into (script_args, training_args, model_args), validated."""
    argv = list(sys.argv[1:] if argv is None else argv)
    paths = []
    while "--config" in argv:  # several files: each later one overrides the keys it sets (a recipe, then a variant)
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("command line: --config needs a file path")
        paths.append(argv[i + 1])
        del argv[i : i + 2]
    config = read_config_layers(paths)
    known = _known_keys() | set(_custom_knobs())
    keys = [token[2:].split("=", 1)[0] for token in argv if token.startswith("--")]
    unknown = [key for key in keys if key not in known and key.removeprefix("no_") not in known]  # --no_x: not x
    if unknown:
        raise _unknown(unknown, "command line", known)

    given = set(config) | {t[2:].split("=", 1)[0].removeprefix("no_") for t in argv if t.startswith("--")}
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in given and new in given:  # transformers would silently ignore the old one
            raise UserError(f"config: {old} and {new} are both set; {old} is the deprecated name of {new} "
                            f"(transformers 5.24): keep only {new}")
    # A recipe's own knobs (top-level keys) join loss_knobs (YAML, then --loss_knobs) before the arguments are made.
    config["loss_knobs"] = {**_knob_mapping(config.get("loss_knobs")), **_knob_mapping(_pop_option(argv, "loss_knobs")),
                            **_pop_custom_knobs(argv, config)} or None
    parser = _Parser(DATACLASSES)
    parser.set_defaults_with_config(**config)
    try:
        script_args, training_args, model_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a dataclass __post_init__ refused a value
        raise UserError(f"config: {err}") from None
    validate(script_args, training_args, model_args)
    # A lora_dropout the user wrote (ModelConfig's own default is 0.05) that TRL's disable_dropout zeroes.
    if "lora_dropout" in given and model_args.use_peft and model_args.lora_dropout > 0 and training_args.disable_dropout:
        raise UserError(f"config: lora_dropout {model_args.lora_dropout} does nothing while disable_dropout is true "
                        "(TRL sets every dropout to 0, LoRA's included); set lora_dropout: 0.0, or disable_dropout: "
                        "false to train with dropout")
    if training_args.hub_token:
        # Trainer pickles its arguments into every checkpoint (training_args.bin); keep the token in the
        # environment, where huggingface_hub reads it, and out of anything written to disk.
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
    return script_args, training_args, model_args


def validate(script_args: ScriptArguments, args: PreferenceConfig, model_args: ModelConfig) -> None:
    """Combinations that cannot work, or would silently do nothing, stop here with one line."""
    ours = [t for t in args.loss_type if t in LOSSES]
    if model_args.bnb_4bit_quant_storage is not None and not model_args.load_in_4bit:
        raise UserError("config: bnb_4bit_quant_storage is only used with load_in_4bit")
    if args.prefix_sharing:  # the model's side of it (packed rows: checked by PreferenceConfig)
        try:
            check_shared_prompts(model_args.attn_implementation)
        except ValueError as err:
            raise UserError(f"config: {err}") from None
        if not ours:
            raise UserError(f"config: prefix_sharing is implemented for loss_type {list(LOSSES)}, not {args.loss_type}")
    for key in args.loss_knobs or {}:  # typed by _knob_mapping; the loss's own checks ran in PreferenceConfig
        owners = [name for name, loss in LOSSES.items() if key in loss.knobs]
        if not owners:
            raise _unknown(key, "config: loss_knobs", set(_custom_knobs()))
        if not set(owners) & set(ours):
            raise UserError(f"config: key '{key}' is a knob of loss_type {', '.join(owners)}, which is not selected "
                            f"(loss_type {args.loss_type}); it would do nothing")
    margins = needs_margins(args.loss_type)
    if script_args.reward_model_name_or_path and not margins:
        raise UserError(f"config: reward_model_name_or_path is only used by a loss that needs reward margins (madpo), "
                        f"got {args.loss_type}")
    if script_args.score_margin_scale is not None:
        if not margins or script_args.reward_model_name_or_path:
            raise UserError("config: score_margin_scale is only used by loss_type madpo with score columns (no "
                            "reward_model_name_or_path)")
        if not script_args.score_margin_scale > 0:
            raise UserError(f"config: score_margin_scale must be > 0, got {script_args.score_margin_scale}")
    if not 0.0 < script_args.eval_fraction < 1.0:
        raise UserError(f"config: eval_fraction must be in (0, 1), got {script_args.eval_fraction}")
    check_data_args(script_args)
    validate_report_args(script_args)
    check_report_to(args.report_to)
    check_liger(args)
    if model_args.model_name_or_path is None and script_args.tiny_model is None:
        raise UserError("config: set model_name_or_path (a hub id, a local directory or a project model such as "
                        "smollm2-135m-instruct) or tiny_model")
    if model_args.load_in_4bit and not model_args.use_peft:
        raise UserError("config: load_in_4bit (QLoRA) needs use_peft: true; 4-bit weights cannot be fine-tuned fully")
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise UserError("config: choose one of load_in_4bit and load_in_8bit")
    if args.precompute_ref_log_probs and args.sync_ref_model:
        raise UserError("config: precompute_ref_log_probs cannot be combined with sync_ref_model (the reference "
                        "changes during training)")
    if args.sync_ref_model and model_args.use_peft:
        raise UserError("config: sync_ref_model is not supported with use_peft (the reference is the base model "
                        "with adapters disabled)")


# ---------------------------------------------------------------------------------------------------------------
# A finished run's config, read back from its run folder (make eval, make merge)


@dataclass(frozen=True)
class SavedTraining:
    """The training arguments that outlive the run (the report, the card, the push, the merge), as run_config.json
    keeps them. Same names as PreferenceConfig's, so what reads them takes either; rebuilding a PreferenceConfig
    from the file would re-run transformers' checks of the machine (a GPU run's bf16 on a CPU)."""

    beta: float = 0.1
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    per_device_eval_batch_size: int = 8
    seed: int = 42
    padding_free: bool = False
    prefix_sharing: bool = False
    trust_remote_code: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool | None = None
    hub_revision: str | None = None


def read_run_config(run_dir: Path) -> tuple[ScriptArguments, SavedTraining, ModelConfig]:
    """(script_args, training, model_args) of the run that wrote `run_dir`, typed."""
    path = run_dir / RUN_CONFIG
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UserError(f"{run_dir}: no {RUN_CONFIG}; not a run folder of this project")
    config = json.loads(path.read_text())

    def build(cls, values: dict):
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.init and f.name in values})

    return (build(ScriptArguments, config["script"]), build(SavedTraining, config["training"]),
            build(ModelConfig, config["model"]))


def validate_report_args(script_args: ScriptArguments) -> None:
    """The evaluation report's settings (also checked by `make eval`, which can change them)."""
    for key in ("eval_report_pairs", "eval_report_prompts", "eval_report_samples", "eval_report_max_new_tokens",
                "eval_report_examples", "eval_report_generation_batch_size"):
        value = getattr(script_args, key)
        smallest = 0 if key == "eval_report_examples" else 1
        if value is not None and value < smallest:
            raise UserError(f"config: {key} must be an integer >= {smallest}, got {value}")
    if script_args.eval_report_examples > script_args.eval_report_prompts:
        raise UserError(f"config: eval_report_examples ({script_args.eval_report_examples}) cannot exceed "
                        f"eval_report_prompts ({script_args.eval_report_prompts})")
    judge = script_args.judge_model
    # A local judge that is not there stops now, not after training; "org/name" may be a hub id.
    if judge and not Path(judge).exists() and (judge.startswith((".", "/", "~")) or judge.count("/") > 1):
        raise UserError(f"config: judge_model {judge!r} not found (a reward model folder or a hub id)")
    probes = script_args.eval_report_probes
    if probes and not Path(probes).is_file():  # stops before training, not after
        raise UserError(f"config: eval_report_probes {probes!r}: file not found")


# report_to integration -> the package it needs (transformers only finds out at Trainer start, after the model loads).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
                    "comet_ml": "comet_ml", "clearml": "clearml", "swanlab": "swanlab", "dvclive": "dvclive"}


def check_liger(args) -> None:
    """use_liger_kernel: transformers only imports Liger once the model has loaded; say now when it cannot run."""
    if not args.use_liger_kernel:
        return
    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError("config: use_liger_kernel needs the liger-kernel package, which is not installed (pip install "
                        "liger-kernel, on a machine with a CUDA GPU); or set use_liger_kernel: false")
    if args.use_cpu or not torch.cuda.is_available():
        raise UserError("config: use_liger_kernel needs a CUDA GPU (Liger's kernels are Triton GPU kernels) and this "
                        "run has none; set use_liger_kernel: false")


# The trackers requirements-trackers.txt pins, installed into .venv by `make trackers`.
OPTIONAL_TRACKERS = ("wandb", "trackio")


def missing_trackers(report_to) -> list[str]:
    """The report_to integrations whose package is not installed."""
    return [name for name in report_to or []
            if name in TRACKER_PACKAGES and importlib.util.find_spec(TRACKER_PACKAGES[name]) is None]


def check_report_to(report_to) -> None:
    missing = missing_trackers(report_to)
    if missing:
        name = missing[0]
        package = TRACKER_PACKAGES[name]
        how = ("`make trackers` installs it (requirements-trackers.txt)" if package in OPTIONAL_TRACKERS
               else f"pip install {package}")
        raise UserError(f"config: report_to {name} needs the {package} package, which is not installed: {how}")

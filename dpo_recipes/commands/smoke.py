"""`make smoke RECIPE=<name>`: a recipe run end to end on CPU through its own launcher config, then its result checked.

The smoke keeps the recipe's launcher (DeepSpeed stage and JSON, DDP or one process), its PEFT and quantisation
settings (LoRA targets, rank, 4-bit nf4 with double quantisation), its precision (bf16), loss, schedule and
gradient checkpointing. It changes only what a CPU without downloads needs, and prints each change:

- model: a tiny random model of the recipe's `tiny_model` family (same architecture class and chat template),
  built locally, instead of the hub model;
- data: the first rows of the bundled data/demo instead of the hub dataset;
- length: 3 optimizer steps with micro-batch 2 and at most 2 accumulation steps, evaluation once at the end, and
  an end-of-run report on 16 pairs and 1 prompt with 8-token generations;
- learning_rate: 1e-3, so that 3 steps move a random model's weights by more than bf16 rounding (at the recipe's
  5e-7 the saved bf16 weights would barely differ from the initial ones, and the check below would prove little);
- launcher: the same accelerate config with `use_cpu: true`, at most 2 processes on one machine (so ZeRO still
  shards across ranks over gloo), DDP as MULTI_CPU, a free port, and no `mixed_precision` key (bf16 comes from the
  recipe's `bf16: true`: CPU autocast without DeepSpeed, DeepSpeed's bf16 engine with it).

After training it reloads the saved adapter (onto the base loaded as the recipe loads it, 4-bit included) or the
consolidated ZeRO-3 weights, checks they are complete, and checks that they change the model's log-probs.

    python -m dpo_recipes.commands.smoke run recipes/<name> [--variant ipo] [--out DIR]
    python -m dpo_recipes.commands.smoke check-device recipes/<name>/accelerate.yaml --recipe <name> [launch args]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from dpo_recipes.cli import CommandParser, read_yaml
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.models.families import FAMILIES, unknown_family
from .launchers import cpu_launcher_config, deepspeed_json, launch_count, needs_gpu
from dpo_recipes.names import REPO_ROOT
from .variants import variant_files

# Only the standard library and yaml at import time: `make train` runs check-device before every launch.

SMOKE_STEPS = 3
SMOKE_LEARNING_RATE = 1e-3
SMOKE_MICRO_BATCH = 2
SMOKE_MAX_ACCUMULATION = 2
SMOKE_ROWS = {"train": 64, "test": 16}
MIN_LOGPROB_CHANGE = 1e-4  # a trained result must move some log-prob by more than this (untrained: exactly 0)
REPORT = "smoke_report.json"
PROBE = [  # the conversation whose log-probs are compared before and after
    {"role": "user", "content": "What is the capital of Peru?"},
    {"role": "assistant", "content": "Of course. The capital of Peru is Lima. Let me know if you have more questions."},
]


# ----------------------------------------------------------------------------------------------------------------
# Does this machine have the launcher's GPUs?


def check_device(launcher_path: Path, recipe: str, launch_args: list[str]) -> None:
    """Stop before launching when the launcher wants CUDA GPUs this machine does not have."""
    launcher = read_yaml(launcher_path)
    if not needs_gpu(launcher):
        return
    import torch  # here, not at the top: check-device runs before every `make train` and stays light

    machines = launch_count(launch_args, "num_machines", int(launcher.get("num_machines", 1)))
    wanted = launch_count(launch_args, "num_processes", int(launcher.get("num_processes", 1))) // max(machines, 1)
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        raise UserError(f"recipe {recipe} trains on {wanted} CUDA GPU(s) ({launcher_path}) and this machine has none; "
                        f"to check the recipe on CPU run: make smoke RECIPE={recipe}")
    if have < wanted:
        raise UserError(f"recipe {recipe} starts {wanted} processes per machine ({launcher_path}) but this machine "
                        f"has {have} GPU(s); pass LAUNCH_ARGS='--num_processes {have}' (and raise "
                        "gradient_accumulation_steps to keep the global batch)")


# ----------------------------------------------------------------------------------------------------------------
# The smoke run


def write_smoke_data(out: Path) -> Path:
    """The first rows of each bundled demo split (the same pairs every time)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, rows in SMOKE_ROWS.items():
        with open(REPO_ROOT / "data" / "demo" / f"{split}.jsonl") as src:
            lines = [line for _, line in zip(range(rows), src)]
        (data / f"{split}.jsonl").write_text("".join(lines))
    return data


def smoke_overrides(config: dict, model_dir: Path, data_dir: Path, run_dir: Path) -> list[str]:
    """Command-line overrides applied on top of the recipe's config (and variant), in the order they are printed."""
    accumulation = min(int(config.get("gradient_accumulation_steps", 1)), SMOKE_MAX_ACCUMULATION)
    overrides = {
        "model_name_or_path": model_dir,
        "dataset_name": data_dir,
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        "output_dir": run_dir,
        "max_steps": SMOKE_STEPS,
        "per_device_train_batch_size": SMOKE_MICRO_BATCH,
        "per_device_eval_batch_size": 8,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": SMOKE_LEARNING_RATE,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "push_to_hub": "false",
        "dataloader_num_workers": 0,
        "use_cpu": "true",
        # The end-of-run report still runs (its model loading is part of every run), on a few short generations.
        "eval_report_pairs": 16,
        "eval_report_prompts": 1,
        "eval_report_samples": 2,
        "eval_report_max_new_tokens": 8,
        "eval_report_examples": 1,
    }
    return [token for key, value in overrides.items() for token in (f"--{key}", str(value))]


def _run_config_args(recipe_dir: Path, variant: str | None) -> list[str]:
    args = ["--config", str(recipe_dir / "config.yaml")]
    for path in variant_files(recipe_dir, variant) if variant else []:
        args += ["--config", str(path)]
    return args


def run_smoke(recipe_dir: Path, out: Path, variant: str | None = None) -> dict:
    # Imported here: `smoke check-device`, which runs before every `make train`, must not pay TRL's import time.
    from dpo_recipes.train.config import parse_config
    from dpo_recipes.models.loading import CACHE_DIR
    from dpo_recipes.models.tiny import build_tiny, supports_sdpa

    recipe_dir = recipe_dir.resolve()
    name = recipe_dir.name
    config = read_yaml(recipe_dir / "config.yaml")
    family = config.get("tiny_model")
    if family not in FAMILIES:
        raise UserError(unknown_family(family, str(recipe_dir / "config.yaml")))
    if config.get("attn_implementation") == "sdpa" and not supports_sdpa(family):
        raise UserError(f"{recipe_dir / 'config.yaml'}: attn_implementation sdpa: the {family} family's "
                        f"{FAMILIES[family].model_class} has no SDPA attention in transformers; set eager (or "
                        "flash_attention_2 on a GPU)")
    launcher = read_yaml(recipe_dir / "accelerate.yaml")
    cpu_launcher = cpu_launcher_config(launcher)
    deepspeed_json(launcher)  # fail early on a missing JSON

    out = out.resolve()
    if out.exists():
        print(f"smoke: replacing the previous smoke output in {out}", flush=True)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    launcher_path = out / "accelerate.yaml"
    launcher_path.write_text(json.dumps(cpu_launcher, indent=2) + "\n")  # JSON is valid YAML
    model_dir = build_tiny(family, CACHE_DIR / f"tiny-{family}")
    data_dir = write_smoke_data(out)
    run_dir = out / "run"
    overrides = smoke_overrides(config, model_dir, data_dir, run_dir)
    config_args = _run_config_args(recipe_dir, variant)
    parse_config(config_args + overrides)  # a bad recipe or variant stops here with one line, not in N processes

    print(f"smoke {name}: launcher {recipe_dir / 'accelerate.yaml'} -> {launcher_path} "
          f"(use_cpu, {cpu_launcher['num_processes']} process(es), no mixed_precision key)", flush=True)
    print(f"smoke {name}: overrides {' '.join(overrides)}", flush=True)
    command = [sys.executable, "-m", "dpo_recipes.commands.launch", "--config_file", str(launcher_path),
               str(recipe_dir / "train.py"), *config_args, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env)
    if proc.returncode == 2:  # a user error, already printed as one line
        sys.exit(2)
    if proc.returncode != 0:
        raise SmokeFailed(f"smoke {name}: training exited {proc.returncode} (its output is above)")

    report = check_result(run_dir, model_dir, config_args + overrides)
    report.update(recipe=name, variant=variant, launcher=cpu_launcher, overrides=overrides)
    (out / REPORT).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


class SmokeFailed(Exception):
    """The recipe ran but its result is wrong (or it did not run): not a user error, exit 1 with the reason."""


# ----------------------------------------------------------------------------------------------------------------
# Checking the result


def _safetensors_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def probe_logprobs(model, tokenizer):
    """Log-softmax over the vocabulary at every position of PROBE, in float32."""
    import torch  # here, not at the top: check-device stays light

    ids = tokenizer.apply_chat_template(PROBE, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return torch.log_softmax(model(ids.to(model.device)).logits.float(), dim=-1)


def check_result(run_dir: Path, base_dir: Path, argv: list[str]) -> dict:
    """Reload what the run saved and measure how much it changes the model's log-probs; raise if it does not."""
    # Imported here, as in run_smoke: check-device stays light.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_recipes.train.config import parse_config  # (the same reason)
    from dpo_recipes.models.loading import load_model  # (the same reason)

    _, training_args, model_args = parse_config(argv)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if len(losses) != SMOKE_STEPS or not all(math.isfinite(v) for v in losses):
        raise SmokeFailed(f"smoke: expected {SMOKE_STEPS} finite logged losses, got {losses}")
    launch = json.loads((run_dir / "launch.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    base_shapes = _safetensors_shapes(base_dir)

    if model_args.use_peft:
        from peft import PeftModel  # here: check-device stays light

        adapter = _safetensors_shapes(run_dir)
        targets = sorted({key.split(".")[-3] for key in adapter if ".lora_B." in key})
        expected = sorted(model_args.lora_target_modules)
        if targets != expected or any(0 in shape for shape in adapter.values()):
            raise SmokeFailed(f"smoke: adapter in {run_dir} has LoRA on {targets} (want {expected}) or empty tensors")
        base, _ = load_model(str(base_dir), model_args, trust_remote_code=False)  # 4-bit when the recipe is QLoRA
        model = PeftModel.from_pretrained(base, run_dir).eval()
        after = probe_logprobs(model, tokenizer)
        with model.disable_adapter():
            before = probe_logprobs(model, tokenizer)
        result = {"result": "adapter", "lora_modules": targets, "adapter_tensors": len(adapter),
                  "base_quantized_4bit": bool(getattr(base, "is_loaded_in_4bit", False))}
    else:
        saved = _safetensors_shapes(run_dir)
        if saved != base_shapes:  # a ZeRO-3 save without the 16-bit gather leaves empty or missing tensors
            missing = sorted(set(base_shapes) - set(saved))[:3]
            wrong = sorted(k for k in set(base_shapes) & set(saved) if base_shapes[k] != saved[k])[:3]
            raise SmokeFailed(f"smoke: saved weights in {run_dir} are incomplete (missing {missing}, wrong shape "
                              f"{wrong}); a ZeRO-3 config needs stage3_gather_16bit_weights_on_model_save: true")
        tuned = AutoModelForCausalLM.from_pretrained(run_dir, dtype="auto").eval()
        # Compare against the initial weights in the saved dtype: an untrained bf16 save equals them exactly.
        initial = AutoModelForCausalLM.from_pretrained(base_dir, dtype=tuned.dtype).eval()
        after, before = probe_logprobs(tuned, tokenizer), probe_logprobs(initial, tokenizer)
        result = {"result": "full", "saved_dtype": str(tuned.dtype).removeprefix("torch."), "tensors": len(saved)}

    change = (after - before).abs().max().item()
    if not math.isfinite(change) or change <= MIN_LOGPROB_CHANGE:
        raise SmokeFailed(f"smoke: the saved {result['result']} changes log-probs by {change:.3g} "
                          f"(must be > {MIN_LOGPROB_CHANGE}): training did not reach the saved result")
    return {**result, "max_logprob_change": change, "losses": losses, "launch": launch,
            "bf16": bool(training_args.bf16)}


# ----------------------------------------------------------------------------------------------------------------
# Command line


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(prog="python -m dpo_recipes.commands.smoke", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="smoke-test a recipe on CPU")
    run.add_argument("recipe_dir", type=Path)
    run.add_argument("--variant", default=None, help="a loss variant (variants/<name>.yaml, then the recipe's own)")
    run.add_argument("--out", type=Path, default=None, help="default: outputs/smoke/<recipe>")
    device = commands.add_parser("check-device", help="stop with one line if the launcher needs GPUs this machine lacks")
    device.add_argument("launcher", type=Path)
    device.add_argument("--recipe", required=True)
    args, rest = parser.parse_known_args(argv)

    if args.command == "check-device":
        check_device(args.launcher, args.recipe, rest)
        return
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if not (args.recipe_dir / "train.py").is_file():
        raise UserError(f"{args.recipe_dir}: not a recipe folder (no train.py)")
    out = args.out or REPO_ROOT / "outputs" / "smoke" / args.recipe_dir.resolve().name
    try:
        report = run_smoke(args.recipe_dir, out, args.variant)
    except SmokeFailed as err:
        print(f"FAILED: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    launch = report["launch"]
    print(f"smoke {report['recipe']}: OK - {launch['num_processes']} process(es), {launch['distributed_type']}"
          f"{' ZeRO-' + str(launch['zero_stage']) if launch.get('zero_stage') is not None else ''}, "
          f"mixed precision {launch['mixed_precision']}, losses {[round(v, 4) for v in report['losses']]}, "
          f"{report['result']} reloaded, max |change in log-prob| {report['max_logprob_change']:.3g} "
          f"(report: {out / REPORT})", flush=True)


if __name__ == "__main__":
    main()

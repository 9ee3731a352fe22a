"""The model card (README.md) of a run folder or a merged export, and the optional push to the Hugging Face Hub.

The card is built from what the run wrote: manifest.json (config, versions, data fingerprints, git commit),
data_audit.json, eval_metrics.json (the trainer's final held-out evaluation), eval_report.json and plots/. Every
value passes through `reporting.redact`, so tokens and secrets from the environment never reach it. It replaces the
generic card PEFT / TRL write when the model is saved (the run's own card carries the same facts and more).

Pushing is off unless `push_to_hub: true` (training) or `--push_to_hub` (merge); the repository is `hub_model_id`,
else the folder's name, as in transformers' Trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from dpo_recipes.errors import UserError
from dpo_recipes.models.pretrained import PRETRAINED, is_pretrained
from .run_record import PLOTS, redact

CARD_MARK = "<!-- written by dpo-recipes: model_card.py -->"
# Recipe settings shown in the card's table (the full resolved config is in manifest.json).
TRAINING_KEYS = ("loss_type", "beta", "label_smoothing", "learning_rate", "lr_scheduler_type", "warmup_steps",
                 "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "max_length", "optim", "bf16", "activation_checkpointing", "seed")
MODEL_KEYS = ("model_name_or_path", "dtype", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
              "lora_target_modules", "load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant")


def _read(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def hub_repo_id(training: dict, folder: Path) -> str:
    """The repository a push goes to: hub_model_id, else the folder's name (Trainer's rule)."""
    return training.get("hub_model_id") or Path(folder).name


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _base_model(manifest: dict) -> str:
    model = manifest["config"]["model"]
    name = model.get("model_name_or_path")
    if is_pretrained(name):
        spec = PRETRAINED[name]
        return f"{spec.original} ({spec.quantisation} weights dequantised to float32: {name}, dpo_recipes.models.pretrained)"
    if name:
        return name
    tiny = manifest["config"]["script"].get("tiny_model")
    return f"tiny random {tiny} model built locally (dpo_recipes.models.tiny)" if tiny else "unknown"


def build_card(run_dir: Path, merged: dict | None = None) -> str:
    """The card's Markdown. `merged`: the merge record (merge.py) when the card describes a merged export."""
    manifest = _read(run_dir / "manifest.json")
    if manifest is None:

        raise UserError(f"{run_dir}: no manifest.json; the model card is written from a finished run's folder")
    manifest = redact(manifest)
    script, training, model = (manifest["config"][k] for k in ("script", "training", "model"))
    base = _base_model(manifest)
    is_peft = bool(model.get("use_peft"))
    method = ("QLoRA" if model.get("load_in_4bit") else "LoRA") if is_peft else "full fine-tune"
    losses = training.get("loss_type") or ["sigmoid"]
    hub_base = model.get("model_name_or_path") if model.get("model_name_or_path") and not Path(
        str(model.get("model_name_or_path"))).exists() else None
    if is_pretrained(hub_base):
        hub_base = PRETRAINED[hub_base].original

    front = ["---", f"library_name: {'transformers' if merged or not is_peft else 'peft'}"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += ["tags:", "- dpo", "- trl", "- dpo-recipes"] + [f"- {t}" for t in losses]
    if is_peft:
        front.append(f"- {method.lower()}")
    dataset = script.get("dataset_name")
    if dataset and not Path(str(dataset)).exists():
        front += ["datasets:", f"- {dataset}"]
    front += ["pipeline_tag: text-generation", "---", CARD_MARK, ""]

    title = hub_repo_id(training, run_dir) if not merged else Path(merged["out_dir"]).name
    lines = front + [
        f"# {title}",
        "",
        f"Direct preference optimisation ({', '.join(losses)}, beta {_fmt(training.get('beta'))}) of {base}, "
        f"{method}, trained with the dpo-recipes recipe `{manifest.get('recipe')}` on TRL.",
    ]
    if merged:
        lines += ["", f"This folder holds the {merged['adapter']} adapter of run `{merged['run_name']}` merged into "
                  f"the base weights, loaded in {merged['dtype']} (not quantised), saved as safetensors. It loads "
                  "with `AutoModelForCausalLM.from_pretrained(folder)`, no PEFT needed."]
    else:
        lines += ["", "Load it with `peft.AutoPeftModelForCausalLM.from_pretrained(folder)` (the adapter) or "
                  "`make merge RUN=<folder> OUT=<dir>` for standalone weights." if is_peft else
                  "Load it with `AutoModelForCausalLM.from_pretrained(folder)`."]

    lines += ["", "## Training configuration", "", "| key | value |", "|---|---|"]
    for key in MODEL_KEYS:
        if model.get(key) is not None and (is_peft or not key.startswith(("lora", "load_in", "bnb", "use_bnb"))):
            lines.append(f"| {key} | {_fmt(model[key])} |")
    for key in TRAINING_KEYS:
        if training.get(key) is not None:
            lines.append(f"| {key} | {_fmt(training[key])} |")
    launch = _read(run_dir / "launch.json") or {}
    if launch:
        lines.append(f"| processes | {launch.get('num_processes')} ({launch.get('distributed_type')}, "
                     f"ZeRO stage {launch.get('zero_stage')}, {launch.get('device')}) |")
    lines += ["", "The full resolved configuration is in `manifest.json`."]

    lines += ["", "## Data", ""]
    if script.get("dataset_mixture"):
        lines.append(f"Mixture: `{_fmt(script['dataset_mixture'])}`.")
    else:
        lines.append(f"`{dataset}` (train split `{script.get('dataset_train_split')}`, held-out split "
                     f"`{script.get('dataset_test_split')}`).")
    for name, info in (manifest.get("datasets") or {}).items():
        lines.append(f"- {name}: {info.get('rows')} pairs (fingerprint `{info.get('fingerprint')}`)")
    audit = _read(run_dir / "data_audit.json")
    if audit:
        dropped = {k: v for k, v in (audit.get("dropped") or {}).items() if v}
        lines.append(f"- audit: {audit.get('rows_read')} rows read, {audit.get('kept')} kept, dropped: "
                     f"{', '.join(f'{k} {v}' for k, v in dropped.items()) or 'none'} (`data_audit.json`)")

    lines += ["", "## Metrics", ""]
    metrics = _read(run_dir / "eval_metrics.json")
    if metrics:
        lines += ["Trainer's final evaluation on the held-out split:", "", "| metric | value |", "|---|---|"]
        for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen",
                    "eval_rewards/rejected", "eval_logps/chosen", "eval_logps/rejected"):
            if key in metrics:
                lines.append(f"| {key} | {_fmt(metrics[key])} |")
    report = _read(run_dir / "eval_report.json")
    if report:
        kl, pairs = report["kl"], report["pairs"]
        lines += ["", "From the evaluation report (`eval_report.md`):", "",
                  f"- reward accuracy {pairs['reward_accuracy']['mean']:.3f}, margin {pairs['reward_margin']['mean']:.3f} "
                  f"on {pairs['pairs']} held-out pairs",
                  f"- KL(policy ‖ reference) {kl['k1']['per_completion']['mean']:.4f} ± "
                  f"{kl['k1']['per_completion']['se']:.4f} nats per completion (k1 Monte-Carlo, {kl['completions']} "
                  "sampled completions)"]
        if "win_rate" in report:
            w = report["win_rate"]
            lines.append(f"- win-rate against the reference {w['win_rate']:.3f} (95% Wilson [{w['ci95'][0]:.3f}, "
                         f"{w['ci95'][1]:.3f}], {w['n']} prompts, judge `{w['judge_model']}`)")
    if not metrics and not report:
        lines.append("No held-out metrics were written for this run.")

    plots = [name for name, _, _ in PLOTS if (run_dir / "plots" / name).is_file()]
    if plots:
        lines += ["", "## Training curves", ""] + [f"![{name[:-4]}](plots/{name})" for name in plots]

    versions = manifest.get("versions") or {}
    lines += ["", "## Versions", "",
              ", ".join(f"{k} {v}" for k, v in versions.items() if v) + f"; Python {manifest.get('python')}",
              f"dpo-recipes commit `{manifest.get('git_commit')}`"]
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: str | Path, out_dir: str | Path | None = None, merged: dict | None = None) -> Path:
    """Write README.md into `out_dir` (default: the run folder); returns its path."""
    run_dir = Path(run_dir)
    path = Path(out_dir or run_dir) / "README.md"
    text = build_card(run_dir, merged)
    if path.is_file() and CARD_MARK not in path.read_text():
        print(f"{path}: replacing the generic card written when the model was saved", flush=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, revision: str | None = None,
                commit_message: str = "dpo-recipes: upload") -> str:
    """Upload a run folder or merged export to the Hub (checkpoints and temporary files left out); returns the
    commit URL. The token comes from the environment (HF_TOKEN) or `hf auth login`."""


    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message, ignore_patterns=["checkpoint-*", "*.tmp"])
    except (OSError, HfHubHTTPError) as err:  # no network, offline mode, no or wrong token, no write access
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"push to the Hub repository {repo_id!r} failed: {first} ({folder} is complete and kept; "
                        "push it again with huggingface_hub's upload_folder or `hf upload`)") from None
    return str(getattr(info, "commit_url", info))

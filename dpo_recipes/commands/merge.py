"""Merge a run's LoRA adapter into the base weights: a standalone model folder (safetensors, tokenizer, model card).

    make merge RUN=<run dir> OUT=<new dir> [ARGS="--dtype bfloat16 --push_to_hub --hub_model_id me/model"]
    python -m dpo_recipes.commands.merge RUN OUT [--dtype D] [--overwrite] [--push_to_hub] [--hub_model_id ID]

The base model is loaded unquantised in the compute dtype the run used (`dtype`; for QLoRA also its 4-bit compute
dtype), the adapter is applied with PEFT and folded in with `merge_and_unload`. For a QLoRA run this gives the base
weights plus the adapter: the 4-bit rounding of the base that training saw is not in the merged model (the
difference is the quantisation error, reported by tests/e2e/test_make_merge.py and docs/evaluation.md).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_recipes.cli import CommandParser
from dpo_recipes.train.config import read_run_config
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.report.model_card import hub_repo_id, push_folder, write_model_card
from dpo_recipes.models.loading import resolve_model_path
from dpo_recipes.report.run_record import write_json

MERGE_RECORD = "merge_info.json"
DTYPES = ("float32", "bfloat16", "float16")
# Files of the run folder that the merged export keeps beside the weights (the model card links them).
CARRIED = ("manifest.json", "eval_report.md", "eval_report.json", "eval_metrics.json", "data_audit.json")


def merge_dtype(model: dict, requested: str | None) -> str:
    """The dtype to merge in: the one asked for, else the run's compute dtype (float32 when the run had none)."""
    if requested is not None:
        if requested not in DTYPES:
            raise UserError(f"--dtype: must be one of {', '.join(DTYPES)}, got {requested!r}")
        return requested
    dtype = model.get("dtype")
    return dtype if dtype in DTYPES else "float32"


def adapter_model(run_dir: Path, dtype_name: str):
    """The run's base model, unquantised in `dtype_name`, with the run's adapter applied by PEFT (not merged)."""
    script_args, training, model_args = read_run_config(run_dir)
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model_args, script_args.tiny_model),
        revision=model_args.model_revision if model_args.model_name_or_path else None,
        dtype=getattr(torch, dtype_name),  # never quantised: the adapter is folded into full-precision weights
        trust_remote_code=training.trust_remote_code,
        use_safetensors=True,
    )
    return PeftModel.from_pretrained(base, run_dir)


def merge_run(run_dir: str | Path, out_dir: str | Path, dtype: str | None = None, overwrite: bool = False) -> dict:
    """Merge the adapter of `run_dir` into its base model and save it to `out_dir`; returns the merge record."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    script_args, _, model_args = read_run_config(run_dir)
    dtype_name = merge_dtype(json.loads((run_dir / "run_config.json").read_text())["model"], dtype)
    if not (run_dir / "adapter_config.json").is_file():
        if (run_dir / "config.json").is_file():
            raise UserError(f"{run_dir}: holds a full fine-tune (config.json, no adapter): nothing to merge; "
                            "load the folder directly")
        raise UserError(f"{run_dir}: no adapter_config.json (the run has not saved its adapter)")
    if out_dir.resolve() == run_dir.resolve():
        raise UserError(f"{out_dir}: OUT must differ from the run folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"{out_dir}: is not empty; choose a new OUT or pass --overwrite")
        shutil.rmtree(out_dir)

    merged = adapter_model(run_dir, dtype_name).merge_and_unload(safe_merge=True)  # safe_merge: stop on NaN/inf
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(out_dir)
    for name in CARRIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    if (run_dir / "plots").is_dir():
        shutil.copytree(run_dir / "plots", out_dir / "plots")
    record = {
        "run_dir": str(run_dir),
        "run_name": run_dir.name,
        "out_dir": str(out_dir),
        "base_model": model_args.model_name_or_path or f"tiny_model: {script_args.tiny_model}",
        "adapter": "QLoRA" if model_args.load_in_4bit else "LoRA",
        "dtype": dtype_name,
        "base_loaded_quantized": False,
    }
    write_json(out_dir / MERGE_RECORD, record)
    write_model_card(run_dir, out_dir, merged=record)
    return record


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m dpo_recipes.commands.merge", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished LoRA / QLoRA run folder")
    parser.add_argument("out_dir", help="a new folder for the merged model")
    parser.add_argument("--dtype", default=None, help=f"one of {', '.join(DTYPES)} (default: the run's dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument("--push_to_hub", action="store_true", help="upload the merged folder to the Hub")
    parser.add_argument("--hub_model_id", default=None, help="the Hub repository (default: OUT's folder name)")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    args = parser.parse_args(argv)
    record = merge_run(args.run_dir, args.out_dir, args.dtype, args.overwrite)
    print(f"merged {args.run_dir} ({record['adapter']}) into {record['base_model']} in {record['dtype']} -> "
          f"{args.out_dir}", flush=True)
    if args.push_to_hub:

        repo_id = hub_repo_id({"hub_model_id": args.hub_model_id}, Path(args.out_dir))
        url = push_folder(args.out_dir, repo_id, private=args.hub_private_repo or None,
                          commit_message="dpo-recipes: merged model")
        print(f"pushed {args.out_dir} -> {repo_id} ({url})", flush=True)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])

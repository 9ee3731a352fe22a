"""Export one run in every GGUF type and check each file against the run; one JSON record (docs/export.md).

    python scripts/gguf_roundtrip.py RUN WORK_DIR OUT.json [--prompts 4] [--max_new_tokens 24]

WORK_DIR receives the .gguf files (they are large; keep it out of git). The record holds, per type, the file size,
the tensor types written and what dpo_recipes/commands/gguf_check.py measured: tokenizer agreement, the largest |logit
difference| to the run's adapter applied by PEFT and to PEFT's merge, greedy replies to held-out demo prompts; and
the float32 rounding of the reference itself (its distance to the same adapter model in float64).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from dpo_recipes.commands.gguf_check import chat_ids, check_export, demo_rows, largest_diff, reference_model, summary
from dpo_recipes.commands.gguf_export import OUTTYPES, export
from dpo_recipes.commands.merge import adapter_model
from dpo_recipes.report.run_record import write_json


@torch.no_grad()
def float32_rounding(run_dir: Path, prompts: int) -> float:
    """How far the run's adapter model in float32 (the check's reference) is from the same model in float64: the
    largest |logit difference| no float32 file can be expected to beat."""
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    conversations = [torch.tensor([chat_ids(tokenizer, row["conversation"], False)]) for row in demo_rows(prompts)]
    logits = {}
    for dtype in ("float32", "float64"):
        model = reference_model(run_dir) if dtype == "float32" else adapter_model(run_dir, dtype).eval()
        logits[dtype] = [model(ids).logits.double() for ids in conversations]
    return largest_diff(logits["float32"], logits["float64"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    args = parser.parse_args()
    run_config = json.loads((args.run_dir / "run_config.json").read_text())
    command = ["python", *("<work dir>" if a == str(args.work_dir) else a for a in sys.argv)]  # no machine paths
    record = {"command": " ".join(command), "run": {
        "model_name_or_path": run_config["model"].get("model_name_or_path"),
        "max_steps": run_config["training"].get("max_steps"),
        "learning_rate": run_config["training"].get("learning_rate")}, "types": {}}
    for outtype in OUTTYPES:
        path = args.work_dir / f"{args.run_dir.name}-{outtype}.gguf"
        start = time.perf_counter()
        written = export(args.run_dir, path, outtype, force=True)
        seconds = time.perf_counter() - start
        result = check_export(args.run_dir, path, args.prompts, args.max_new_tokens)
        print(summary(result), flush=True)
        record["types"][outtype] = {"bytes": written["bytes"], "MiB": round(written["bytes"] / 2**20, 1),
                                    "tensor_types": written["tensor_types"], "export_seconds": round(seconds, 1),
                                    **{k: v for k, v in result.items() if k not in ("run_dir", "file", "bytes")}}
    record["reference_float32_rounding"] = float32_rounding(args.run_dir, args.prompts)
    write_json(args.out, record)


if __name__ == "__main__":
    main()

"""GPU benchmark: tokens per second, peak memory and model FLOPs utilisation of real recipes, with randomly
initialised weights of the real architecture (no download, no licence needed).

    python bench/bench_gpu.py [--recipes llama3-qlora qwen2.5-0.5b] [--steps 10]   # writes bench/results/gpu.json
    python bench/bench_gpu.py --cpu-check --steps 1 --warmup 1    # the same path on CPU with tiny models (tests)

For each recipe it writes a random model of the recipe's architecture (dpo_recipes.commands.estimate's table) in bf16 to
bench/tmp, then trains through the recipe's own config (QLoRA loads it in 4-bit as the recipe does) on
length-skewed synthetic pairs (bench_training.skewed_pairs at full length, the recipes' max_length of 1024), with the
tiny tokenizer of the recipe's family (token ids stay below its 1,024 entries; the model's full vocabulary is still
computed by the LM head), padded, padding-free, and with shared prompts (prefix_sharing + padding_free: sdpa with a 4D
mask, and on a GPU also FlexAttention with a BlockMask, which the CPU check skips). MFU counts
8 x parameters FLOPs per real token (policy forward and backward: 6N, reference forward: 2N) over the GPU's dense
bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
WORK = REPO / "bench" / "tmp" / "gpu"
# Batch layouts compared: the options each sets.
LAYOUTS = {
    "padded": (),
    "padding_free": ("--padding_free", "true"),
    "prefix_sharing": ("--padding_free", "true", "--prefix_sharing", "true"),
    "prefix_sharing_flex": ("--padding_free", "true", "--prefix_sharing", "true", "--attn_implementation",
                            "flex_attention"),  # GPU only
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0, "4090": 165.0}


def random_model(recipe: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dpo_recipes.cli import read_yaml
    from dpo_recipes.commands.estimate import ALIASES, BUILTIN
    from dpo_recipes.models.tiny import FAMILIES, build_tokenizer

    config = read_yaml(REPO / "recipes" / recipe / "config.yaml")
    name = config["model_name_or_path"]
    arch = BUILTIN[ALIASES.get(name, name)]
    family = config["tiny_model"]
    out = WORK / recipe
    if (out / "config.json").is_file():
        return out
    tokenizer = build_tokenizer(family)
    model_config = AutoConfig.for_model(
        FAMILIES[family][0], vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
        tie_word_embeddings=arch.tied_embeddings, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def parameter_count(model) -> int:
    """Parameters of the model as trained: a bitsandbytes 4-bit weight stores two values per byte, so its numel is
    half the layer's; count its original shape instead."""
    total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        total += quant_state.shape.numel() if quant_state is not None else param.numel()
    return total


def measure(recipe: str, steps: int, warmup: int, layout: str, cpu_check: bool = False) -> dict:
    import resource

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from bench_training import skewed_pairs
    from dpo_recipes.cli import read_yaml
    from dpo_recipes.train.config import parse_config
    from dpo_recipes.models.loading import load_model, load_tokenizer
    from dpo_recipes.models.tiny import build_tiny
    from dpo_recipes.train.trainer import PreferenceTrainer

    cuda = not cpu_check
    if cpu_check:  # the recipe's family at the tiny size: checks this script's path, measures nothing worth quoting
        family = read_yaml(REPO / "recipes" / recipe / "config.yaml")["tiny_model"]
        model_dir = build_tiny(family, WORK / f"tiny-{family}")
    else:
        model_dir = random_model(recipe)
    _, args, model_args = parse_config([
        "--config", str(REPO / "recipes" / recipe / "config.yaml"), "--model_name_or_path", str(model_dir),
        "--output_dir", str(WORK / f"run-{recipe}"), "--overwrite_output_dir", "true", "--eval_strategy", "no",
        "--save_strategy", "no", "--report_to", "none", "--max_steps", str(warmup + steps), "--logging_steps", "1000",
        "--eval_report", "false", *LAYOUTS[layout], *(["--use_cpu", "true"] if cpu_check else [])])
    tokenizer = load_tokenizer(str(model_dir), model_args, False, None)
    model, peft_config = load_model(str(model_dir), model_args, False)
    n_params = parameter_count(model)
    data = Dataset.from_list(skewed_pairs(64 * args.per_device_train_batch_size * args.gradient_accumulation_steps,
                                          tokenizer, scale=1.0))

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, a, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), trainer._total_train_tokens))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                peft_config=peft_config, callbacks=[clock := Clock()])
    trainer.train()
    (t0, n0), (t1, n1) = clock.marks[warmup - 1], clock.marks[-1]
    tokens_per_second = (n1 - n0) / (t1 - t0)
    device = torch.cuda.get_device_name() if cuda else "cpu (script check, tiny model)"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
    peak_memory = (torch.cuda.max_memory_allocated() if cuda
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # CPU: the process's max RSS so far
    result = {
        "recipe": recipe, "layout": layout, "padding_free": args.padding_free, "device": device, "parameters": n_params,
        "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
        "tokens_per_second": tokens_per_second, "seconds_per_step": (t1 - t0) / steps,
        "peak_memory_gib": peak_memory / 2**30,
        "mfu": 8 * n_params * tokens_per_second / (peak * 1e12) if peak else None,
        "max_length": args.max_length, "micro_batch_pairs": args.per_device_train_batch_size,
    }
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["llama3-qlora", "qwen2.5-0.5b"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cpu-check", action="store_true",
                        help="run the whole script on CPU with each recipe's tiny model (a check, not a benchmark)")
    parser.add_argument("--out", help="results file (default: bench/results/gpu.json; with --cpu-check bench/tmp)")
    a = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not a.cpu_check:
        print("error: bench/bench_gpu.py needs a CUDA GPU; on CPU run: make bench", file=sys.stderr)
        sys.exit(2)
    layouts = [name for name in LAYOUTS if not (a.cpu_check and name == "prefix_sharing_flex")]
    results = [measure(recipe, a.steps, a.warmup, layout, a.cpu_check) for recipe in a.recipes for layout in layouts]
    out = Path(a.out) if a.out else WORK / "cpu-check.json" if a.cpu_check else REPO / "bench" / "results" / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()

"""Training benchmarks (CPU): overhead over plain TRL, padding-free vs padded, shared prompts, the reference cache,
scaling.

    python bench/bench_training.py [--quick]        # writes bench/results/training.json

Every comparison is measured side by side in one run: the configurations of a comparison alternate (A B A B ...)
and each number is the median over repeats, because this machine is shared and noisy. Each measurement runs in its
own process, so that peak memory (max RSS) belongs to that configuration alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = REPO / "bench" / "tmp"
RESULTS = REPO / "bench" / "results" / "training.json"
# A Llama-architecture model large enough that compute dominates on a CPU: 8 layers, hidden 512, MLP 2048, 1,024-token
# vocabulary: 32.5M parameters.
MODEL = {"family": "llama", "hidden_size": 512, "num_layers": 8}


# Token lengths shaped like UltraFeedback's under a Llama-3 tokenizer (our estimate of its shape, not measured here)
# at the recipes' max_length of 1024: log-normal, medians 100 (prompt), 230 (chosen) and 200 (rejected) tokens, long
# right tails. The CPU benchmark halves every length and max_length (512), which keeps the shape relative to
# max_length (and so the padding a batch carries) while fitting this machine.
LENGTH_MEDIANS = {"prompt": (100, 0.9), "chosen": (230, 0.75), "rejected": (200, 0.8)}  # (median tokens, sigma)
CPU_LENGTH_SCALE = 0.5


def skewed_pairs(n: int, tokenizer, scale: float = CPU_LENGTH_SCALE, seed: int = 0) -> list[dict]:
    """Preference pairs whose token lengths (in `tokenizer`'s tokens) follow LENGTH_MEDIANS times `scale`. The text
    is real: windows of the bundled HH sample, cut to the drawn number of tokens."""
    import gzip

    stream = []
    with gzip.open(REPO / "data/hh-rlhf/harmless-base-test.jsonl.gz", "rt") as f:
        for line in f:
            stream += tokenizer(json.loads(line)["chosen"], add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)

    def span(part):
        median, sigma = LENGTH_MEDIANS[part]
        k = max(3, int(rng.lognormvariate(math.log(median * scale), sigma)))
        start = rng.randrange(len(stream) - k)
        return tokenizer.decode(stream[start : start + k])

    return [{"prompt": span("prompt"), "chosen": span("chosen"), "rejected": span("rejected")} for _ in range(n)]


def hh_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` pairs drawn (seeded) from the bundled HH sample: multi-turn conversations whose prompt (the turns before
    the last reply) is most of each sequence."""
    import gzip

    from dpo_recipes.data_formats import Defect, normalise_pair

    pairs = []
    with gzip.open(REPO / "data/hh-rlhf/harmless-base-test.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            try:
                pairs.append(normalise_pair(None, row["chosen"], row["rejected"], "text", None))
            except Defect:  # the few malformed transcripts the audit would drop
                pass
    return random.Random(seed).sample(pairs, n)


def bench_model(config: dict) -> tuple[str, str]:
    """The model a measurement trains and the recipe config it starts from: SmolLM2-135M-Instruct with
    recipes/smollm2-135m (its LoRA), or the bench's 32.5M random Llama with recipes/demo-cpu."""
    from dpo_recipes.pretrained import materialise
    from dpo_recipes.tiny import build_tiny

    if config.get("model") == "smollm2-135m-instruct":
        return str(materialise(config["model"])), str(REPO / "recipes/smollm2-135m/config.yaml")
    return str(build_tiny(out=WORK / "bench-llama", **MODEL)), str(REPO / "recipes/demo-cpu/config.yaml")


def measure(config: dict) -> dict:
    """One training measurement in this process: tokens/s over the timed steps, time per step, peak RSS."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from dpo_recipes.config import parse_config
    from dpo_recipes.modeling import load_model, load_tokenizer
    from dpo_recipes.trainer import PreferenceTrainer

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model_dir, recipe = bench_model(config)
    out = WORK / f"run-{os.getpid()}"
    args = ["--config", recipe, "--model_name_or_path", str(model_dir), "--gradient_accumulation_steps", "1",
            "--output_dir", str(out), "--overwrite_output_dir", "true", "--eval_strategy", "no",
            "--save_strategy", "no", "--logging_steps", "1000", "--report_to", "none", "--learning_rate", "1e-4",
            "--max_steps", str(config["warmup"] + config["steps"]), "--max_length", str(config["max_length"]),
            "--per_device_train_batch_size", str(config["batch_size"]), "--dataset_num_proc", "1",
            "--padding_free", str(config.get("padding_free", False)).lower(),
            "--prefix_sharing", str(config.get("prefix_sharing", False)).lower(),
            "--precompute_ref_log_probs", str(config.get("precompute", False)).lower(),
            "--ref_logps_cache_dir", str(WORK / "ref_cache")]
    _, train_args, model_args = parse_config(args)
    tokenizer = load_tokenizer(str(model_dir), model_args, False, None)
    model, peft_config = load_model(str(model_dir), model_args, False)
    scale = config.get("length_scale", CPU_LENGTH_SCALE)
    pairs = hh_pairs(config["rows"]) if config.get("data") == "hh" else skewed_pairs(config["rows"], tokenizer, scale)
    data = Dataset.from_list(pairs)

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), trainer._total_train_tokens))

    trainer_cls = DPOTrainer if config["trainer"] == "trl" else PreferenceTrainer
    started = time.perf_counter()
    trainer = trainer_cls(model=model, args=train_args, train_dataset=data, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[clock := Clock()])
    if config["trainer"] != "trl":
        trainer.use_registry = True  # time this project's loss path (a padded sigmoid alone would go to TRL's)
    setup_seconds = time.perf_counter() - started
    collate, fill = trainer.data_collator, {"real": 0, "computed": 0}

    def counting_collator(examples):  # how much of what the model computes is real tokens, not padding
        batch = collate(examples)
        real = batch["sequence_ids"] >= 0 if "sequence_ids" in batch else batch["attention_mask"]
        fill["real"] += int(real.sum())
        fill["computed"] += batch["input_ids"].numel()
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    (t0, n0), (t1, n1) = clock.marks[config["warmup"] - 1], clock.marks[-1]
    return {
        "tokens_per_second": (n1 - n0) / (t1 - t0),
        "seconds_per_step": (t1 - t0) / config["steps"],
        "setup_seconds": setup_seconds,  # includes the reference pass when precompute misses the cache
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ref_cache_hits": getattr(trainer, "ref_cache_hits", None),
        "real_token_fraction": fill["real"] / max(1, fill["computed"]),
        "computed_tokens": fill["computed"],  # over every batch of the run, row padding included
        "real_tokens": fill["real"],  # tokens the model runs that are not padding (a shared prompt once)
    }


def measure_layouts(config: dict) -> dict:
    """Padded, padding-free and shared-prompt batches timed in one process, batch by batch: for each batch, one
    training step's compute (policy forward and backward, reference forward) in each layout, the layouts' order
    rotating from batch to batch, `tries` times each, the fastest try kept. Paired per batch, so slow phases of a
    shared machine hit every layout alike."""
    import torch
    from datasets import Dataset

    from dpo_recipes.config import parse_config
    from dpo_recipes.modeling import load_model, load_tokenizer
    from dpo_recipes.trainer import PreferenceTrainer

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model_dir, config_file = bench_model(config)
    recipe = ["--config", config_file, "--per_device_train_batch_size", str(config["batch_size"]),
              "--gradient_accumulation_steps", "1"]
    layouts = {"padded": ("--padding_free", "false", "--prefix_sharing", "false"),
               "padding_free": ("--padding_free", "true", "--prefix_sharing", "false"),
               "prefix_sharing": ("--padding_free", "true", "--prefix_sharing", "true")}
    trainers, pairs = {}, None
    for name, flags in layouts.items():
        _, train_args, model_args = parse_config([
            *recipe, "--model_name_or_path", str(model_dir),
            "--output_dir", str(WORK / f"layouts-{os.getpid()}"), "--eval_strategy", "no", "--report_to", "none",
            "--max_length", str(config["max_length"]), "--dataset_num_proc", "1", *flags])
        tokenizer = load_tokenizer(str(model_dir), model_args, False, None)
        model, peft_config = load_model(str(model_dir), model_args, False)
        if pairs is None:
            n = 2 * config["batch_size"] * (config["batches"] + 1)  # TRL drops pairs whose prompt fills max_length
            pairs = hh_pairs(n) if config["data"] == "hh" else skewed_pairs(n, tokenizer, config["length_scale"])
        trainers[name] = PreferenceTrainer(model=model, args=train_args, train_dataset=Dataset.from_list(pairs),
                                           processing_class=tokenizer, peft_config=peft_config)
        trainers[name].model.train()
    names, seconds = list(layouts), {name: [] for name in layouts}
    tokens = {"logical": 0, **{name: 0 for name in layouts}}
    computed = {name: 0 for name in layouts}  # positions the model runs, the rows' padding included
    kept = len(trainers["padded"].train_dataset)
    for b in range(min(config["batches"] + 1, kept // config["batch_size"])):  # batch 0 warms up, not counted
        rows = [trainers["padded"].train_dataset[i] for i in range(b * config["batch_size"], (b + 1) * config["batch_size"])]
        times, batches = {name: [] for name in names}, {}
        for _ in range(config.get("tries", 1)):  # the fastest try: the least disturbed by other jobs
            for name in names[b % 3:] + names[: b % 3]:
                trainer = trainers[name]
                batch = batches[name] = trainer.data_collator(rows)
                batch.pop("row_id", None)
                started = time.perf_counter()
                trainer.compute_loss(trainer.model, batch).backward()
                times[name].append(time.perf_counter() - started)
                trainer.model.zero_grad()
        for name, batch in batches.items():
            if b:
                seconds[name].append(min(times[name]))
                real = batch["sequence_ids"] >= 0 if "sequence_ids" in batch else batch["attention_mask"]
                tokens[name] += int(real.sum())
                computed[name] += batch["input_ids"].numel()
                if name == "padded":
                    tokens["logical"] += int(batch["attention_mask"].sum())
    result = {name: {"tokens_per_second": tokens["logical"] / sum(seconds[name]),
                     "seconds_per_batch": statistics.median(seconds[name]), "model_tokens": tokens[name],
                     "computed_positions": computed[name]}
              for name in layouts}
    for a, b in (("padding_free", "padded"), ("prefix_sharing", "padding_free"), ("prefix_sharing", "padded")):
        ratios = [tb / ta for ta, tb in zip(seconds[a], seconds[b])]  # per batch: how much faster a is than b
        result[f"{a}_over_{b}"] = {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)],
                                   "total": sum(seconds[b]) / sum(seconds[a])}
    result["token_count_limit"] = tokens["padding_free"] / tokens["prefix_sharing"]  # real tokens the model runs
    result["config"] = config
    return result


def run_one(config: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed: {config}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def side_by_side(configs: dict[str, dict], repeats: int, once: tuple[str, ...] = ()) -> dict:
    """Alternate the configurations `repeats` times (those in `once`: the first time only); medians of each metric."""
    samples = {name: [] for name in configs}
    for r in range(repeats):
        for name, config in configs.items():
            if r > 0 and name in once:
                continue
            samples[name].append(run_one(config))
            print(f"  [{r + 1}/{repeats}] {name}: {samples[name][-1]['tokens_per_second']:.0f} tok/s", flush=True)
    summary = {}
    for name, runs in samples.items():
        summary[name] = {key: statistics.median(run[key] for run in runs)
                         for key in ("tokens_per_second", "seconds_per_step", "setup_seconds", "peak_rss_mb",
                                     "real_token_fraction")}
        rates = [run["tokens_per_second"] for run in runs]
        summary[name]["tokens_per_second_range"] = [min(rates), max(rates)]
        for key in ("computed_tokens", "real_tokens"):  # the same batches in every repeat
            if key in runs[0]:
                summary[name][key] = runs[0][key]
        summary[name]["repeats"] = len(runs)
        summary[name]["config"] = configs[name]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke check, not results)")
    parser.add_argument("--only", nargs="*",
                        help="overhead padding_free prefix_sharing prefix_sharing_real ref_cache scaling")
    a = parser.parse_args()
    if a.one:
        config = json.loads(a.one)
        print(json.dumps(measure_layouts(config) if config.get("layouts") else measure(config)))
        return
    repeats, steps = (1, 2) if a.quick else (5, 6)  # step times vary with the batch and the machine: 5 repeats
    base = {"rows": 64, "warmup": 2, "steps": steps, "max_length": 512, "batch_size": 4, "trainer": "ours"}
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() and a.only else {}
    results["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "threads": int(os.environ.get("BENCH_THREADS", "2"))}
    results["model"] = MODEL
    todo = a.only or ["overhead", "padding_free", "prefix_sharing", "prefix_sharing_real", "ref_cache", "scaling"]

    if "overhead" in todo:
        print("overhead: project path vs plain TRL DPOTrainer", flush=True)
        r = side_by_side({"trl": {**base, "trainer": "trl"}, "ours": base}, repeats)
        r["ours_over_trl"] = r["ours"]["tokens_per_second"] / r["trl"]["tokens_per_second"]
        results["overhead"] = r
    if "padding_free" in todo:
        print("padding_free: packed rows vs padding, length-skewed data", flush=True)
        r = side_by_side({"padded": base, "padding_free": {**base, "padding_free": True}}, repeats)
        r["speedup"] = r["padding_free"]["tokens_per_second"] / r["padded"]["tokens_per_second"]
        r["peak_rss_ratio"] = r["padding_free"]["peak_rss_mb"] / r["padded"]["peak_rss_mb"]
        results["padding_free"] = r
    if "prefix_sharing" in todo:
        # Shared prompts against padding-free and padded, paired batch by batch in one process (measure_layouts):
        # this machine is shared, and whole training runs of three layouts on two datasets did not fit half an
        # hour. max_length 256; UltraFeedback-shaped lengths scaled to a quarter to match.
        print("prefix_sharing: padded vs padding-free vs shared prompts, paired per batch", flush=True)
        results["prefix_sharing"] = {k: v for k, v in results.get("prefix_sharing", {}).items() if k == "hh_smollm2_135m"}
        for data in ("hh", "ultrafeedback_shaped"):
            config = {"layouts": True, "data": data, "max_length": 256, "length_scale": 0.25, "batch_size": 4,
                      "batches": 2 if a.quick else 24, "tries": 1 if a.quick else 3}
            r = run_one(config)
            # Peak memory: each layout trains alone in its own process (max RSS: model, optimizer and activations)
            shape = {**base, "data": data, "max_length": 256, "length_scale": 0.25, "rows": 32, "warmup": 1,
                     "steps": 1 if a.quick else 4}
            memory = side_by_side({"padded": shape, "padding_free": {**shape, "padding_free": True},
                                   "prefix_sharing": {**shape, "padding_free": True, "prefix_sharing": True}},
                                  1 if a.quick else 2)
            for name in ("padded", "padding_free", "prefix_sharing"):
                r[name]["peak_rss_mb"] = memory[name]["peak_rss_mb"]
            print(f" {data}: shared over padding-free {r['prefix_sharing_over_padding_free']['median']:.2f}x "
                  f"(token-count limit {r['token_count_limit']:.2f}x)", flush=True)
            results["prefix_sharing"][data] = r
    if "prefix_sharing_real" in todo:
        # The same comparison with the real model of recipes/smollm2-135m (SmolLM2-135M-Instruct, its LoRA, its
        # max_length 512 and micro-batch of 2 pairs) on the bundled HH pairs; compute time only.
        print("prefix_sharing_real: the same, SmolLM2-135M-Instruct on HH pairs", flush=True)
        config = {"layouts": True, "model": "smollm2-135m-instruct", "data": "hh", "max_length": 512,
                  "batch_size": 2, "batches": 2 if a.quick else 12, "tries": 1 if a.quick else 2}
        r = run_one(config)
        print(f" hh, smollm2-135m-instruct: shared over padding-free "
              f"{r['prefix_sharing_over_padding_free']['median']:.2f}x (token-count limit {r['token_count_limit']:.2f}x)",
              flush=True)
        # Peak memory of each layout training alone (a few steps of the recipe's micro-batch, its own process)
        shape = {**base, "model": config["model"], "data": "hh", "max_length": 512, "batch_size": 2, "rows": 16,
                 "warmup": 1, "steps": 1 if a.quick else 2}
        memory = side_by_side({"padded": shape, "padding_free": {**shape, "padding_free": True},
                               "prefix_sharing": {**shape, "padding_free": True, "prefix_sharing": True}}, 1)
        for name in ("padded", "padding_free", "prefix_sharing"):
            r[name]["peak_rss_mb"] = memory[name]["peak_rss_mb"]
        results.setdefault("prefix_sharing", {})["hh_smollm2_135m"] = r
    if "ref_cache" in todo:
        print("ref_cache: one epoch, reference on the fly vs cached reference log-probs", flush=True)
        epoch = {**base, "rows": 32, "warmup": 1, "steps": 32 // base["batch_size"] - 1}
        run_one({**epoch, "precompute": True, "steps": 1})  # fill the cache once
        r = side_by_side({"on_the_fly": epoch, "cached": {**epoch, "precompute": True}}, min(repeats, 3))
        for name in ("on_the_fly", "cached"):
            r[name]["epoch_seconds"] = r[name]["seconds_per_step"] * (32 // base["batch_size"]) + r[name]["setup_seconds"]
        r["epoch_speedup"] = r["on_the_fly"]["epoch_seconds"] / r["cached"]["epoch_seconds"]
        r["step_speedup"] = r["on_the_fly"]["seconds_per_step"] / r["cached"]["seconds_per_step"]
        results["ref_cache"] = r
    if "scaling" in todo:
        print("scaling: time per step and peak memory against max_length and batch size", flush=True)
        grid = {f"len{n}_bs{b}": {**base, "max_length": n, "batch_size": b, "steps": 2, "warmup": 1}
                for n, b in ((128, 4), (256, 4), (512, 4), (512, 2), (512, 8))}
        results["scaling"] = side_by_side(grid, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()

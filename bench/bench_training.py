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


def skewed_pairs(n: int, tokenizer, scale: float = CPU_LENGTH_SCALE, seed: int = 0, fixed: int | None = None) -> list[dict]:
    """Preference pairs whose token lengths (in `tokenizer`'s tokens) follow LENGTH_MEDIANS times `scale`, or are all
    `fixed` tokens (equal-length pairs). The text is real: windows of the bundled HH sample, cut to that many tokens."""
    import gzip

    stream = []
    with gzip.open(REPO / "data/hh-rlhf/harmless-base-test.jsonl.gz", "rt") as f:
        for line in f:
            stream += tokenizer(json.loads(line)["chosen"], add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)

    def span(part):
        median, sigma = LENGTH_MEDIANS[part]
        k = fixed or max(3, int(rng.lognormvariate(math.log(median * scale), sigma)))
        start = rng.randrange(len(stream) - k)
        return tokenizer.decode(stream[start : start + k])

    return [{"prompt": span("prompt"), "chosen": span("chosen"), "rejected": span("rejected")} for _ in range(n)]


def hh_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` pairs drawn (seeded) from the bundled HH sample: multi-turn conversations whose prompt (the turns before
    the last reply) is most of each sequence."""
    import gzip

    from dpo_recipes.data.formats import Defect, normalise_pair

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
    from dpo_recipes.models.pretrained import materialise
    from dpo_recipes.models.tiny import build_tiny

    if config.get("model") == "smollm2-135m-instruct":
        return str(materialise(config["model"])), str(REPO / "recipes/smollm2-135m/config.yaml")
    if config.get("model") == "tiny":  # the tests' tiny Llama (2 layers, hidden 64): the step is mostly overhead
        return str(build_tiny("llama", WORK / "tiny-llama")), str(REPO / "recipes/demo-cpu/config.yaml")
    return str(build_tiny(out=WORK / "bench-llama", **MODEL)), str(REPO / "recipes/demo-cpu/config.yaml")


def measure(config: dict) -> dict:
    """One training measurement in this process: tokens/s over the timed steps, time per step, peak RSS."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from dpo_recipes.train.config import parse_config
    from dpo_recipes.models.loading import load_model, load_tokenizer
    from dpo_recipes.train.threads import use_threads
    from dpo_recipes.train.trainer import PreferenceTrainer

    use_threads()
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
    if config.get("data") == "hh":
        pairs = hh_pairs(config["rows"])
    else:
        pairs = skewed_pairs(config["rows"], tokenizer, scale, fixed=config.get("fixed_tokens"))
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

    from dpo_recipes.train.config import parse_config
    from dpo_recipes.models.loading import load_model, load_tokenizer
    from dpo_recipes.train.threads import use_threads
    from dpo_recipes.train.trainer import PreferenceTrainer

    use_threads()
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


# Where the time goes (`--only speed`): bench/results/speed.json and speed.md

SPEED_RESULTS = REPO / "bench" / "results" / "speed.json"
MATMUL_SHAPE = (2048, 576, 1536)  # SmolLM2-135M's hidden size into its MLP width, 2,048 tokens


def matmul_peak(dtype, repeats: int) -> dict:
    """GFLOP/s of one (2048 x 576) @ (576 x 1536) matmul in `dtype`: median and range over `repeats` timings of 20."""
    import torch

    m, k, n = MATMUL_SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(5):
        a @ b
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(20):
            a @ b
        rates.append(20 * 2 * m * k * n / (time.perf_counter() - started) / 1e9)
    return {"gflops": statistics.median(rates), "range": [min(rates), max(rates)], "repeats": repeats}


def step_flops(model, batch) -> dict:
    """FLOPs of one LoRA DPO step on `batch`: 2N per token for the policy forward, 2N for the backward to the inputs
    (the frozen weights get no gradient), 2N for the reference forward, N the weights of the linear layers; the LM
    head's likewise, on the scored (completion) tokens only, which is all a head needs to compute
    (dpo_recipes/models/compact_head.py); attention's two matmuls per layer (4 d n^2 / 2 per causal sequence of n
    tokens) forward, twice that backward, once more for the reference. LoRA's own matmuls (r = 16) are left out
    (under 4%)."""
    import torch

    head = model.get_output_embeddings()
    linear = sum(m.base_layer.weight.numel() if hasattr(m, "base_layer") else m.weight.numel()
                 for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in name and m is not head)
    cfg = model.config
    if "sequence_ids" in batch:
        ids = batch["sequence_ids"].flatten()
        lengths = torch.bincount(ids[ids >= 0]).tolist()
    else:
        lengths = batch["attention_mask"].sum(-1).tolist()
    tokens, scored = int(sum(lengths)), int(batch["completion_mask"].sum())
    attention_forward = sum(4 * cfg.hidden_size * n * n / 2 for n in lengths) * cfg.num_hidden_layers
    return {"tokens": tokens, "scored_tokens": scored, "matmul_weights": linear, "head_weights": head.weight.numel(),
            "flops": 6 * linear * tokens + 6 * head.weight.numel() * scored + 4 * attention_forward}


def measure_speed(config: dict) -> dict:
    """In one process: the machine's matmul peak (fp32, bf16); recipes/smollm2-135m's training step on HH pairs in
    fp32 and in bf16 (dpo_recipes/models/precision.py), the two alternating batch by batch; the achieved FLOP/s; a
    torch.profiler table of one bf16 step; batched against one-prompt-at-a-time greedy generation."""
    import torch
    from datasets import Dataset
    from torch.profiler import ProfilerActivity, profile

    from dpo_recipes.train.config import parse_config
    from dpo_recipes.report.generation import generate
    from dpo_recipes.models.loading import load_model, load_tokenizer
    from dpo_recipes.train.threads import use_threads
    from dpo_recipes.data.tokenization import generation_prompt_ids
    from dpo_recipes.train.trainer import PreferenceTrainer

    threads = use_threads()
    result = {"threads": threads, "matmul": {"shape": list(MATMUL_SHAPE)}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result["matmul"][name] = matmul_peak(dtype, config["matmul_repeats"])
    model_dir, recipe = bench_model({"model": "smollm2-135m-instruct"})
    trainers, pairs = {}, hh_pairs(config["batch_size"] * (config["batches"] + 1) + 8)
    configs = (("fp32", ("--dtype", "float32")), ("bf16", ("--dtype", "bfloat16")),
               ("bf16_trl_head", ("--dtype", "bfloat16", "--cpu_compact_lm_head", "false")))
    for name, flags in configs:
        _, train_args, model_args = parse_config([
            "--config", recipe, "--model_name_or_path", model_dir, "--output_dir", str(WORK / f"speed-{os.getpid()}"),
            "--per_device_train_batch_size", str(config["batch_size"]), "--gradient_accumulation_steps", "1",
            "--eval_strategy", "no", "--report_to", "none", "--dataset_num_proc", "1", "--bf16", "false", *flags])
        tokenizer = load_tokenizer(model_dir, model_args, False, None)
        model, peft_config = load_model(model_dir, model_args, False)
        trainers[name] = PreferenceTrainer(model=model, args=train_args, train_dataset=Dataset.from_list(pairs),
                                           processing_class=tokenizer, peft_config=peft_config)
        trainers[name].model.train()
    names, flops, tokens = [name for name, _ in configs], [], []
    seconds = {name: [] for name in names}
    data = trainers["fp32"].train_dataset
    for b in range(config["batches"] + 1):  # batch 0 warms up
        rows = [data[i] for i in range(b * config["batch_size"], (b + 1) * config["batch_size"])]
        for name in names[b % len(names):] + names[: b % len(names)]:
            trainer = trainers[name]
            batch = trainer.data_collator(rows)
            batch.pop("row_id", None)
            started = time.perf_counter()
            trainer.compute_loss(trainer.model, batch).backward()
            if b:
                seconds[name].append(time.perf_counter() - started)
            trainer.model.zero_grad()
        if b:
            count = step_flops(trainers["bf16"].model, batch)
            flops.append(count["flops"])
            tokens.append(count["tokens"])
    ratios = [f / b for f, b in zip(seconds["fp32"], seconds["bf16"])]
    head_ratios = [t / b for t, b in zip(seconds["bf16_trl_head"], seconds["bf16"])]
    peak = result["matmul"]["bf16"]["gflops"] * 1e9
    result["step"] = {
        "model": "SmolLM2-135M-Instruct, LoRA r=16 on every linear layer (recipes/smollm2-135m)",
        "pairs_per_batch": config["batch_size"], "batches": config["batches"],
        "layout": "padding-free, shared prompts (the recipe's)", "tokens_per_batch_median": statistics.median(tokens),
        **{name: {"seconds_per_batch": statistics.median(s), "range": [min(s), max(s)],
                  "samples_per_second": config["batch_size"] / statistics.median(s)} for name, s in seconds.items()},
        "bf16_over_fp32": {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)],
                           "total": sum(seconds["fp32"]) / sum(seconds["bf16"])},
        "compact_head_speedup": {"median": statistics.median(head_ratios),
                                 "range": [min(head_ratios), max(head_ratios)],
                                 "total": sum(seconds["bf16_trl_head"]) / sum(seconds["bf16"])},
        "flops_per_batch_median": statistics.median(flops),
    }
    for name in names:
        achieved = sum(flops) / sum(seconds[name])
        result["step"][name]["achieved_gflops"] = achieved / 1e9
        result["step"][name]["fraction_of_bf16_matmul_peak"] = achieved / peak
    trainer = trainers["bf16"]
    batch = trainer.data_collator([data[i] for i in range(config["batch_size"])])
    batch.pop("row_id", None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.compute_loss(trainer.model, batch).backward()
    trainer.model.zero_grad()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    result["profile_bf16_step"] = [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
                                    "share": e.self_cpu_time_total / total} for e in events[:15]]
    # Generation: greedy replies to HH prompts, one prompt at a time against all together (bf16 base model).
    del trainers
    model, _ = load_model(model_dir, model_args, False)
    model.eval()
    prompts = [generation_prompt_ids(tokenizer, row) for row in hh_pairs(config["prompts"], seed=1)]
    started = time.perf_counter()
    alone = [generate(model, tokenizer, [p], config["new_tokens"], sample=False)[0] for p in prompts]
    one_at_a_time = time.perf_counter() - started
    started = time.perf_counter()
    together = generate(model, tokenizer, prompts, config["new_tokens"], sample=False, batch_size=len(prompts))
    batched = time.perf_counter() - started
    generated = sum(len(c[0]) for c in together)
    result["generation"] = {
        "prompts": len(prompts), "max_new_tokens": config["new_tokens"], "dtype": "bfloat16",
        "one_at_a_time_seconds": one_at_a_time, "batched_seconds": batched, "speedup": one_at_a_time / batched,
        "tokens_generated": generated, "batched_tokens_per_second": generated / batched,
        "same_replies": sum(a == t for a, t in zip(alone, together)),
    }
    # Batch width: the demo report's probe questions (data/demo-probes.json, short prompts), 16 against 64 at a time,
    # alternating, twice each.
    probes = json.loads((REPO / "data" / "demo-probes.json").read_text())
    questions = probes["style_prompts"] + [f["question"] for f in probes["facts"]]
    ids = [generation_prompt_ids(tokenizer, {"prompt": [{"role": "user", "content": q}]}) for q in questions]
    widths = {16: [], 64: []}
    for _ in range(config["width_repeats"]):
        for width in widths:
            started = time.perf_counter()
            generate(model, tokenizer, ids, config["new_tokens"], sample=False, batch_size=width)
            widths[width].append(time.perf_counter() - started)
    result["generation_width"] = {
        "prompts": len(ids), "max_new_tokens": config["new_tokens"], "repeats": config["width_repeats"],
        **{f"seconds_{w}": statistics.median(t) for w, t in widths.items()},
        **{f"range_{w}": [min(t), max(t)] for w, t in widths.items()},
        "speedup_64_over_16": statistics.median(a / b for a, b in zip(widths[16], widths[64])),
    }
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
        summary[name]["rates"] = rates
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
                        help="overhead padding_free prefix_sharing prefix_sharing_real ref_cache scaling speed")
    a = parser.parse_args()
    from dpo_recipes.train.threads import threads_per_process  # torch: not needed for --help

    if a.one:
        config = json.loads(a.one)
        kind = measure_speed if config.get("speed") else measure_layouts if config.get("layouts") else measure
        print(json.dumps(kind(config)))
        return
    repeats, steps = (1, 2) if a.quick else (5, 6)  # step times vary with the batch and the machine: 5 repeats
    base = {"rows": 64, "warmup": 2, "steps": steps, "max_length": 512, "batch_size": 4, "trainer": "ours"}
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() and a.only else {}
    results["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "threads": threads_per_process(1)}
    results["model"] = MODEL
    todo = a.only or ["overhead", "padding_free", "prefix_sharing", "prefix_sharing_real", "ref_cache", "scaling",
                      "speed"]
    if "speed" in todo:
        write_speed(a.quick)
        if todo == ["speed"]:
            return

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


def write_speed(quick: bool) -> dict:
    """Where the time goes (measure_speed), and this project's training path against a plain TRL DPOTrainer on
    equal-length pairs: bench/results/speed.json and speed.md."""
    print("speed: matmul peak, SmolLM2 step fp32 vs bf16, profile, generation", flush=True)
    config = {"speed": True, "batch_size": 2, "batches": 2 if quick else 6, "matmul_repeats": 3 if quick else 7,
              "prompts": 4 if quick else 16, "new_tokens": 8 if quick else 48,  # the report's 16 prompts x 48 tokens
              "width_repeats": 1 if quick else 2}
    result = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpu": cpu_model(), "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], **run_one(config)}
    print("speed: project path vs plain TRL DPOTrainer, equal-length pairs, 12 steps", flush=True)
    equal = {"model": "tiny", "rows": 4 * 14, "warmup": 2, "steps": 2 if quick else 12, "max_length": 512,
             "batch_size": 4, "fixed_tokens": 32}
    overhead = side_by_side({"trl": {**equal, "trainer": "trl"}, "ours": {**equal, "trainer": "ours"}},
                            1 if quick else 4)
    ratios = [o / t for o, t in zip(overhead["ours"].pop("rates"), overhead["trl"].pop("rates"))]
    overhead["ours_over_trl"] = {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)]}
    result["overhead_equal_length"] = overhead
    result["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    SPEED_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    SPEED_RESULTS.with_suffix(".md").write_text(speed_markdown(result))
    print(f"wrote {SPEED_RESULTS.relative_to(REPO)} and speed.md")
    return result


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), with its cores: the bf16 peak depends on it (AMX, AVX512-BF16)."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (info.read_text().splitlines() if info.is_file() else [])
             if line.startswith("model name")]
    flags = next((line for line in info.read_text().splitlines() if line.startswith("flags")), "") if names else ""
    extras = [f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in flags]
    return f"{names[0] if names else platform.processor()}, {len(names) or os.cpu_count()} cores" + \
        (f" ({', '.join(extras)})" if extras else "")


def speed_markdown(r: dict) -> str:
    step, gen, mm, over = r["step"], r["generation"], r["matmul"], r["overhead_equal_length"]
    lines = [
        "# Where the training time goes (CPU)",
        "",
        f"`python bench/bench_training.py --only speed`, {r['measured_at']}, {r['threads']} torch thread(s), "
        f"{r.get('cpu', 'CPU not recorded')}. Load average {' / '.join(r['loadavg_before'])} before, "
        f"{' / '.join(r['loadavg_after'])} after (1 / 5 / 15 min; above 0 means other jobs shared the cores): "
        "absolute times depend on both; the ratios come from configurations alternating within one process (or one "
        "run), medians with their range.",
        "",
        "## Matmul peak",
        "",
        f"(2048 x 576) @ (576 x 1536): fp32 {mm['fp32']['gflops']:.0f} GFLOP/s (range {mm['fp32']['range'][0]:.0f}-"
        f"{mm['fp32']['range'][1]:.0f}), bf16 {mm['bf16']['gflops']:.0f} GFLOP/s (range {mm['bf16']['range'][0]:.0f}-"
        f"{mm['bf16']['range'][1]:.0f}), {mm['bf16']['repeats']} repeats each.",
        "",
        "## SmolLM2-135M training step (recipes/smollm2-135m, HH pairs)",
        "",
        f"{step['model']}; {step['pairs_per_batch']} pairs per batch, {step['layout']}; median "
        f"{step['tokens_per_batch_median']:.0f} tokens the model runs per batch; {step['batches']} batches, fp32, "
        "bf16 and bf16 with TRL's fused LM head (`--cpu_compact_lm_head false`) alternating on the same batches. "
        "FLOPs per batch: 6N per token (policy forward 2N, backward to the inputs 2N, reference forward 2N; N the "
        "weights of the linear layers), the LM head's likewise on the scored tokens only, plus attention.",
        "",
        "| precision | s / batch (median, range) | pairs / s | achieved GFLOP/s | of the bf16 matmul peak |",
        "|---|---|---|---|---|",
    ]
    for name in ("fp32", "bf16", "bf16_trl_head"):
        if name not in step:  # results written before that configuration existed
            continue
        s = step[name]
        lines.append(f"| {name} | {s['seconds_per_batch']:.2f} ({s['range'][0]:.2f}-{s['range'][1]:.2f}) | "
                     f"{s['samples_per_second']:.2f} | {s['achieved_gflops']:.0f} | "
                     f"{100 * s['fraction_of_bf16_matmul_peak']:.0f}% |")
    ratio = step["bf16_over_fp32"]
    lines += [
        "",
        f"bf16 over fp32, per batch: median {ratio['median']:.2f}x (range {ratio['range'][0]:.2f}-"
        f"{ratio['range'][1]:.2f}), total time {ratio['total']:.2f}x.",
        *([f"The compact LM head over TRL's fused head, bf16, per batch: median {h['median']:.2f}x (range "
           f"{h['range'][0]:.2f}-{h['range'][1]:.2f}), total time {h['total']:.2f}x."]
          if (h := step.get("compact_head_speedup")) else []),
        "",
        "Top operators of one bf16 step (torch.profiler, self CPU time):",
        "",
        "| operator | calls | self ms | share |",
        "|---|---|---|---|",
        *[f"| `{e['op']}` | {e['calls']} | {e['self_ms']:.0f} | {100 * e['share']:.1f}% |" for e in r["profile_bf16_step"]],
        "",
        "## Generation",
        "",
        f"{gen['prompts']} HH prompts, greedy, at most {gen['max_new_tokens']} new tokens, {gen['dtype']} weights: one "
        f"prompt at a time {gen['one_at_a_time_seconds']:.1f} s, all together (left-padded) {gen['batched_seconds']:.1f} s: "
        f"{gen['speedup']:.2f}x ({gen['batched_tokens_per_second']:.0f} generated tokens/s batched); "
        f"{gen['same_replies']} of {gen['prompts']} replies identical token for token (bf16 rounding can flip a "
        "near-tie between the padded and unpadded computation).",
        "",
        *([f"The demo report's {w['prompts']} probe questions, greedy, at most {w['max_new_tokens']} new tokens: 16 at "
           f"a time {w['seconds_16']:.1f} s, 64 at a time {w['seconds_64']:.1f} s (medians of "
           f"{w['repeats']}): {w['speedup_64_over_16']:.2f}x "
           "(`eval_report_generation_batch_size`).", ""] if (w := r.get("generation_width")) else []),
        "## This project's training path against a plain TRL DPOTrainer",
        "",
        "The tests' tiny Llama (2 layers, hidden 64: the step is mostly the trainers' own work), equal-length pairs "
        f"({over['trl']['config']['fixed_tokens']} tokens each of prompt, chosen, rejected), "
        f"{over['trl']['config']['steps']} timed steps of {over['trl']['config']['batch_size']} pairs, each run in its "
        f"own process, "
        f"{over['trl']['repeats']} alternating repeats: ours / TRL tokens per second median "
        f"{over['ours_over_trl']['median']:.3f} (range {over['ours_over_trl']['range'][0]:.3f}-"
        f"{over['ours_over_trl']['range'][1]:.3f}); TRL {over['trl']['tokens_per_second']:.0f} tok/s, ours "
        f"{over['ours']['tokens_per_second']:.0f} tok/s (medians).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

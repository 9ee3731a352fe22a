"""A real experiment: DPO, IPO, cDPO, rDPO and MADPO on SmolLM2-135M-Instruct and Anthropic HH harmless-base (CPU).

    make real-bench                              # python bench/real_bench.py: bench/results/real.{json,md,png}
    make real-bench ARGS="--steps 12 --learning_rate 1e-3 --out bench/results/real-steps12"   # the first, smaller run
    python bench/real_bench.py --steps 4 --eval_pairs 8 --prompts 2 --seeds 0 --out outputs/real-bench-quick   # a quick look

Every variant gets the same budget: the recipe recipes/smollm2-135m (LoRA on every linear layer, padding-free, one
held-out split carved once with the recipe's seed), `--steps` optimizer steps of the recipe's batch (cosine schedule
without warmup) on the same steps x batch training pairs (drawn once with a fixed seed, each seen once), for each of
`--seeds` training seeds (adapter initialisation and data order). Because the training pairs are the same, the
reference's log-probs on them are computed once (precompute_ref_log_probs, the project's reference cache).
MADPO is the paper's two-step method: a reward model (the same base with a LoRA adapter and a score head) is trained
first on the training split, then scores the cells' training pairs once for MADPO's margins. The same reward model judges the
win-rate. The reference (the base model: LoRA's adapters off) is the same for every cell, so its held-out log-probs,
greedy replies and their judge scores are computed once and cached.

Per cell, on the held-out split: implicit reward accuracy and margin on `--eval_pairs` pairs (default: all of them;
scored in the recipe's layout, shared prompts; per pair, so the
intervals and the paired differences against DPO use the pairs), KL(policy || reference) from `--samples`
completions sampled per prompt on `--prompts` prompts (k3 estimator, evaluation.py), the greedy replies on those
prompts, their judge scores and the win-rate against the reference's replies (ties half, Wilson interval).

Each cell's result is written to bench/results/real/<cell>.json when it finishes and the summary files are rewritten;
a rerun of the same command skips finished cells and resumes an interrupted one from its last checkpoint (work
files under bench/tmp/real/, ignored by git). A change of the evaluation alone (EVALUATION, --eval_pairs, ...)
re-evaluates each cell from its final checkpoint without training again. `--readme` copies the Markdown summary into README.md's section.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RECIPE = REPO / "recipes" / "smollm2-135m"
WORK = REPO / "bench" / "tmp" / "real"
RESULTS = REPO / "bench" / "results"
VARIANTS = {  # name -> overrides of the recipe's config
    "dpo": ["--loss_type", "sigmoid"],
    "ipo": ["--loss_type", "ipo"],
    "cdpo": ["--loss_type", "cdpo", "--label_smoothing", "0.1"],
    "rdpo": ["--loss_type", "rdpo", "--label_smoothing", "0.1"],
    "madpo": ["--loss_type", "madpo"],
}
# The evaluation's version: a change here re-evaluates finished cells from their trained adapters. 3: prompts
# generated and scored in batches (other sampling draws); 2: every held-out pair, scored in the recipe's layout
# (shared prompts); 1: the first 100 pairs, padded.
EVALUATION = 3
README_START, README_END = "<!-- real-bench:start -->", "<!-- real-bench:end -->"
Z95 = 1.959963984540054


def recipe_args(*extra: str) -> list[str]:
    return ["--config", str(RECIPE / "config.yaml"), "--report_to", "none", "--eval_strategy", "no",
            "--eval_report", "false", "--dataset_num_proc", "1", *extra]


# ----------------------------------------------------------------------------------------------------------------
# Shared inputs: the split, the reward model, the reference


def write_split(work: Path) -> Path:
    """The recipe's data audit (its tokenizer, max_length, held-out fraction and seed) run once; the clean train and
    held-out pairs written as a dataset folder every cell reads, so a training seed never changes the split."""
    from dpo_recipes.config import parse_config
    from dpo_recipes.data import load_preference_data
    from dpo_recipes.modeling import load_tokenizer, resolve_model_path

    folder = work / "data"
    if (folder / "test.jsonl").is_file():
        return folder
    script, training, model_args = parse_config(recipe_args("--output_dir", str(work / "audit")))
    tokenizer = load_tokenizer(resolve_model_path(model_args, None), model_args, False, None)
    data = load_preference_data(script, seed=training.seed, tokenizer=tokenizer, max_length=training.max_length,
                                truncation_mode=training.truncation_mode)
    folder.mkdir(parents=True, exist_ok=True)
    for name, ds in (("train", data.train), ("test", data.eval)):
        with open(folder / f"{name}.jsonl.tmp", "w") as f:
            for row in ds:
                f.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    (folder / "train.jsonl.tmp").rename(folder / "train.jsonl")
    (folder / "test.jsonl.tmp").rename(folder / "test.jsonl")
    return folder


def data_args(data: Path) -> list[str]:
    return ["--dataset_name", str(data), "--dataset_train_split", "train", "--dataset_test_split", "test"]


def write_train_subset(data: Path, pairs: int, seed: int = 42) -> Path:
    """The training pairs every cell sees: `pairs` of the training split (steps x batch: one epoch, no pair twice),
    drawn with a fixed seed, beside the whole held-out split. The same pairs for every cell, so the reference's
    log-probs are computed once (precompute_ref_log_probs, the project's reference cache) and MADPO's margins too."""
    import random

    folder = data.parent / f"data-train{pairs}"
    if (folder / "test.jsonl").is_file():
        return folder
    rows = (data / "train.jsonl").read_text().splitlines()
    chosen = sorted(random.Random(seed).sample(range(len(rows)), pairs))
    folder.mkdir(exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(rows[i] for i in chosen) + "\n")
    (folder / "test.jsonl").write_text((data / "test.jsonl").read_text())
    return folder


def write_madpo_margins(train_data: Path, reward_model: Path) -> Path:
    """MADPO step two's margins r(chosen) - r(rejected) from the reward model, scored once (dpo_recipes.margins) and
    stored as the `reward_margin` column; the few held-out rows there only keep the columns alike (MADPO's held-out
    numbers here come from the policy, not from these margins)."""
    import torch
    from datasets import load_dataset

    from dpo_recipes.margins import load_reward_model, score_pairs

    folder = train_data.parent / f"{train_data.name}-margins-{reward_model.name}"
    if (folder / "test.jsonl").is_file():
        return folder
    model, tokenizer = load_reward_model(str(reward_model), device=torch.device("cpu"))
    folder.mkdir(exist_ok=True)
    for split, limit in (("train", None), ("test", 8)):
        ds = load_dataset("json", data_files=str(train_data / f"{split}.jsonl"), split="train")
        ds = ds.select(range(min(limit, len(ds)))) if limit else ds
        margins = score_pairs(model, tokenizer, ds, batch_size=4)
        with open(folder / f"{split}.jsonl.tmp", "w") as f:
            for row, margin in zip(ds, margins):
                f.write(json.dumps({**{k: row[k] for k in ("prompt", "chosen", "rejected")},
                                    "reward_margin": margin}) + "\n")
    (folder / "train.jsonl.tmp").rename(folder / "train.jsonl")
    (folder / "test.jsonl.tmp").rename(folder / "test.jsonl")
    return folder


def train_reward_model(work: Path, data: Path, steps: int, eval_pairs: int) -> Path:
    """MADPO step one (dpo_recipes.reward_model) on the training split, the recipe's model, LoRA and batch; its
    held-out accuracy (eval_metrics.json) on the first `eval_pairs` held-out pairs says how good a judge it is."""
    from dpo_recipes.reward_model import main as reward_main

    out = work / f"reward-model-{steps}"
    if not (out / "model.safetensors").is_file():
        rm_data = work / f"data-reward-model-{eval_pairs}"
        rm_data.mkdir(exist_ok=True)
        (rm_data / "train.jsonl").write_text((data / "train.jsonl").read_text())
        held_out = (data / "test.jsonl").read_text().splitlines()[:eval_pairs]
        (rm_data / "test.jsonl").write_text("\n".join(held_out) + "\n")
        reward_main(recipe_args(*data_args(rm_data), "--output_dir", str(out), "--max_steps", str(steps),
                                "--learning_rate", "1e-3", "--save_strategy", "no", "--logging_steps", "1"))
    return out


def load_eval_inputs(data: Path, n_pairs: int, n_prompts: int):
    from datasets import load_dataset

    from dpo_recipes.evaluation import unique_prompts

    held_out = load_dataset("json", data_files=str(data / "test.jsonl"), split="train")
    n_pairs = len(held_out) if n_pairs is None else min(n_pairs, len(held_out))
    return held_out.select(range(n_pairs)), unique_prompts(held_out, n_prompts)


def batch_size(args) -> int:
    """Pairs per optimizer step of the cells' config (one process)."""
    from dpo_recipes.config import parse_config

    _, training, _ = parse_config(recipe_args("--output_dir", str(WORK / "settings"), *args.extra))
    return training.per_device_train_batch_size * training.gradient_accumulation_steps


def settings_for(args):
    from dpo_recipes.config import parse_config
    from dpo_recipes.evaluation import ReportSettings

    script, training, _ = parse_config(recipe_args("--output_dir", str(WORK / "settings")))
    return ReportSettings(pairs=args.eval_pairs, prompts=args.prompts, samples=args.samples,
                          max_new_tokens=args.max_new_tokens, examples=5, beta=training.beta,
                          max_length=training.max_length, truncation_mode=training.truncation_mode,
                          batch_size=8, seed=0, padding_free=training.padding_free,
                          prefix_sharing=training.prefix_sharing)  # scored in the recipe's layout: shared prompts


def greedy_replies(model, tokenizer, rows, settings) -> list[str]:
    from dpo_recipes.generation import generate
    from dpo_recipes.tokenization import generation_prompt_ids

    prompts = [generation_prompt_ids(tokenizer, row) for row in rows]
    replies = generate(model, tokenizer, prompts, settings.max_new_tokens, sample=False,
                       batch_size=settings.generation_batch_size)
    return [tokenizer.decode(c[0], skip_special_tokens=True).strip() for c in replies]


def reference_outputs(work: Path, data: Path, judge_dir: Path, args) -> dict:
    """The reference's held-out pair log-probs, greedy replies and their judge scores: once for every cell."""
    import torch

    from dpo_recipes.config import parse_config
    from dpo_recipes.evaluation import _load_causal_lm, pair_logps, prompt_text
    from dpo_recipes.judge import judge_scores, load_judge
    from dpo_recipes.tokenization import tokenize_pair
    from dpo_recipes.modeling import load_tokenizer, resolve_model_path

    settings = settings_for(args)
    key = hashlib.sha256(json.dumps([settings.__dict__, judge_dir.name,  # not its path: a copy of the repo reuses it
                                     (data / "test.jsonl").read_bytes().hex()[:4096]], default=str).encode()).hexdigest()[:16]
    path = work / f"reference-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(args.threads)
    _, _, model_args = parse_config(recipe_args())
    base = resolve_model_path(model_args, None)
    tokenizer = load_tokenizer(base, model_args, False, None)
    model = _load_causal_lm(base, model_args, False, quantize=False)
    pairs, rows = load_eval_inputs(data, args.eval_pairs, args.prompts)
    started = time.time()
    chosen, rejected = pair_logps(model, [tokenize_pair(tokenizer, r) for r in pairs], settings, torch.device("cpu"))
    replies = greedy_replies(model, tokenizer, rows, settings)
    judge, judge_tokenizer = load_judge(str(judge_dir), torch.device("cpu"))
    scores = judge_scores(judge, judge_tokenizer, [r["prompt"] for r in rows], replies)
    out = {"chosen": chosen.tolist(), "rejected": rejected.tolist(), "replies": replies, "scores": scores,
           "prompts": [prompt_text(r["prompt"]) for r in rows], "seconds": time.time() - started}
    path.write_text(json.dumps(out) + "\n")
    return out


# ----------------------------------------------------------------------------------------------------------------
# One cell: train, then evaluate against the cached reference


def cell_name(variant: str, seed: int, steps: int) -> str:
    return f"{variant}-seed{seed}-steps{steps}"


def train_key(variant: str, seed: int, args) -> str:
    """Everything a cell's training depends on: its checkpoints are reused only under the same key, so a change of
    the evaluation alone re-evaluates the trained adapter without training again."""
    settings = [VARIANTS[variant], seed, args.steps, args.learning_rate, args.reward_steps, args.extra]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:10]


def cell_key(variant: str, seed: int, args) -> str:
    """Everything a cell's result depends on: a finished cell is reused only under the same key."""
    settings = [train_key(variant, seed, args), args.eval_pairs, args.prompts, args.samples, args.max_new_tokens,
                EVALUATION]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:10]


def run_cell(variant: str, seed: int, args, data: str, train_data: str, madpo_data: str, reward_model: str,
             reference: dict) -> dict:
    import torch

    from dpo_recipes.config import parse_config
    from dpo_recipes.data import load_preference_splits
    from dpo_recipes.errors import UserError
    from dpo_recipes.evaluation import pair_logps
    from dpo_recipes.generation import completion_token_logps, generate, kl_estimates
    from dpo_recipes.judge import judge_scores, load_judge, win_rate
    from dpo_recipes.tokenization import generation_prompt_ids, tokenize_pair
    from dpo_recipes.margins import add_reward_margins
    from dpo_recipes.modeling import load_model, load_tokenizer, resolve_model_path
    from dpo_recipes.resilience import MarkCompleteCheckpoints, complete_checkpoints
    from dpo_recipes.trainer import PreferenceTrainer

    torch.set_num_threads(args.threads)
    started = time.time()
    name = cell_name(variant, seed, args.steps)
    key = cell_key(variant, seed, args)
    out = WORK / "runs" / f"{name}-{train_key(variant, seed, args)}"
    folder = Path(madpo_data if variant == "madpo" else train_data)
    extra = [*VARIANTS[variant], *data_args(folder), "--output_dir", str(out), "--seed", str(seed),
             "--max_steps", str(args.steps), "--save_strategy", "steps", "--save_steps", str(args.save_steps),
             "--save_total_limit", "1", "--logging_steps", "1", "--precompute_ref_log_probs", "true",
             "--warmup_steps", "0", "--learning_rate", str(args.learning_rate)]  # no warmup: it trains at lr 0
    # Shared prompts (prefix_sharing) where this version of the project has them: the same values, fewer tokens.
    try:
        script, training, model_args = parse_config(recipe_args(*extra, "--prefix_sharing", "true", *args.extra))
    except UserError:  # not a key here, or refused for this model / attention implementation
        script, training, model_args = parse_config(recipe_args(*extra, *args.extra))
    path = resolve_model_path(model_args, None)
    tokenizer = load_tokenizer(path, model_args, False, None)
    train, _ = load_preference_splits(script, seed=training.seed)
    if variant == "madpo":  # the stored reward_margin column (write_madpo_margins)
        train, _ = add_reward_margins(script, training, train, None)
    model, peft_config = load_model(path, model_args, False)
    trainer = PreferenceTrainer(model=model, args=training, train_dataset=train,
                                processing_class=tokenizer, peft_config=peft_config,
                                callbacks=[MarkCompleteCheckpoints()])
    complete, _ = complete_checkpoints(out)  # a checkpoint torn by a kill mid-save is not resumed from
    resume = str(complete[-1]) if complete else None
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - started
    eval_started = time.time()
    history = [{k: e[k] for k in ("step", "loss", "rewards/accuracies", "rewards/margins") if k in e}
               for e in trainer.state.log_history if "loss" in e]

    # Held-out pairs: the policy's log-probs against the cached reference's.
    policy = trainer.accelerator.unwrap_model(trainer.model).eval()
    settings = settings_for(args)
    pairs, rows = load_eval_inputs(Path(data), args.eval_pairs, args.prompts)
    chosen, rejected = pair_logps(policy, [tokenize_pair(tokenizer, r) for r in pairs], settings, torch.device("cpu"))
    beta = training.beta
    margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in
               zip(chosen.tolist(), rejected.tolist(), reference["chosen"], reference["rejected"])]

    # Held-out prompts: KL from sampled completions, greedy replies, the judge.
    pad = tokenizer.pad_token_id
    prompts, width = [generation_prompt_ids(tokenizer, row) for row in rows], settings.generation_batch_size
    samples = generate(policy, tokenizer, prompts, settings.max_new_tokens, sample=True, n=settings.samples,
                       seed=1000 * seed, batch_size=width)
    pol = completion_token_logps(policy, prompts, samples, pad, width)
    with policy.disable_adapter():
        ref = completion_token_logps(policy, prompts, samples, pad, width)
    greedy = greedy_replies(policy, tokenizer, rows, settings)
    kl = kl_estimates(pol, ref)
    judge, judge_tokenizer = load_judge(reward_model, torch.device("cpu"))
    scores = judge_scores(judge, judge_tokenizer, [r["prompt"] for r in rows], greedy)
    wins = win_rate(scores, reference["scores"], greedy, reference["replies"])
    return {"variant": variant, "seed": seed, "steps": args.steps, "name": name, "key": key,
            "config": " ".join(VARIANTS[variant] + args.extra),
            "margins": margins, "correct": [m > 0 for m in margins],
            "kl_k3_per_completion": kl["k3"]["per_completion"], "kl_k1_per_completion": kl["k1"]["per_completion"],
            "kl_tokens": kl["tokens"], "replies": greedy, "scores": scores,
            "win_rate": {k: wins[k] for k in ("n", "wins", "ties", "losses", "win_rate", "ci95")},
            "prefix_sharing": bool(getattr(training, "prefix_sharing", False)), "padding_free": training.padding_free,
            "learning_rate": training.learning_rate,
            "train_log": history, "train_seconds": train_seconds, "eval_seconds": time.time() - eval_started,
            "resumed_from": str(Path(resume).relative_to(REPO)) if resume else None}


# ----------------------------------------------------------------------------------------------------------------
# Summary: per variant over seeds and pairs; paired differences against DPO


def mean_ci(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - Z95 * se, mean + Z95 * se], "n": n}


def summarise(cells: list[dict]) -> dict:
    """Per variant: accuracy and margin per held-out pair averaged over the seeds, with a 95% interval over pairs
    (normal approximation); the same for the paired difference against DPO (same pairs, same seeds); k3 KL over
    seeds; the win-rate pooled over seeds and prompts with its Wilson interval."""
    from dpo_recipes.stats import wilson_interval

    by_variant: dict[str, list[dict]] = {}
    for cell in cells:
        by_variant.setdefault(cell["variant"], []).append(cell)
    per_pair = {}
    for variant, group in by_variant.items():
        seeds = sorted(c["seed"] for c in group)
        group.sort(key=lambda c: c["seed"])
        per_pair[variant] = {
            "seeds": seeds,
            "correct": [statistics.fmean(float(c["correct"][i]) for c in group) for i in range(len(group[0]["correct"]))],
            "margin": [statistics.fmean(c["margins"][i] for c in group) for i in range(len(group[0]["margins"]))],
        }
    summary = {}
    for variant in sorted(by_variant, key=lambda v: list(VARIANTS).index(v) if v in VARIANTS else len(VARIANTS)):
        group = by_variant[variant]
        w = [c["win_rate"] for c in group]
        n = sum(x["n"] for x in w)
        won = sum(x["wins"] + 0.5 * x["ties"] for x in w)
        entry = {
            "seeds": per_pair[variant]["seeds"],
            "reward_accuracy": mean_ci(per_pair[variant]["correct"]),
            "reward_margin": mean_ci(per_pair[variant]["margin"]),
            "reward_accuracy_per_seed": [statistics.fmean(map(float, c["correct"])) for c in group],
            "kl_k3": mean_ci([c["kl_k3_per_completion"]["mean"] for c in group]),
            "win_rate": {"n": n, "win_rate": won / n if n else float("nan"), "ci95": list(wilson_interval(won, n)),
                         "wins": sum(x["wins"] for x in w), "ties": sum(x["ties"] for x in w),
                         "losses": sum(x["losses"] for x in w)},
            "eval_minutes_per_cell": _mean_minutes([c["eval_seconds"] for c in group]),
        }
        dpo = per_pair.get("dpo")
        if variant != "dpo" and dpo and dpo["seeds"] == per_pair[variant]["seeds"]:
            entry["vs_dpo"] = {
                "reward_accuracy": mean_ci([a - b for a, b in zip(per_pair[variant]["correct"], dpo["correct"])]),
                "reward_margin": mean_ci([a - b for a, b in zip(per_pair[variant]["margin"], dpo["margin"])]),
            }
            # The same differences seed by seed (each seed's cell against DPO's cell of that seed)
            pairs = list(zip(group, sorted(by_variant["dpo"], key=lambda c: c["seed"])))
            entry["vs_dpo_per_seed"] = {
                "reward_accuracy": [statistics.fmean(map(float, c["correct"])) - statistics.fmean(map(float, d["correct"]))
                                    for c, d in pairs],
                "reward_margin": [statistics.fmean(c["margins"]) - statistics.fmean(d["margins"]) for c, d in pairs],
            }
        summary[variant] = entry
    return summary


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mean_minutes(seconds: list) -> float | None:
    """Mean in minutes over the cells whose time is known (None: trained by an earlier run that did not record it)."""
    known = [x for x in seconds if x is not None]
    return statistics.fmean(known) / 60 if known else None


def _ci(stat: dict, digits: int = 3) -> str:
    low, high = stat["ci95"]
    return f"{stat['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(result: dict) -> str:
    meta, summary, reference = result["meta"], result["summary"], result["reference"]
    done = sum(len(s["seeds"]) for s in summary.values())
    lines = [
        f"SmolLM2-135M-Instruct (Q4_1 weights dequantised to float32), LoRA DPO variants on Anthropic HH harmless-base "
        f"(`data/hh-rlhf`): {meta['steps']} steps of {meta['batch']} pairs per cell ({meta['train_pairs']} training "
        f"pairs drawn once with a fixed seed, each seen once), seeds {meta['seeds']}; {done} of {meta['cells']} cells "
        f"done. Held-out: {meta['eval_pairs']} pairs, {meta['prompts']} prompts. Reward model (MADPO's margins and the "
        f"judge): {meta['reward_steps']} steps, held-out accuracy {meta['reward_model'].get('eval_accuracy', float('nan')):.3f} "
        f"on {meta['reward_eval_pairs']} pairs. `{meta['command']}` on {meta['machine']} shared with other jobs; the "
        f"last invocation that ran cells took {meta['minutes']:.0f} min, cells run {meta['jobs']} at a time. Training "
        "times are not compared: cells ran under different loads and some resumed from checkpoints (each cell's "
        "train_seconds and resumed_from are in its JSON).",
        "",
        "Accuracy and margin: per held-out pair, averaged over seeds, mean with a 95% interval over pairs; "
        "\"vs DPO\": the paired difference on the same pairs and seeds; a difference is called supported only when "
        "that interval excludes 0 and every seed's difference has the same sign. KL: k3 estimate of KL(policy || reference) per completion, mean over seeds [95% interval "
        "over seeds]. Win-rate: greedy replies judged by the reward model trained on the training split, ties half, "
        "pooled over seeds and prompts, Wilson 95% interval (the prompts repeat across seeds, so it is optimistic).",
        "",
        "| variant | reward accuracy | vs DPO | reward margin | vs DPO | KL k3 | win-rate vs reference | "
        "eval min/cell |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        vs = s.get("vs_dpo")
        w = s["win_rate"]
        lines.append(
            f"| {variant} | {_ci(s['reward_accuracy'])} | {_ci(vs['reward_accuracy']) if vs else ''} | "
            f"{_ci(s['reward_margin'])} | {_ci(vs['reward_margin']) if vs else ''} | {_ci(s['kl_k3'])} | "
            f"{w['win_rate']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}] ({w['wins']}/{w['ties']}/{w['losses']}) | "
            f"{_minutes(s['eval_minutes_per_cell'])} |")
    lines += ["", *conclusions(summary, meta)]
    if result.get("layout_check"):
        c = result["layout_check"]
        lines.append(f"- Scoring check: {c['cells']} cells were also evaluated earlier with padded batches on the first "
                     f"{c['pairs']} held-out pairs (`{c['folder']}/`); the shared-prompt margins here "
                     f"differ from those by at most {c['max_abs_margin_difference']:.1e}, and {c['same_sign']} of "
                     f"{c['compared']} have the same sign.")
    first = {}
    for cell in sorted(result["cells"], key=lambda c: c["seed"]):
        first.setdefault(cell["variant"], cell)
    lines += ["", f"Greedy replies (at most {meta['max_new_tokens']} new tokens) on the first five held-out prompts: "
              "the reference, then each variant's policy (its first seed).", ""]
    for i, prompt in enumerate(reference["prompts"][:5]):
        lines += [f"**Prompt {i + 1}.** {_cell(prompt[-300:])}", "", "| model | reply |", "|---|---|",
                  f"| reference | {_cell(reference['replies'][i])} |"]
        lines += [f"| {v} | {_cell(c['replies'][i])} |" for v, c in first.items()]
        lines.append("")
    return "\n".join(lines)


def layout_check(cells: list[dict], folder: Path) -> dict | None:
    """The cells' margins against an earlier evaluation of the same trained cells with padded batches (the first
    pairs of the split): what scoring in the shared-prompt layout changed."""
    earlier = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    diffs, same, compared = [], 0, 0
    for cell in cells:
        old = earlier.get(cell["name"])
        if old is None:
            continue
        for new_margin, old_margin in zip(cell["margins"], old["margins"]):
            diffs.append(abs(new_margin - old_margin))
            same += (new_margin > 0) == (old_margin > 0)
            compared += 1
    if not compared:
        return None
    return {"folder": os.path.relpath(folder.resolve(), REPO), "cells": sum(c["name"] in earlier for c in cells),
            "pairs": len(next(iter(earlier.values()))["margins"]),
            "compared": compared, "same_sign": same, "max_abs_margin_difference": max(diffs)}


def conclusions(summary: dict, meta: dict) -> list[str]:
    """What the intervals support, stated mechanically (the discussion around it is the reader's)."""
    out = []
    dpo = summary.get("dpo")
    if dpo:
        low, high = dpo["reward_accuracy"]["ci95"]
        verdict = "entirely above 0.5: the target is met" if low > 0.5 else "includes 0.5: the target (entirely above 0.5) is not met"
        out.append(f"- DPO's held-out reward accuracy {_ci(dpo['reward_accuracy'])} over {len(dpo['seeds'])} seed(s): "
                   f"the interval {verdict}.")
    for variant, s in summary.items():
        vs = s.get("vs_dpo")
        if not vs:
            continue
        for key, name in (("reward_accuracy", "accuracy"), ("reward_margin", "margin")):
            low, high = vs[key]["ci95"]
            per_seed = s["vs_dpo_per_seed"][key]
            seeds = ", ".join(f"{d:+.3f}" for d in per_seed)
            if (low > 0 and min(per_seed) > 0) or (high < 0 and max(per_seed) < 0):
                out.append(f"- {variant} vs DPO, held-out reward {name}: {_ci(vs[key])}, the same sign in every seed "
                           f"({seeds}): a difference this run supports ({'higher' if low > 0 else 'lower'}).")
            elif low > 0 or high < 0:
                out.append(f"- {variant} vs DPO, held-out reward {name}: {_ci(vs[key])} over pairs, but not the same "
                           f"sign in every seed ({seeds}): not a supported difference.")
    if not any("a difference this run supports" in line for line in out):
        out.append("- No variant differs from DPO in held-out reward accuracy or margin in a way this run supports.")
    w = [(v, s["win_rate"]) for v, s in summary.items() if s["win_rate"]["n"]]
    above = [v for v, x in w if x["ci95"][0] > 0.5]
    out.append(f"- Win-rate over the reference with the whole interval above 0.5: {', '.join(above) or 'none'}.")
    if meta["cells"] > sum(len(s["seeds"]) for s in summary.values()):
        out.append("- Partial results: not every cell has finished.")
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "(empty)"


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("reward_accuracy", "reward_margin", "kl_k3"),
                              ("Held-out reward accuracy", "Held-out reward margin", "KL(policy || ref), k3")):
        means = [summary[n][key]["mean"] for n in names]
        errs = [[m - summary[n][key]["ci95"][0] for n, m in zip(names, means)],
                [summary[n][key]["ci95"][1] - m for n, m in zip(names, means)]]
        ax.bar(names, means, yerr=errs, capsize=4, color="#4c72b0")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("SmolLM2-135M-Instruct on HH harmless-base: 95% intervals")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_readme(md: str, readme: Path = REPO / "README.md") -> None:
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0:
        raise SystemExit(f"README.md has no {README_START} ... {README_END} section")
    readme.write_text(text[: start + len(README_START)] + "\n" + md + "\n" + text[end:])


# ----------------------------------------------------------------------------------------------------------------


def machine() -> str:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core CPU, {memory_gb:.0f} GB, no GPU"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps per cell (the same for every variant)")
    parser.add_argument("--learning_rate", type=float, default=5e-4,
                        help="the cells' peak learning rate (cosine, no warmup): the recipe's")
    parser.add_argument("--save_steps", type=int, default=8, help="checkpoint interval (resume point)")
    parser.add_argument("--reward_steps", type=int, default=12, help="reward model (MADPO step one, the judge)")
    parser.add_argument("--reward_eval_pairs", type=int, default=48, help="held-out pairs the reward model is scored on")
    parser.add_argument("--eval_pairs", type=int, default=None, help="held-out pairs scored (default: all)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2, help="sampled completions per prompt for the KL")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2, help="cells run at a time, one process each")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: OMP_NUM_THREADS, else the cores split among --jobs)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--readme", action="store_true", help="only copy the Markdown summary into README.md")
    parser.add_argument("extra", nargs="*", help="further config overrides for every cell, after --")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.readme:
        write_readme((out / "real.md").read_text() + "\n![Real-model benchmark](bench/results/real.png)")
        return {}
    from dpo_recipes.threads import threads_per_process  # torch: imported once the arguments are known good

    args.threads = args.threads or threads_per_process(args.jobs)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    cells_dir = out / "real"
    cells_dir.mkdir(parents=True, exist_ok=True)

    data = write_split(WORK)
    reward_model = train_reward_model(WORK, data, args.reward_steps, args.reward_eval_pairs)
    batch = batch_size(args)
    train_data = write_train_subset(data, args.steps * batch)
    madpo_data = write_madpo_margins(train_data, reward_model) if "madpo" in args.variants else train_data
    reference = reference_outputs(WORK, data, reward_model, args)
    todo = [(v, s) for s in args.seeds for v in args.variants]
    cells = {}
    for v, s in todo:
        path = cells_dir / f"{cell_name(v, s, args.steps)}.json"
        if path.is_file() and json.loads(path.read_text()).get("key") == cell_key(v, s, args):
            cells[(v, s)] = json.loads(path.read_text())  # finished with the same settings: kept
    pending = [(v, s) for v, s in todo if (v, s) not in cells]
    print(f"real bench: {len(cells)} of {len(todo)} cells done, {len(pending)} to run, {args.jobs} at a time",
          flush=True)

    earlier_run = json.loads((out / "real.json").read_text())["meta"] if (out / "real.json").is_file() else {}

    def write(final: bool) -> dict:
        done = [cells[k] for k in todo if k in cells]
        meta = {"command": "make real-bench", "argv": sys.argv[1:] if argv is None else argv, "steps": args.steps,
                "seeds": args.seeds, "variants": args.variants, "cells": len(todo),
                "batch": batch, "train_pairs": sum(1 for _ in open(train_data / "train.jsonl")),
                "reward_model": json.loads((reward_model / "eval_metrics.json").read_text()),
                "eval_pairs": len(reference["chosen"]), "prompts": len(reference["prompts"]),
                "samples": args.samples, "max_new_tokens": args.max_new_tokens, "reward_steps": args.reward_steps,
                "reward_eval_pairs": args.reward_eval_pairs, "jobs": args.jobs,
                "machine": machine(),
                "minutes": (time.time() - started) / 60 if pending else earlier_run.get("minutes", 0.0),
                "complete": final and len(done) == len(todo)}
        result = {"meta": meta, "summary": summarise(done) if done else {}, "reference": reference, "cells": done,
                  "layout_check": layout_check(done, cells_dir / "padded-100")}
        (out / "real.json").write_text(json.dumps(result, indent=1) + "\n")
        if done:
            (out / "real.md").write_text(markdown(result) + "\n")
            plot(result, out / "real.png")
        return result

    if pending:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_cell, v, s, args, str(data), str(train_data), str(madpo_data),
                                   str(reward_model), reference): (v, s)
                       for v, s in pending}
            for future in as_completed(futures):
                v, s = futures[future]
                try:
                    cell = future.result()
                except Exception as err:  # the other cells go on; a rerun of the command retries this one
                    print(f"{cell_name(v, s, args.steps)}: FAILED: {type(err).__name__}: {err}", flush=True)
                    continue
                earlier = cells_dir / f"{cell['name']}.json"
                if (cell["resumed_from"] or "").endswith(f"checkpoint-{args.steps}"):
                    # trained by an earlier run (its final checkpoint), evaluated now: that run's training time
                    known = json.loads(earlier.read_text()) if earlier.is_file() else {}
                    cell["train_seconds"] = known.get("train_seconds")
                    cell["evaluated_from_earlier_training"] = True
                earlier.write_text(json.dumps(cell, indent=1) + "\n")
                cells[(v, s)] = cell
                acc = statistics.fmean(map(float, cell["correct"]))
                print(f"{cell['name']}: held-out accuracy {acc:.3f}, win-rate {cell['win_rate']['win_rate']:.3f}, "
                      f"evaluated in {cell['eval_seconds'] / 60:.1f} min", flush=True)
                write(final=False)
    result = write(final=True)
    print(f"wrote {out / 'real.json'}, real.md, real.png ({result['meta']['minutes']:.1f} min)", flush=True)
    return result


if __name__ == "__main__":
    main()

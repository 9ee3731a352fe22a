"""Ground truth: DPO and its variants judged by a reward nobody trained (SmolLM2-135M-Instruct, CPU).

    make ground-truth                                  # python bench/ground_truth.py: resumes, one JSON per cell
    python bench/ground_truth.py --quick --out outputs/ground-truth-quick   # every stage on a handful of prompts

The task (data/ground_truth/README.md): the model is asked for a one-sentence review of a film; the true reward of a
reply is the VADER compound sentiment of its text, in [-1, 1] (a lexicon and rules: nothing here trains it).
Stages, in this order (bench/ground_truth.md is the protocol fixed before the test prompts were sampled):

1. The reference (the base model; LoRA's adapters off) samples K replies per training prompt and a few per validation
   prompt (temperature 1, no top-k / top-p, at most `max_new_tokens` tokens); each reply is scored. A training pair
   is a higher- vs a lower-scored reply of the same prompt with a score gap of at least `min_gap`: the best against
   the worst, the second best against the second worst, ... Both scores are kept.
2. Label noise: for training seed s, a fixed permutation of the pairs (random.Random(s)); at rate eps its first
   round(eps * N) pairs are swapped (chosen <-> rejected, with their scores). The swaps are written to
   swaps/eps<eps>-seed<s>.json and are the same for every variant (so eps 0.2's swaps are a subset of eps 0.4's).
3. Learning rate and steps: DPO at the main beta, eps 0, seed 0, trained at each of `sweep_lrs` with a constant
   learning rate and evaluated on the validation prompts after each of `sweep_steps`; the pair with the highest
   validation mean reward is the budget of every cell (sweep.json).
4. The reference on the test prompts: `reference_samples` replies per prompt (its mean reward, best-of-n) and the
   held-out pairs (its best against its worst reply per prompt, the same minimum gap; no noise).
5. Cells (variant x beta x eps x seed), most important first; each trains through the project's PreferenceTrainer
   (dpo_recipes.train.trainer, dpo_recipes.train.losses), then samples `samples` replies per test prompt and measures the mean
   true reward, KL(policy || reference) (dpo_recipes.report.generation.kl_estimates) and the implicit reward margin and
   accuracy on the held-out pairs. Every reply is written to samples/<cell>.jsonl (prompt, completion, reward).
6. Over-confidence: DPO and IPO at the main beta for `overconf_epochs` epochs, evaluated after each epoch.

The names in backquotes are fields of `Settings` below (the full run's values; `--quick` swaps in QUICK's).

Outputs (under --out, default bench/results): ground_truth.json ({"cells": [...], ...}), ground_truth.md, the plots
ground_truth_*.png, and ground_truth/ (reference samples, pairs, swaps, cells/<cell>.json, samples/<cell>.jsonl).
Reward models and the reference log-prob cache go under bench/tmp/ground_truth/ (ignored by git). A rerun skips
every finished cell (its JSON exists with the same settings and VERSION); an interrupted cell starts again. The
cell key does not cover the package's code: after a change to training or generation, raise VERSION to rerun all.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cell_pool import run_in_pool  # noqa: E402
from bench_training import cpu_model  # noqa: E402  (the CPU a cell ran on: cells did not all run on one machine)
from dpo_recipes.report.generation import completion_token_logps, generate, kl_estimates  # noqa: E402
from dpo_recipes.data.tokenization import generation_prompt_ids, tokenize_pair  # noqa: E402
PROMPTS = REPO / "data" / "ground_truth" / "prompts.jsonl"
RECIPE = REPO / "recipes" / "smollm2-135m" / "config.yaml"
WORK = REPO / "bench" / "tmp" / "ground_truth"
MADPO_TAU = math.log(999.0)  # MADPO's threshold (the paper's and the project's default madpo_tau)
VARIANTS = {  # name -> loss_type; cdpo and rdpo get label_smoothing = the true eps
    "dpo": "sigmoid", "ipo": "ipo", "cdpo": "cdpo", "rdpo": "rdpo", "madpo_true": "madpo", "madpo_rm": "madpo",
}
# The evaluation's version: a change re-runs finished cells.
VERSION = 1


@dataclasses.dataclass
class Settings:
    model: str = "smollm2-135m-instruct"
    k: int = 6  # reference samples per training prompt
    min_gap: float = 0.25
    max_new_tokens: int = 48
    val_samples: int = 4
    samples: int = 3  # policy samples per test prompt
    reference_samples: int = 16  # reference samples per test prompt (best-of-n up to this)
    batch: int = 8  # pairs per optimizer step
    gen_batch: int = 32
    betas: tuple = (0.03, 0.1, 0.3)
    main_beta: float = 0.1
    epsilons: tuple = (0.0, 0.2, 0.4)
    seeds: tuple = (0, 1, 2, 3, 4)
    sweep_lrs: tuple = (5e-4, 1e-3)
    sweep_steps: tuple = (8, 16, 24)
    overconf_epochs: int = 3
    overconf_seeds: int = 3  # the first seeds
    reward_steps: int = 0  # 0: one epoch of the training pairs
    prompts_per_split: int = 0  # 0: all (quick mode: a few)
    quick: bool = False

    def key(self) -> str:
        return hashlib.sha256(json.dumps([dataclasses.asdict(self), VERSION], default=str).encode()).hexdigest()[:10]


QUICK = dict(k=4, min_gap=0.05, max_new_tokens=16, val_samples=2, samples=2, reference_samples=4, batch=2,
             betas=(0.1,), epsilons=(0.0, 0.4), seeds=(0,), sweep_lrs=(5e-4, 1e-3), sweep_steps=(1, 2),
             overconf_epochs=2, reward_steps=2, prompts_per_split=4, quick=True)


# ----------------------------------------------------------------------------------------------------------------
# The true reward and the task


_ANALYZER = None


def true_reward(text: str) -> float:
    """VADER's compound sentiment of the reply, in [-1, 1]."""
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _ANALYZER = SentimentIntensityAnalyzer()
    return float(_ANALYZER.polarity_scores(text)["compound"])


def load_prompts(split: str, limit: int = 0, path: Path = PROMPTS) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == split]
    return rows[:limit] if limit else rows


def make_pairs(samples: list[dict], min_gap: float, per_prompt: int = 0) -> list[dict]:
    """Per prompt, replies sorted by reward: best vs worst, second best vs second worst, ... (at most `per_prompt`
    pairs; 0: no limit), each kept when its gap is at least min_gap (and above 0). `samples`: rows with prompt,
    completion, reward."""
    by_prompt: dict[str, list[dict]] = {}
    for row in samples:
        by_prompt.setdefault(row["prompt"], []).append(row)
    pairs = []
    for prompt, rows in by_prompt.items():
        ranked = sorted(rows, key=lambda r: -r["reward"])
        for i in range(min(len(ranked) // 2, per_prompt or len(ranked))):
            hi, lo = ranked[i], ranked[-1 - i]
            gap = hi["reward"] - lo["reward"]
            if gap >= min_gap and gap > 0:
                pairs.append({"id": len(pairs), "prompt": prompt, "title": hi.get("title"),
                              "chosen": hi["completion"], "rejected": lo["completion"],
                              "score_chosen": hi["reward"], "score_rejected": lo["reward"]})
    return pairs


def swapped_ids(n_pairs: int, eps: float, seed: int) -> list[int]:
    """The pairs swapped at rate eps for training seed `seed`: the first round(eps * n) of a seeded permutation, so
    a lower rate's swaps are a subset of a higher rate's, and every variant gets the same ones."""
    order = list(range(n_pairs))
    random.Random(seed).shuffle(order)
    return sorted(order[: round(eps * n_pairs)])


def noisy_pairs(pairs: list[dict], swapped: list[int]) -> list[dict]:
    swap = set(swapped)
    out = []
    for p in pairs:
        if p["id"] in swap:
            p = {**p, "chosen": p["rejected"], "rejected": p["chosen"],
                 "score_chosen": p["score_rejected"], "score_rejected": p["score_chosen"], "swapped": True}
        else:
            p = {**p, "swapped": False}
        out.append(p)
    return out


def best_of_n(rewards_per_prompt: list[list[float]], n: int) -> float:
    """Expected true reward of the best of n replies drawn without replacement from each prompt's m samples
    (the exact average over all n-subsets: the i-th smallest is the maximum of C(i-1, n-1) of the C(m, n)), averaged
    over prompts."""
    values = []
    for rewards in rewards_per_prompt:
        s, m = sorted(rewards), len(rewards)
        total = math.comb(m, n)
        values.append(sum(s[i] * math.comb(i, n - 1) for i in range(m)) / total)
    return sum(values) / len(values)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || reference) = log n - (n - 1) / n (the analytical value for continuous rewards)."""
    return math.log(n) - (n - 1) / n


def madpo_scale() -> float:
    """True score gaps to MADPO's margin scale: the largest possible gap (2, from -1 to +1) maps to the paper's
    threshold tau = ln 999, where the weight's scale c passes through 1."""
    return MADPO_TAU / 2.0


def ipo_tau(beta: float, mean_tokens: float) -> float:
    """IPO's tau (its beta) at a scale comparable to DPO's beta: IPO's fixed target for the length-normalised margin,
    1 / (2 tau), is set to the per-token margin at which DPO's gradient weight sigmoid(-beta h) has fallen to 1/4
    (beta h = ln 3), over the training pairs' mean completion length."""
    return round(beta * mean_tokens / (2.0 * math.log(3.0)), 3)


# ----------------------------------------------------------------------------------------------------------------
# Models, sampling, scoring


def recipe_args(settings: Settings, *extra: str) -> list[str]:
    model = (["--model_name_or_path", settings.model] if settings.model != "tiny"
             else ["--model_name_or_path", "", "--tiny_model", "llama"])
    return ["--config", str(RECIPE), *model, "--report_to", "none", "--eval_strategy", "no", "--eval_report", "false",
            "--dataset_num_proc", "1", "--dtype", "bfloat16", "--max_length", "256", *extra]


def load_base(settings: Settings):
    from dpo_recipes.train.config import parse_config
    from dpo_recipes.models.loading import load_model, load_tokenizer, resolve_model_path

    _, _, model_args = parse_config(recipe_args(settings, "--output_dir", str(WORK / "settings")))
    path = resolve_model_path(model_args, "llama")
    tokenizer = load_tokenizer(path, model_args, False, None)
    model, _ = load_model(path, model_args, False)
    return model.eval(), tokenizer, path


def prompt_ids(tokenizer, text: str) -> list[int]:
    return generation_prompt_ids(tokenizer, {"prompt": [{"role": "user", "content": text}]})


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def sample_rows(model, tokenizer, prompts: list[dict], n: int, settings: Settings, seed: int) -> tuple[list, list]:
    """(rows, token ids): per reply its prompt, title, completion text and true reward; per prompt its ids and its
    completions' ids."""
    ids = [prompt_ids(tokenizer, p["prompt"]) for p in prompts]
    completions = generate(model, tokenizer, ids, settings.max_new_tokens, sample=True, n=n, seed=seed,
                           batch_size=settings.gen_batch)
    rows, tokens = [], []
    for p, pid, comps in zip(prompts, ids, completions):
        for c in comps:
            text = decode(tokenizer, c)
            rows.append({"prompt": p["prompt"], "title": p["title"], "completion": text, "reward": true_reward(text),
                         "tokens": len(c)})
        tokens.append((pid, comps))
    return rows, tokens


def conversational(pair: dict) -> dict:
    return {"prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def heldout_pair_logratios(model, tokenizer, pairs: list[dict]) -> list[tuple]:
    """Per held-out pair (TRL's tokenization), under `model`: the summed log-probs of chosen and rejected and their
    token counts."""
    tokenized = [tokenize_pair(tokenizer, conversational(pair)) for pair in pairs]
    logps = completion_token_logps(model, [t["prompt_ids"] for t in tokenized],
                                   [[t["chosen_ids"], t["rejected_ids"]] for t in tokenized], tokenizer.pad_token_id)
    return [(c.sum().item(), r.sum().item(), len(c), len(r)) for c, r in zip(logps[::2], logps[1::2])]


# ----------------------------------------------------------------------------------------------------------------
# Shared inputs: reference samples, pairs, swaps


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.rename(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reference_samples(split: str, n: int, settings: Settings, folder: Path, threads: int) -> Path:
    """The reference's n replies per prompt of `split`, scored: reference/<split>.jsonl."""
    import torch

    path = folder / "reference" / f"{split}.jsonl"
    if path.is_file():
        return path
    torch.set_num_threads(threads)
    model, tokenizer, _ = load_base(settings)
    seed = {"train": 1, "validation": 2, "test": 3}[split] * 10**8  # generate() seeds chunk i with seed + i
    rows, _ = sample_rows(model, tokenizer, load_prompts(split, settings.prompts_per_split), n, settings, seed)
    write_jsonl(path, rows)
    return path


def write_pairs(folder: Path, settings: Settings) -> None:
    train = make_pairs(read_jsonl(folder / "reference" / "train.jsonl"), settings.min_gap)
    write_jsonl(folder / "pairs" / "train.jsonl", train)
    for eps in settings.epsilons:
        for seed in settings.seeds:
            swaps = folder / "swaps" / f"eps{eps}-seed{seed}.json"
            if not swaps.is_file():
                swaps.parent.mkdir(parents=True, exist_ok=True)
                swaps.write_text(json.dumps({"epsilon": eps, "seed": seed, "pairs": len(train),
                                             "swapped": swapped_ids(len(train), eps, seed)}) + "\n")


def write_heldout_pairs(folder: Path, settings: Settings, threads: int) -> None:
    """The held-out pairs (best against worst reply of each test prompt, the same minimum gap) and the reference's
    log-ratios on them, computed once for every cell."""
    import torch

    path = folder / "pairs" / "test_reference.json"
    if path.is_file():
        return
    torch.set_num_threads(threads)
    pairs = make_pairs(read_jsonl(folder / "reference" / "test.jsonl"), settings.min_gap, per_prompt=1)
    write_jsonl(folder / "pairs" / "test.jsonl", pairs)
    model, tokenizer, _ = load_base(settings)
    path.write_text(json.dumps(heldout_pair_logratios(model, tokenizer, pairs)) + "\n")


def training_pairs(folder: Path, eps: float, seed: int) -> list[dict]:
    swaps = json.loads((folder / "swaps" / f"eps{eps}-seed{seed}.json").read_text())["swapped"]
    return noisy_pairs(read_jsonl(folder / "pairs" / "train.jsonl"), swaps)


# ----------------------------------------------------------------------------------------------------------------
# One cell


@dataclasses.dataclass(frozen=True)
class Cell:
    variant: str
    beta: float
    epsilon: float
    seed: int
    kind: str = "main"  # main | sweep | overconf
    learning_rate: float = 0.0
    steps: int = 0
    eval_at: tuple = ()
    split: str = "test"

    @property
    def name(self) -> str:
        name = f"{self.variant}-beta{self.beta:g}-eps{self.epsilon:g}-seed{self.seed}"
        if self.kind == "sweep":
            name += f"-lr{self.learning_rate:g}"
        return name if self.kind == "main" else f"{self.kind}-{name}"

    def key(self, settings: Settings) -> str:
        return hashlib.sha256(json.dumps([dataclasses.asdict(self), settings.key()]).encode()).hexdigest()[:10]


def reward_model_margins(cell: Cell, rows: list[dict], heldout: list[dict], settings: Settings) -> tuple[list, dict]:
    """MADPO step one on the cell's own (noisy) training pairs: a reward model (dpo_recipes.commands.reward_model) trained for
    one epoch, then its margins r(chosen) - r(rejected) on those pairs (dpo_recipes.train.margins)."""
    import torch
    from datasets import Dataset

    from dpo_recipes.train.margins import load_reward_model, score_pairs
    from dpo_recipes.commands.reward_model import main as reward_main

    out = WORK / "reward-models" / f"eps{cell.epsilon:g}-seed{cell.seed}-{settings.key()}"
    if not (out / "model.safetensors").is_file():
        data = out.with_name(out.name + "-data")
        write_jsonl(data / "train.jsonl", [conversational(r) for r in rows])
        write_jsonl(data / "test.jsonl", [conversational(r) for r in heldout])
        steps = settings.reward_steps or math.ceil(len(rows) / settings.batch)
        reward_main(recipe_args(settings, "--dataset_name", str(data), "--dataset_train_split", "train",
                                "--dataset_test_split", "test", "--output_dir", str(out), "--max_steps", str(steps),
                                "--per_device_train_batch_size", str(settings.batch), "--gradient_accumulation_steps",
                                "1", "--learning_rate", "1e-3", "--save_strategy", "no", "--logging_steps", "1",
                                "--warmup_steps", "5",  # as when the committed cells ran (the recipe's, then)
                                "--seed", str(cell.seed)))
    model, tokenizer = load_reward_model(str(out), device=torch.device("cpu"))
    margins = score_pairs(model, tokenizer, Dataset.from_list([conversational(r) for r in rows]), batch_size=8)
    metrics = json.loads((out / "eval_metrics.json").read_text()) if (out / "eval_metrics.json").is_file() else {}
    return margins, metrics


def evaluate(model, tokenizer, cell: Cell, settings: Settings, folder: Path, beta: float, heldout: list[dict],
             reference_h: list, step: int) -> tuple[dict, list[dict]]:
    """Samples on the cell's evaluation prompts: mean true reward, KL(policy || reference); held-out pair margins."""
    import statistics

    was_training = model.training
    model.eval()
    prompts = load_prompts(cell.split, settings.prompts_per_split)
    n = settings.samples if cell.split == "test" else settings.val_samples
    # The same seed for every variant at a (seed, step): common random numbers for the paired comparisons.
    rows, tokens = sample_rows(model, tokenizer, prompts, n, settings, 10**6 * (cell.seed + 1) + 1000 * step)
    pad = tokenizer.pad_token_id
    pol = completion_token_logps(model, [p for p, _ in tokens], [c for _, c in tokens], pad)
    with model.disable_adapter():
        ref = completion_token_logps(model, [p for p, _ in tokens], [c for _, c in tokens], pad)
    kl = kl_estimates(pol, ref)
    rewards = [r["reward"] for r in rows]
    per_prompt = [statistics.fmean(rewards[i : i + n]) for i in range(0, len(rewards), n)]
    result = {"step": step, "policy_reward": statistics.fmean(rewards),
              "policy_reward_se": statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else None,
              "n_completions": len(rewards), "n_prompts": len(per_prompt),
              "kl": kl["k3"]["per_completion"]["mean"], "kl_se": kl["k3"]["per_completion"]["se"],
              "kl_k1": kl["k1"]["per_completion"]["mean"], "kl_k1_se": kl["k1"]["per_completion"]["se"],
              "mean_completion_tokens": kl["mean_completion_tokens"]}
    if heldout:
        h = heldout_pair_logratios(model, tokenizer, heldout)
        diffs = [(c - rc) - (r - rr) for (c, r, _, _), (rc, rr, _, _) in zip(h, reference_h)]
        normalised = [(c - rc) / max(lc, 1) - (r - rr) / max(lr, 1)
                      for (c, r, lc, lr), (rc, rr, _, _) in zip(h, reference_h)]
        result.update({"margin": beta * statistics.fmean(diffs), "accuracy": statistics.fmean(d > 0 for d in diffs),
                       "logratio_margin": statistics.fmean(diffs),
                       "normalised_logratio_margin": statistics.fmean(normalised), "heldout_pairs": len(diffs)})
    for r in rows:
        r["step"] = step
        del r["tokens"]
    if was_training:
        model.train()
    return result, rows


def run_cell(cell: Cell, settings: Settings, folder: str, threads: int) -> dict:
    """Train one cell through PreferenceTrainer and evaluate it (at each of cell.eval_at, and at the end)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from dpo_recipes.train.config import parse_config
    from dpo_recipes.train.margins import margins_from_scores
    from dpo_recipes.models.loading import load_model, load_tokenizer, resolve_model_path
    from dpo_recipes.train.trainer import PreferenceTrainer

    torch.set_num_threads(threads)
    started = time.time()
    folder = Path(folder)
    rows = training_pairs(folder, cell.epsilon, cell.seed)
    heldout = read_jsonl(folder / "pairs" / "test.jsonl") if cell.split == "test" else []
    mean_tokens = json.loads((folder / "pairs" / "stats.json").read_text())["mean_completion_tokens"]
    beta = ipo_tau(cell.beta, mean_tokens) if cell.variant == "ipo" else cell.beta
    extra = ["--loss_type", VARIANTS[cell.variant], "--beta", str(beta), "--seed", str(cell.seed),
             "--output_dir", str(WORK / settings.key() / cell.name), "--max_steps", str(cell.steps),
             "--learning_rate", str(cell.learning_rate), "--lr_scheduler_type", "constant", "--warmup_steps", "0",
             "--per_device_train_batch_size", str(settings.batch), "--gradient_accumulation_steps", "1",
             "--save_strategy", "no", "--logging_steps", "1", "--precompute_ref_log_probs", "true",
             "--ref_logps_cache_dir", str(WORK / "ref_logps"),
             # The grid's first cells ran with PEFT's fp32 adapter matmuls and TRL's fused LM head (commit 9da5bc8),
             # before the bf16 adapter and the compact head became the CPU defaults: every cell of the grid computes
             # the same way (bench/ground_truth.md).
             "--cpu_adapter_matmuls_in_half", "false", "--cpu_compact_lm_head", "false"]
    if cell.variant in ("cdpo", "rdpo"):
        extra += ["--label_smoothing", str(cell.epsilon)]
    _, training, model_args = parse_config(recipe_args(settings, *extra))
    path = resolve_model_path(model_args, "llama")
    tokenizer = load_tokenizer(path, model_args, False, None)
    dataset = Dataset.from_list([{**conversational(r), "score_chosen": r["score_chosen"],
                                  "score_rejected": r["score_rejected"]} for r in rows])
    rm_metrics = None
    if cell.variant == "madpo_true":  # the project's score-column margins: scale x (score_chosen - score_rejected)
        dataset = margins_from_scores(dataset, "score_chosen", "score_rejected", cell.name, madpo_scale())
    elif cell.variant == "madpo_rm":
        margins, rm_metrics = reward_model_margins(cell, rows, read_jsonl(folder / "pairs" / "test.jsonl"), settings)
        dataset = dataset.add_column("reward_margin", margins)
    dataset = dataset.remove_columns(["score_chosen", "score_rejected"])
    model, peft_config = load_model(path, model_args, False)

    evals, samples = [], []
    reference_h: list = []

    def run_eval(policy, step):
        result, sampled = evaluate(policy, tokenizer, cell, settings, folder, beta, heldout, reference_h, step)
        evals.append(result)
        samples.extend(sampled)
        print(f"{cell.name} step {step}: reward {result['policy_reward']:.3f} kl {result['kl']:.2f} "
              f"margin {result.get('margin', float('nan')):.3f}", flush=True)

    class EvalAt(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in cell.eval_at and state.global_step != cell.steps:
                run_eval(model, state.global_step)

    trainer = PreferenceTrainer(model=model, args=training, train_dataset=dataset, processing_class=tokenizer,
                                peft_config=peft_config, callbacks=[EvalAt()])
    policy = trainer.model
    if heldout:
        reference_h.extend(json.loads((folder / "pairs" / "test_reference.json").read_text()))
    train_started = time.time()
    trainer.train()
    train_seconds = time.time() - train_started
    run_eval(trainer.model, cell.steps)
    final = evals[-1]
    name = cell.name
    samples_path = folder / "samples" / f"{name}.jsonl"
    write_jsonl(samples_path, samples)
    history = [{k: e[k] for k in ("step", "loss", "rewards/accuracies", "rewards/margins") if k in e}
               for e in trainer.state.log_history if "loss" in e]
    return {"name": name, "key": cell.key(settings), **dataclasses.asdict(cell), "loss_type": VARIANTS[cell.variant],
            "loss_beta": beta, "label_smoothing": training.label_smoothing,
            "madpo_margin_scale": madpo_scale() if cell.variant == "madpo_true" else None,
            "reward_model_eval": rm_metrics, "train_pairs": len(rows),
            "swaps": os.path.relpath(folder / "swaps" / f"eps{cell.epsilon}-seed{cell.seed}.json", REPO),
            "swapped_ids": [r["id"] for r in rows if r["swapped"]], **{k: v for k, v in final.items() if k != "step"},
            "evals": evals, "samples": os.path.relpath(samples_path, REPO),
            "train_log": history, "train_seconds": train_seconds, "seconds": time.time() - started,
            "cpu": cpu_model()}


# ----------------------------------------------------------------------------------------------------------------
# The grid, in order of importance


def main_cells(settings: Settings, lr: float, steps: int, n_pairs: int) -> list[Cell]:
    b, seeds = settings.main_beta, settings.seeds
    hi = max(settings.epsilons)
    mid = [e for e in settings.epsilons if 0 < e < hi]

    def cells(variant, beta, eps):
        return [Cell(variant, beta, eps, s, "main", lr, steps) for s in seeds]

    grid = cells("dpo", b, 0.0)  # H1
    for v in ("dpo", "cdpo", "rdpo"):  # H2
        grid += cells(v, b, hi)
    for v in ("ipo", "madpo_true"):  # H4 and IPO at eps 0
        grid += cells(v, b, 0.0)
    for beta in settings.betas:  # the DPO frontier (H4 compares at equal KL)
        if beta != b:
            grid += cells("dpo", beta, 0.0)
    epoch = math.ceil(n_pairs / settings.batch)
    for v in ("dpo", "ipo"):  # H3: over-confidence
        grid += [Cell(v, b, 0.0, s, "overconf", lr, epoch * settings.overconf_epochs,
                      tuple(epoch * (i + 1) for i in range(settings.overconf_epochs)))
                 for s in seeds[: settings.overconf_seeds]]
    grid += cells("madpo_rm", b, 0.0)
    for eps in mid:
        for v in ("dpo", "cdpo", "rdpo"):
            grid += cells(v, b, eps)
    for v in ("ipo", "madpo_true", "madpo_rm") if not settings.quick else ():  # the other variants under noise
        for eps in [*mid, hi]:
            grid += cells(v, b, eps)
    return grid


def sweep_cells(settings: Settings) -> list[Cell]:
    return [Cell("dpo", settings.main_beta, 0.0, 0, "sweep", lr, max(settings.sweep_steps), settings.sweep_steps,
                 "validation") for lr in settings.sweep_lrs]


def run_pool(cells: list[Cell], settings: Settings, folder: Path, jobs: int, threads: int, on_done) -> None:
    todo = []
    for cell in cells:
        path = folder / "cells" / f"{cell.name}.json"
        if path.is_file() and json.loads(path.read_text()).get("key") == cell.key(settings):
            continue
        todo.append(cell)
    print(f"ground truth: {len(cells) - len(todo)} of {len(cells)} cells done, {len(todo)} to run", flush=True)

    def write(name: str, result: dict) -> None:
        path = folder / "cells" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{name}: reward {result['policy_reward']:.3f}, kl {result['kl']:.2f}, {result['seconds'] / 60:.1f} min",
              flush=True)
        on_done()

    # a failed cell is printed and the others go on; a rerun retries it
    run_in_pool(run_cell, [(c.name, (c, settings, str(folder), threads)) for c in todo], jobs, write)


def choose_budget(folder: Path, settings: Settings) -> dict:
    """The (learning rate, steps) with the highest validation mean reward among the sweep's evaluations."""
    points = []
    for cell in sweep_cells(settings):
        result = json.loads((folder / "cells" / f"{cell.name}.json").read_text())
        points += [{"learning_rate": cell.learning_rate, "steps": e["step"], "validation_reward": e["policy_reward"],
                    "validation_reward_se": e["policy_reward_se"], "kl": e["kl"]} for e in result["evals"]]
    best = max(points, key=lambda p: p["validation_reward"])
    return {"points": points, "learning_rate": best["learning_rate"], "steps": best["steps"],
            "rule": "highest validation mean reward (DPO, main beta, eps 0, seed 0)"}


def run_stage(fn, *args):
    """Run `fn` in a fresh process (spawn), so the parent never loads a model and cells start clean."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def pair_stats(folder: Path, tokenizer_settings: Settings) -> None:
    """Mean completion length (tokens) of the training pairs' replies, for IPO's scale."""
    rows = read_jsonl(folder / "reference" / "train.jsonl")
    stats = {"mean_completion_tokens": sum(r["tokens"] for r in rows) / len(rows), "replies": len(rows)}
    (folder / "pairs" / "stats.json").write_text(json.dumps(stats) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a handful of prompts, steps and cells (a test)")
    parser.add_argument("--model", default=None, help="smollm2-135m-instruct (default) or tiny")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--jobs", type=int, default=2, help="cells at a time, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--stop_after", choices=["pairs", "sweep"], default=None)
    args = parser.parse_args(argv)
    settings = Settings(**QUICK) if args.quick else Settings()
    if args.model:
        settings = dataclasses.replace(settings, model=args.model)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    folder = out / "ground_truth"
    folder.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({**dataclasses.asdict(settings), "key": settings.key(),
                                                      "madpo_margin_scale": madpo_scale()}, indent=1) + "\n")
    from ground_truth_report import write_report

    def report():
        write_report(out, settings)

    # 1-2: reference samples on training and validation prompts, pairs, swaps.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(reference_samples, "train", settings.k, settings, folder, args.threads),
                   pool.submit(reference_samples, "validation", settings.val_samples, settings, folder, args.threads)]
        for f in futures:
            f.result()
    write_pairs(folder, settings)
    pair_stats(folder, settings)
    if args.stop_after == "pairs":
        return
    # 3: learning rate and steps on validation prompts.
    run_pool(sweep_cells(settings), settings, folder, args.jobs, args.threads, report)
    budget = choose_budget(folder, settings)
    (folder / "sweep.json").write_text(json.dumps(budget, indent=1) + "\n")
    print(f"ground truth: learning rate {budget['learning_rate']}, {budget['steps']} steps (validation)", flush=True)
    if args.stop_after == "sweep":
        return
    # 4: the reference on the test prompts (after the sweep: nothing chosen above saw them).
    run_stage(reference_samples, "test", settings.reference_samples, settings, folder, args.threads)
    run_stage(write_heldout_pairs, folder, settings, args.threads)
    # 5-6: the cells.
    n_pairs = len(read_jsonl(folder / "pairs" / "train.jsonl"))
    run_pool(main_cells(settings, budget["learning_rate"], budget["steps"], n_pairs), settings, folder, args.jobs,
             args.threads, report)
    report()
    print(f"ground truth: wrote {out / 'ground_truth.json'}", flush=True)


if __name__ == "__main__":
    main()

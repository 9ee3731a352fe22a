"""HH benchmark, test stage: DPO and its variants on SmolLM2-135M-Instruct and Anthropic HH harmless-base (CPU).

The protocol (hypotheses, split, selection rule, what is reported) is written in bench/README.md, before any
test-split number. In short:

    python bench/real_lr_sweep.py            # 1. learning rate and steps chosen on the validation split
    python bench/real_bench.py               # 2. each variant x seed trained with that choice, the test split once
    python bench/real_bench.py --quick --out outputs/hh-quick   # the whole path on a tiny random model (a minute)

The split is by conversation: every pair whose first human turn is the same lands in the same part (train,
validation or test), chosen by a hash of that turn (`conversation_split`). The test stage refuses to run without the
selection file of the same split, and writes each cell's test result once: a cell that already has a result is never
evaluated again (a new protocol needs a new --out). Per cell, on the test pairs: reward accuracy, the length-balanced
accuracy (the mean of the accuracies where the chosen reply is shorter and where it is not), the margin, and the KL to
the reference (k3, sampled completions). Beside them, the baseline "the shorter reply wins" on the same pairs.
Intervals come from dpo_recipes/report/statistics.py with the seed as the unit. A win-rate is given only when the
judge's own accuracy on the validation split has a 95% interval above 0.5; the judge is a reward model trained with
another seed than the one that sets MADPO's margins, so MADPO is never judged by its own reward model.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cell_pool import run_in_pool  # noqa: E402

RECIPE = REPO / "recipes" / "smollm2-135m"
RESULTS = REPO / "bench" / "results" / "hh"
VARIANTS = {  # name -> overrides of the recipe's config
    "dpo": ["--loss_type", "sigmoid"],
    "ipo": ["--loss_type", "ipo"],
    "cdpo": ["--loss_type", "cdpo", "--label_smoothing", "0.1"],
    "rdpo": ["--loss_type", "rdpo", "--label_smoothing", "0.1"],
    "madpo": ["--loss_type", "madpo"],
}
SPLIT_PERCENT = {"test": 20, "validation": 15}  # of conversations; the rest trains
MARGIN_MODEL_SEED, JUDGE_SEED = 0, 1
PARTS = ("train", "validation", "test")
LENGTH_GROUPS = ("chosen shorter", "chosen not shorter")  # by characters; the length-balanced accuracy's two groups


# ----------------------------------------------------------------------------------------------------------------
# The protocol's sizes: the full run and the quick one


def protocol(quick: bool) -> dict:
    if quick:  # a tiny random Llama and a handful of pairs: checks the path, says nothing about DPO
        return {"tiny": True, "seeds": [0, 1, 2, 3, 4], "select_seeds": [0], "lrs": [1e-3, 3e-3], "steps": [2, 3],
                "max_pairs": {"train": 24, "validation": 12, "test": 12}, "reward_steps": 2, "prompts": 2,
                "samples": 2, "max_new_tokens": 6, "batch": ["--per_device_train_batch_size", "2",
                                                             "--gradient_accumulation_steps", "1"]}
    return {"tiny": False, "seeds": [0, 1, 2, 3, 4], "select_seeds": [0, 1], "lrs": [1e-4, 3e-4, 1e-3],
            "steps": [12, 24, 48], "max_pairs": {"train": None, "validation": None, "test": None}, "reward_steps": 24,
            "prompts": 16, "samples": 2, "max_new_tokens": 32, "batch": []}


def recipe_args(plan: dict, *extra: str) -> list[str]:
    args = ["--config", str(RECIPE / "config.yaml"), "--report_to", "none", "--eval_strategy", "no",
            "--eval_report", "false", "--dataset_num_proc", "1", *plan["batch"]]
    if plan["tiny"]:
        from dpo_recipes.models.pretrained import CACHE_DIR
        from dpo_recipes.models.tiny import build_tiny

        args += ["--model_name_or_path", str(build_tiny("llama", CACHE_DIR / "tiny-llama"))]
    return [*args, *extra]


def data_args(folder: Path, held_out: str) -> list[str]:
    return ["--dataset_name", str(folder), "--dataset_train_split", "train", "--dataset_test_split", held_out]


# ----------------------------------------------------------------------------------------------------------------
# The split by conversation


def first_human_turn(prompt) -> str:
    """The conversation's first user message: the key that keeps a conversation's pairs in one part."""
    if isinstance(prompt, list):
        return next((m["content"] for m in prompt if m["role"] == "user"), "")
    text = prompt.split("Human:", 1)[-1]
    return text.split("Assistant:", 1)[0].strip()


def conversation_part(prompt) -> str:
    bucket = int(hashlib.sha256(first_human_turn(prompt).encode()).hexdigest(), 16) % 100
    if bucket < SPLIT_PERCENT["test"]:
        return "test"
    return "validation" if bucket < SPLIT_PERCENT["test"] + SPLIT_PERCENT["validation"] else "train"


def conversation_split(rows: list[dict]) -> dict[str, list[dict]]:
    parts = {p: [] for p in PARTS}
    for row in rows:
        parts[conversation_part(row["prompt"])].append(row)
    return parts


def write_split(work: Path, plan: dict) -> Path:
    """The recipe's data audit (its tokenizer and max_length) once, then the clean pairs split by conversation into
    train / validation / test files (capped at plan["max_pairs"], first rows of each part)."""
    from dpo_recipes.train.config import parse_config
    from dpo_recipes.data.preparation import load_preference_data
    from dpo_recipes.models.loading import load_tokenizer, resolve_model_path

    folder = work / "data"
    if (work / "split.json").is_file():
        return folder
    script, training, model_args = parse_config(recipe_args(plan, "--output_dir", str(work / "audit")))
    tokenizer = load_tokenizer(resolve_model_path(model_args, None), model_args, False, None)
    data = load_preference_data(script, seed=training.seed, tokenizer=tokenizer, max_length=training.max_length,
                                truncation_mode=training.truncation_mode)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for ds in (data.train, data.eval) for r in ds]
    parts = conversation_split(rows)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        cap = plan["max_pairs"][name]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part[:cap]))
    digest = hashlib.sha256(b"".join((folder / f"{p}.jsonl").read_bytes() for p in PARTS)).hexdigest()[:16]
    counts = {p: sum(1 for _ in open(folder / f"{p}.jsonl")) for p in PARTS}
    # beside the data folder, not in it (every file in it is read as data)
    (work / "split.json").write_text(json.dumps({"digest": digest, "pairs": counts, "percent": SPLIT_PERCENT}) + "\n")
    return folder


def split_info(folder: Path) -> dict:
    return json.loads((folder.parent / "split.json").read_text())


# ----------------------------------------------------------------------------------------------------------------
# The length baseline and the length groups


def reply_text(reply) -> str:
    return " ".join(m["content"] for m in reply) if isinstance(reply, list) else reply


def length_baseline(rows) -> tuple[list[float], list[str]]:
    """Per pair: 1 if the chosen reply is the shorter (in characters), 0 if longer, 0.5 if equal; and its group,
    'chosen shorter' or 'chosen not shorter', for the length-balanced accuracy."""
    wins, groups = [], []
    for row in rows:
        c, r = len(reply_text(row["chosen"])), len(reply_text(row["rejected"]))
        wins.append(1.0 if c < r else 0.0 if c > r else 0.5)
        groups.append(LENGTH_GROUPS[0] if c < r else LENGTH_GROUPS[1])
    return wins, groups


def balanced_accuracy_of(correct: list[float], groups: list[str]) -> float:
    from dpo_recipes.report.statistics import balanced_mean

    return balanced_mean(correct, groups)


# ----------------------------------------------------------------------------------------------------------------
# Models: reward models (MADPO's margins, the judge), one policy cell


def train_reward_model(work: Path, plan: dict, data: Path, seed: int) -> tuple[Path, list[int]]:
    """A reward model (the recipe's model, LoRA and a score head) on the training split; its accuracy on the
    validation split is returned as per-pair outcomes (1 correct, 0 not)."""
    import torch
    from datasets import load_dataset

    from dpo_recipes.train.margins import load_reward_model, score_pairs
    from dpo_recipes.commands.reward_model import main as reward_main

    out = work / f"reward-model-seed{seed}"
    if not (out / "model.safetensors").is_file():
        reward_main(recipe_args(plan, *data_args(data, "validation"), "--output_dir", str(out), "--seed", str(seed),
                                "--max_steps", str(plan["reward_steps"]), "--learning_rate", "1e-3",
                                "--warmup_steps", "5",  # as when the committed cells ran (the recipe's, then)
                                "--save_strategy", "no", "--logging_steps", "1"))
    model, tokenizer = load_reward_model(str(out), device=torch.device("cpu"))
    validation = load_dataset("json", data_files=str(data / "validation.jsonl"), split="train")
    return out, [int(m > 0) for m in score_pairs(model, tokenizer, validation, batch_size=4)]


def write_madpo_margins(data: Path, reward_model: Path) -> Path:
    """MADPO step two: the reward model's margins on the training pairs as the `reward_margin` column."""
    import torch
    from datasets import load_dataset

    from dpo_recipes.train.margins import load_reward_model, score_pairs

    folder = data.parent / f"data-margins-{reward_model.name}"
    if (folder / "train.jsonl").is_file():
        return folder
    model, tokenizer = load_reward_model(str(reward_model), device=torch.device("cpu"))
    folder.mkdir(exist_ok=True)
    for part in PARTS:
        ds = load_dataset("json", data_files=str(data / f"{part}.jsonl"), split="train")
        margins = score_pairs(model, tokenizer, ds, batch_size=4) if part == "train" else [0.0] * len(ds)
        (folder / f"{part}.jsonl").write_text("".join(
            json.dumps({**{k: row[k] for k in ("prompt", "chosen", "rejected")}, "reward_margin": m}) + "\n"
            for row, m in zip(ds, margins)))
    return folder


def train_and_evaluate(plan: dict, variant: str, seed: int, lr: float, steps: int, data: Path, held_out: str,
                       out: Path, judge: Path | None = None) -> dict:
    """Train one policy (the recipe, `variant`'s loss, `steps` steps at peak `lr`), then score `held_out`: per-pair
    margins and correctness, the KL to the reference, and with `judge` the judge's scores of policy and reference."""
    import torch
    from datasets import load_dataset

    from dpo_recipes.train.config import parse_config
    from dpo_recipes.data.preparation import load_preference_splits
    from dpo_recipes.report.evaluation import ReportSettings, pair_logps, unique_prompts
    from dpo_recipes.report.generation import completion_token_logps, generate, kl_estimates
    from dpo_recipes.train.margins import add_reward_margins
    from dpo_recipes.models.loading import load_model, load_tokenizer, resolve_model_path
    from dpo_recipes.data.tokenization import generation_prompt_ids, tokenize_pair
    from dpo_recipes.train.trainer import PreferenceTrainer

    started = time.time()
    script, training, model_args = parse_config(recipe_args(
        plan, *VARIANTS[variant], *data_args(data, held_out), "--output_dir", str(out), "--overwrite_output_dir",
        "true", "--seed", str(seed), "--max_steps", str(steps), "--learning_rate", str(lr), "--warmup_steps", "0",
        "--save_strategy", "no", "--logging_steps", "1",
        # The reference's log-probs of the training pairs are the same in every cell: one pass, cached on disk.
        "--precompute_ref_log_probs", "true", "--ref_logps_cache_dir", str(data.parent / "ref_logps")))
    path = resolve_model_path(model_args, None)
    tokenizer = load_tokenizer(path, model_args, False, None)
    train, _ = load_preference_splits(script, seed=training.seed)
    if variant == "madpo":
        train, _ = add_reward_margins(script, training, train, None)
    model, peft_config = load_model(path, model_args, False)
    trainer = PreferenceTrainer(model=model, args=training, train_dataset=train, processing_class=tokenizer,
                                peft_config=peft_config)
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model).eval()
    rows = load_dataset("json", data_files=str(data / f"{held_out}.jsonl"), split="train")
    settings = ReportSettings(pairs=None, beta=training.beta, max_length=training.max_length,
                              truncation_mode=training.truncation_mode, batch_size=8,
                              padding_free=training.padding_free, prefix_sharing=training.prefix_sharing)
    tokenized = [tokenize_pair(tokenizer, r) for r in rows]
    chosen, rejected = pair_logps(policy, tokenized, settings, torch.device("cpu"))
    ref_chosen, ref_rejected = reference_pair_logps(policy, tokenized, settings, path, data.parent / "reference")
    margins = (training.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).tolist()
    prompts = unique_prompts(rows, plan["prompts"])
    ids = [generation_prompt_ids(tokenizer, row) for row in prompts]
    samples = generate(policy, tokenizer, ids, plan["max_new_tokens"], sample=True, n=plan["samples"], seed=1000 * seed)
    pol = completion_token_logps(policy, ids, samples, tokenizer.pad_token_id)
    greedy = [c[0] for c in generate(policy, tokenizer, ids, plan["max_new_tokens"], sample=False)]
    with policy.disable_adapter():
        ref = completion_token_logps(policy, ids, samples, tokenizer.pad_token_id)
        greedy_ref = [c[0] for c in generate(policy, tokenizer, ids, plan["max_new_tokens"], sample=False)]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    cell = {"variant": variant, "seed": seed, "learning_rate": lr, "steps": steps, "held_out": held_out,
            "margins": margins, "correct": [float(m > 0) for m in margins],
            "chosen_logp_change": (chosen - ref_chosen).mean().item(),
            "kl_k3_per_completion": kl_estimates(pol, ref)["k3"]["per_completion"]["mean"],
            "prompts": [r["prompt"] for r in prompts], "replies": [decode(g) for g in greedy],
            "reference_replies": [decode(g) for g in greedy_ref]}
    if judge is not None:
        from dpo_recipes.report.judge import judge_scores, load_judge

        model_j, tok_j = load_judge(str(judge), torch.device("cpu"))
        cell["judge_scores"] = {"policy": judge_scores(model_j, tok_j, cell["prompts"], cell["replies"]),
                                "reference": judge_scores(model_j, tok_j, cell["prompts"], cell["reference_replies"])}
    cell["seconds"] = time.time() - started
    return cell


def cell_in_process(threads: int, *args) -> dict:
    """train_and_evaluate(*args) in a pool's process, with `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return train_and_evaluate(*args)


def run_cells(tasks: list[tuple[str, tuple]], jobs: int, threads: int, on_done) -> list[str]:
    """train_and_evaluate(*args) for every (name, args) in `tasks`, `jobs` processes at a time with `threads` torch
    threads each; on_done(name, cell) runs here as each finishes, so only this process writes results. The first
    task runs alone (with every thread): it fills the reference caches that the others read. Returns the names that
    failed (the rest went on; a rerun retries them)."""
    def done(name: str, cell: dict) -> None:
        on_done(name, cell)
        print(f"{name}: accuracy {sum(cell['correct']) / len(cell['correct']):.3f}, {cell['seconds'] / 60:.1f} min",
              flush=True)

    failed = []
    for batch, width in ((tasks[:1], 1), (tasks[1:], jobs)):
        failed += run_in_pool(cell_in_process, [(name, (threads * jobs // width, *args)) for name, args in batch],
                              width, done)
    return failed


def reference_pair_logps(policy, tokenized: list[dict], settings, model_path: str, folder: Path):
    """The reference's (the policy with its adapter off) summed log-probs of the held-out pairs: the same in every
    cell of a split, so computed once and read back, keyed on the model, the tokenized pairs and the scoring
    settings."""
    import torch

    from dpo_recipes.report.evaluation import pair_logps
    from dpo_recipes.train import reference_cache

    key = hashlib.sha256(json.dumps([str(model_path), str(next(policy.parameters()).dtype), tokenized,
                                     dataclasses.asdict(settings)], default=str).encode()).hexdigest()[:16]
    cached = reference_cache.load(folder, key)
    if cached is not None:
        return tuple(torch.tensor(values) for values in cached)
    with policy.disable_adapter():
        chosen, rejected = pair_logps(policy, tokenized, settings, torch.device("cpu"))
    reference_cache.save(folder, key, chosen.tolist(), rejected.tolist())
    return chosen, rejected


# ----------------------------------------------------------------------------------------------------------------
# Summary: seeds as units (dpo_recipes/report/statistics.py)


def summarise(cells: list[dict], baseline: list[float], groups: list[str], judge_ok: bool) -> dict:
    """Per variant over its seeds: accuracy, length-balanced accuracy, accuracy minus the length baseline (t over
    seeds, and a hierarchical bootstrap over seeds and pairs), margin, KL, chosen log-prob change; against DPO the
    per-seed differences (paired t); the win-rate over the reference clustered by prompt, only if judge_ok."""
    from dpo_recipes.report.statistics import (balanced_mean, clustered_win_rate, group_means, hierarchical_bootstrap,
                                               paired_t_interval, t_interval)

    by_variant: dict[str, list[dict]] = {}
    for cell in sorted(cells, key=lambda c: c["seed"]):
        by_variant.setdefault(cell["variant"], []).append(cell)
    names = sorted(set(groups))
    summary = {"length_baseline": {"accuracy": sum(baseline) / len(baseline),
                                   "balanced_accuracy": balanced_mean(baseline, groups), "pairs": len(baseline),
                                   "pairs_by_length": {g: groups.count(g) for g in names}}}

    per_seed = {}
    for variant, group in by_variant.items():
        per_seed[variant] = {
            "seeds": [c["seed"] for c in group],
            "accuracy": [sum(c["correct"]) / len(c["correct"]) for c in group],
            "balanced_accuracy": [balanced_mean(c["correct"], groups) for c in group],
        }
        entry = {
            "seeds": per_seed[variant]["seeds"],
            "accuracy": t_interval(per_seed[variant]["accuracy"]),
            "balanced_accuracy": t_interval(per_seed[variant]["balanced_accuracy"]),
            "accuracy_minus_length_baseline": t_interval(
                [a - summary["length_baseline"]["accuracy"] for a in per_seed[variant]["accuracy"]]),
            "accuracy_minus_length_baseline_pairs": hierarchical_bootstrap(
                [[x - b for x, b in zip(c["correct"], baseline)] for c in group]),
            "margin": t_interval([sum(c["margins"]) / len(c["margins"]) for c in group]),
            "kl_k3": t_interval([c["kl_k3_per_completion"] for c in group]),
            "chosen_logp_change": t_interval([c["chosen_logp_change"] for c in group]),
            "accuracy_by_length": {g: t_interval([group_means(c["correct"], groups)[g] for c in group]) for g in names},
        }
        if judge_ok and all("judge_scores" in c for c in group):
            outcomes, prompt_ids = [], []
            for c in group:
                for i, (p, r) in enumerate(zip(c["judge_scores"]["policy"], c["judge_scores"]["reference"])):
                    outcomes.append(1.0 if p > r else 0.5 if p == r else 0.0)
                    prompt_ids.append(i)
            entry["win_rate"] = clustered_win_rate(outcomes, prompt_ids)
        summary[variant] = entry
    dpo = per_seed.get("dpo")
    compared = [v for v, seeds in per_seed.items() if v != "dpo" and dpo and dpo["seeds"] == seeds["seeds"]]
    level = 1 - 0.05 / max(1, len(compared))  # H3: Bonferroni over the variants compared with DPO
    for variant in compared:
        summary[variant]["vs_dpo"] = {"level": level, **{k: paired_t_interval(per_seed[variant][k], dpo[k], level)
                                                         for k in ("accuracy", "balanced_accuracy")}}
    return summary


def verdicts(summary: dict) -> dict[str, str]:
    """The protocol's hypotheses (bench/README.md) read off the summary's intervals: H1 and H2 for DPO, H3 for each
    variant compared with DPO. Each verdict names the interval it was read from."""
    out = {}
    dpo = summary.get("dpo")
    if dpo:
        gap, bal = dpo["accuracy_minus_length_baseline"], dpo["balanced_accuracy"]
        out["H1"] = (f"{'supported' if gap['low'] > 0 else 'not supported'}: DPO minus the length baseline "
                     f"{_ci(gap)}")
        out["H2"] = (f"{'supported' if bal['low'] > 0.5 else 'not supported'}: DPO's length-balanced accuracy "
                     f"{_ci(bal)}")
    for variant, s in summary.items():
        vs = s.get("vs_dpo", {}).get("accuracy") if isinstance(s, dict) else None
        if vs:
            side = "higher" if vs["low"] > 0 else "lower" if vs["high"] < 0 else None
            out[f"H3 {variant}"] = (f"{variant} {side} than DPO" if side else "no difference from DPO shown") + (
                f": {variant} - DPO {_ci(vs)} at level {s['vs_dpo']['level']:.4g}")
    return out


def _ci(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def markdown(result: dict) -> str:
    meta, summary = result["meta"], result["summary"]
    base = summary["length_baseline"]
    by_length = base["pairs_by_length"]
    groups = [g for g in LENGTH_GROUPS if g in by_length]
    lines = [f"Test split ({base['pairs']} pairs, by conversation), seeds {meta['seeds']}, learning rate "
             f"{meta['selection']['learning_rate']:g} and {meta['selection']['steps']} steps chosen on validation "
             f"(bench/README.md). Length baseline (shorter reply wins): accuracy {base['accuracy']:.3f}, "
             f"length-balanced {base['balanced_accuracy']:.3f}. Judge accuracy on validation: "
             f"{meta['judge']['accuracy']:.3f} [{meta['judge']['low']:.3f}, {meta['judge']['high']:.3f}]"
             f"{'' if meta['judge']['usable'] else ': the interval includes 0.5, so no win-rate is given'}.",
             "", "Means over seeds with 95% t intervals (seeds as units); \"vs DPO\": paired over seeds, at the "
             "Bonferroni level over the variants compared.", "",
             "| variant | accuracy | length-balanced | minus length baseline | vs DPO (accuracy) | KL k3 | win-rate |",
             "|---|---|---|---|---|---|---|"]
    for variant, s in summary.items():
        if variant == "length_baseline":
            continue
        vs = s.get("vs_dpo", {}).get("accuracy")
        w = s.get("win_rate")
        win = f"{w['win_rate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]" if w else "-"
        lines.append(f"| {variant} | {_ci(s['accuracy'])} | {_ci(s['balanced_accuracy'])} | "
                     f"{_ci(s['accuracy_minus_length_baseline'])} | {_ci(vs) if vs else ''} | {_ci(s['kl_k3'])} | "
                     f"{win} |")
    lines += ["", "Description, not tests: margin (policy's implicit reward, chosen minus rejected), the chosen "
              "reply's log-prob change from the reference (nats per reply), and accuracy minus the length baseline "
              "as a hierarchical bootstrap (seeds, then pairs within seeds).", "",
              "| variant | margin | chosen log-prob change | minus length baseline (bootstrap) | "
              + " | ".join(f"accuracy, {g} ({by_length[g]} pairs)" for g in groups) + " |",
              "|---|---|---|---|" + "---|" * len(groups)]
    for variant, s in summary.items():
        if variant != "length_baseline":
            lines.append(f"| {variant} | {_ci(s['margin'])} | {_ci(s['chosen_logp_change'], 2)} | "
                         f"{_ci(s['accuracy_minus_length_baseline_pairs'])} | "
                         + " | ".join(_ci(s["accuracy_by_length"][g]) for g in groups) + " |")
    lines += ["", "Hypotheses (bench/README.md):", ""]
    lines += [f"- **{name}** {text}" for name, text in verdicts(summary).items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------


def judge_summary(outcomes: list[int]) -> dict:
    from dpo_recipes.report.statistics import wilson_interval

    low, high = wilson_interval(sum(outcomes), len(outcomes))
    return {"pairs": len(outcomes), "accuracy": sum(outcomes) / len(outcomes), "low": low, "high": high,
            "usable": low > 0.5}


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """--work, --jobs and --threads, shared by both stages; sets the environment the pool's processes start with."""
    parser.add_argument("--work", default=None, help="work files (default: bench/tmp/<name of --out>)")
    parser.add_argument("--jobs", type=int, default=2, help="cells at a time, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a tiny random model and a few pairs: the path only")
    parser.add_argument("--out", default=str(RESULTS), help="results; the selection file is read from here too")
    add_parallel_arguments(parser)
    args = parser.parse_args(argv)
    plan = protocol(args.quick)
    out = Path(args.out)
    work = Path(args.work) if args.work else REPO / "bench" / "tmp" / out.name
    selection_file = out / "selection.json"
    if not selection_file.is_file():
        raise SystemExit(f"{selection_file}: no selection yet; run bench/real_lr_sweep.py with the same --out first")
    selection = json.loads(selection_file.read_text())
    data = write_split(work, plan)
    if selection["split"] != split_info(data)["digest"]:
        raise SystemExit(f"{selection_file}: chosen on another split ({selection['split']}, now "
                         f"{split_info(data)['digest']})")
    margin_model, _ = train_reward_model(work, plan, data, MARGIN_MODEL_SEED)
    judge, judge_outcomes = train_reward_model(work, plan, data, JUDGE_SEED)
    judge_meta = judge_summary(judge_outcomes)
    madpo_data = write_madpo_margins(data, margin_model) if "madpo" in args.variants else data
    cells_dir = out / "test"
    cells_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{variant}-seed{seed}" for seed in plan["seeds"] for variant in args.variants]
    # the test split is evaluated once per cell: an existing result is final
    tasks = [(f"{variant}-seed{seed}",
              (plan, variant, seed, selection["learning_rate"], selection["steps"],
               madpo_data if variant == "madpo" else data, "test", work / "runs" / f"{variant}-seed{seed}",
               judge if judge_meta["usable"] else None))
             for seed in plan["seeds"] for variant in args.variants
             if not (cells_dir / f"{variant}-seed{seed}.json").is_file()]
    failed = run_cells(tasks, args.jobs, args.threads,
                       lambda name, cell: (cells_dir / f"{name}.json").write_text(json.dumps(cell, indent=1) + "\n"))
    if failed:
        raise SystemExit(f"{len(failed)} cell(s) failed: {', '.join(failed)}; rerun to retry them")
    cells = [json.loads((cells_dir / f"{name}.json").read_text()) for name in names]
    from datasets import load_dataset

    test_rows = load_dataset("json", data_files=str(data / "test.jsonl"), split="train")
    baseline, groups = length_baseline(test_rows)
    result = {"meta": {"seeds": plan["seeds"], "variants": args.variants, "quick": args.quick, "selection": selection,
                       "judge": judge_meta, "split": split_info(data)},
              "summary": summarise(cells, baseline, groups, judge_meta["usable"])}
    (out / "real.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "real.md").write_text(markdown(result))
    print(f"wrote {out / 'real.json'} and real.md", flush=True)
    return result


if __name__ == "__main__":
    main()

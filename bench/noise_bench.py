"""Label-noise robustness: DPO against cDPO, rDPO, IPO and MADPO on preference data with flipped labels.

    python bench/noise_bench.py            # full run, two runs at a time (--jobs): bench/results/noise.*
    python bench/noise_bench.py --quick    # a few seconds per run, for the tests (results to --out)

For each flip rate eps, a fixed fraction of the training pairs has chosen and rejected swapped (which pairs: by
seed); the held-out split stays clean. Every variant trains the same tiny model with the same budget. cDPO and rDPO
get their eps set to the true flip rate, and also mis-set to a fixed 0.1. MADPO uses the paper's two-step method: a
reward model trained on the same noisy pairs scores the margins. On the clean held-out pairs we report reward
accuracy, the mean implicit reward margin, and the calibration of the implicit preference probability
p = sigmoid(beta * h) against the clean labels (Brier score and expected calibration error, 10 bins).
A second experiment trains each variant longer on noise-free data and records the reward margin against steps.
Runs that are the same training (cDPO and rDPO with eps 0 are DPO; the mis-set eps equals the true one at 0.1) are
trained once and reported under each name.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = REPO / "bench" / "tmp" / "noise"

FLIP_RATES = (0.0, 0.1, 0.2, 0.3, 0.4)
SEEDS = (0, 1, 2)
MIS_SET_EPS = 0.1
VARIANTS = ("dpo", "ipo", "cdpo@true", "cdpo@0.1", "rdpo@true", "rdpo@0.1", "madpo")


def variant_args(variant: str, rate: float) -> list[str]:
    """Config overrides of a variant at true flip rate `rate`."""
    name, _, eps = variant.partition("@")
    loss = {"dpo": "sigmoid"}.get(name, name)
    args = ["--loss_type", loss]
    if eps:
        args += ["--label_smoothing", str(rate if eps == "true" else float(eps))]
    return args


def training_key(variant: str, rate: float, seed: int, steps: int) -> tuple:
    """Equal keys are the same training, run once: cDPO and rDPO with eps 0 are DPO (tests/test_losses.py)."""
    args = variant_args(variant, rate)
    if args[1] in ("cdpo", "rdpo") and float(args[3]) == 0.0:
        args = variant_args("dpo", rate)
    return (*args, rate, seed, steps)


def write_noisy_split(rate: float, seed: int, n_train: int) -> Path:
    """data/demo's first n_train training pairs with round(rate * n_train) of them flipped; clean held-out split."""
    folder = WORK / f"data-eps{rate}-seed{seed}-n{n_train}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (REPO / "data/demo/train.jsonl").read_text().splitlines()[:n_train]]
    flipped = set(random.Random(seed).sample(range(n_train), round(rate * n_train)))
    with open(folder / "train.jsonl", "w") as f:
        for i, row in enumerate(rows):
            if i in flipped:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            f.write(json.dumps(row) + "\n")
    (folder / "test.jsonl").write_text((REPO / "data/demo/test.jsonl").read_text())
    return folder


def config_args(data_dir: Path, out: Path, steps: int, seed: int, extra: list[str]) -> list[str]:
    return ["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--dataset_name", str(data_dir),
            "--output_dir", str(out), "--overwrite_output_dir", "true", "--max_steps", str(steps),
            "--warmup_steps", "0", "--lr_scheduler_type", "constant", "--seed", str(seed),
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "5",
            "--dataset_num_proc", "1", "--eval_report", "false", *extra]


def train_reward_model(data_dir: Path, seed: int, steps: int) -> Path:
    """MADPO step one: a reward model on the same noisy pairs (RewardTrainer through dpo_recipes.reward_model)."""
    from dpo_recipes.config import parse_config
    from dpo_recipes.reward_model import reward_config, train_reward_model as train

    out = WORK / f"reward-model-{data_dir.name}"  # beside the data folder: a dataset folder must hold only data
    if (out / "model.safetensors").is_file():
        return out
    script, training, model = parse_config(config_args(data_dir, out, steps, seed, ["--learning_rate", "1e-3"]))
    train(script, reward_config(training, {"max_steps", "learning_rate", "seed", "per_device_train_batch_size",
                                           "max_length", "report_to", "logging_steps", "bf16", "use_cpu",
                                           "save_strategy"}, str(out)), model)
    return out


def held_out_margins(trainer) -> list[float]:
    """h = chosen log-ratio - rejected log-ratio for every held-out pair, in order."""
    import torch

    from dpo_recipes.packing import MODEL_INPUTS

    margins = []
    trainer.model.eval()
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            batch = trainer._prepare_inputs(batch)
            (chosen, rejected), _, _ = trainer.pair_logps(trainer.model, batch)
            ref_chosen, ref_rejected = trainer.compute_ref_log_probs(
                trainer.model, {k: v for k, v in batch.items() if k in MODEL_INPUTS})
            margins += ((chosen - ref_chosen) - (rejected - ref_rejected)).tolist()
    return margins


def calibration(margins: list[float], beta: float) -> dict:
    """Accuracy, Brier score and ECE of p = sigmoid(beta * h) as the probability that the (clean) chosen wins."""
    p = [1 / (1 + math.exp(-beta * h)) for h in margins]
    correct = [pi > 0.5 for pi in p]
    confidence = [max(pi, 1 - pi) for pi in p]
    ece = 0.0
    for b in range(10):
        lo, hi = 0.5 + b * 0.05, 0.5 + (b + 1) * 0.05
        members = [i for i, c in enumerate(confidence) if lo <= c < hi or (b == 9 and c == 1.0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            ece += len(members) / len(p) * abs(acc - conf)
    return {
        "accuracy": sum(correct) / len(p),
        "mean_margin": statistics.fmean(beta * h for h in margins),  # the implicit reward margin, as TRL logs it
        "brier": statistics.fmean((1 - pi) ** 2 for pi in p),
        "ece": ece,
        "mean_p_chosen": statistics.fmean(p),
    }


def train_variant(data_dir: Path, variant: str, rate: float, seed: int, steps: int, reward_model: Path | None):
    from dpo_recipes.config import parse_config
    from dpo_recipes.data import load_preference_splits
    from dpo_recipes.margins import add_reward_margins
    from dpo_recipes.modeling import load_model, load_tokenizer, resolve_model_path
    from dpo_recipes.trainer import PreferenceTrainer

    extra = variant_args(variant, rate)
    if variant == "madpo":
        extra += ["--reward_model_name_or_path", str(reward_model)]
    out = WORK / "runs" / f"{variant}-eps{rate}-seed{seed}-steps{steps}"
    script, training, model_args = parse_config(config_args(data_dir, out, steps, seed, extra))
    path = resolve_model_path(model_args, script.tiny_model)
    tokenizer = load_tokenizer(path, model_args, False, None)
    train, held_out = load_preference_splits(script, seed=training.seed)
    if variant == "madpo":
        train, held_out = add_reward_margins(script, training, train, held_out)
    model, peft_config = load_model(path, model_args, False)
    trainer = PreferenceTrainer(model=model, args=training, train_dataset=train, eval_dataset=held_out,
                                processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    history = [(e["step"], e["rewards/margins"]) for e in trainer.state.log_history if "rewards/margins" in e]
    return {**calibration(held_out_margins(trainer), training.beta), "train_margins": history}


def summarise(runs: list[dict]) -> dict:
    table = {}
    for run in runs:
        table.setdefault(run["variant"], {}).setdefault(str(run["rate"]), []).append(run)
    summary = {}
    for variant, by_rate in table.items():
        summary[variant] = {}
        for rate, rs in by_rate.items():
            summary[variant][rate] = {
                key: {"mean": statistics.fmean(r[key] for r in rs),
                      "std": statistics.stdev(r[key] for r in rs) if len(rs) > 1 else 0.0}
                for key in ("accuracy", "mean_margin", "brier", "ece", "mean_p_chosen")
            }
            summary[variant][rate]["seeds"] = len(rs)
    return summary


def markdown(summary: dict, rates, meta: dict) -> str:
    lines = [f"Clean held-out results after {meta['steps']} steps on {meta['n_train']} training pairs, mean ± std "
             f"over {meta['seeds']} seeds (`{meta['command']}`, {meta['machine']}, {meta['minutes']:.1f} min).", ""]
    for key, title in (("accuracy", "Reward accuracy"), ("mean_margin", "Mean reward margin"),
                       ("brier", "Brier score (lower is better)"), ("ece", "Calibration error, ECE")):
        lines += [f"**{title}**", "", "| variant | " + " | ".join(f"eps={r}" for r in rates) + " |",
                  "|---|" + "---|" * len(rates)]
        for variant in summary:
            cells = [f"{summary[variant][str(r)][key]['mean']:.3f} ± {summary[variant][str(r)][key]['std']:.3f}"
                     for r in rates]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, rates, overconfidence: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for variant in summary:
        for ax, key in zip(axes[:2], ("accuracy", "brier")):
            mean = [summary[variant][str(r)][key]["mean"] for r in rates]
            std = [summary[variant][str(r)][key]["std"] for r in rates]
            ax.errorbar(rates, mean, yerr=std, marker="o", capsize=3, label=variant)
    axes[0].set(title="Clean held-out reward accuracy", xlabel="flip rate eps")
    axes[1].set(title="Brier score of sigmoid(beta h) (lower is better)", xlabel="flip rate eps")
    for variant, history in overconfidence.items():
        axes[2].plot(*zip(*history), label=variant)
    axes[2].set(title="Noise-free data: train reward margin", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = out / "noise.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def machine() -> str:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core CPU, {memory_gb:.0f} GB, no GPU"


def run_all(calls: list[tuple], jobs: int) -> list:
    """Each (function, *args) of `calls`, `jobs` at a time in fresh processes (the cores split among them); results
    in order."""
    if jobs == 1:
        return [fn(*args) for fn, *args in calls]
    from dpo_recipes.threads import set_child_threads  # torch: only where workers start

    set_child_threads(jobs)  # the workers split the cores (or take OMP_NUM_THREADS)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        return [future.result() for future in futures]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two flip rates, three variants, one seed, few steps")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs trained at a time")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per run; --jobs runs share the cores
    started = time.time()
    if a.quick:
        rates, seeds, variants, steps, long_steps, n_train, rm_steps = (0.0, 0.4), (0,), ("dpo", "cdpo@true", "madpo"), 2, 4, 64, 2
    else:
        rates, seeds, variants, steps, long_steps, n_train, rm_steps = FLIP_RATES, SEEDS, VARIANTS, 64, 300, 512, 64

    # MADPO's reward models first (one per noisy split), then every distinct training run; the long runs go first so
    # that they do not finish last on their own.
    splits = {(rate, seed): write_noisy_split(rate, seed, n_train) for rate in rates for seed in seeds}
    reward_models = dict(zip(splits, run_all([(train_reward_model, d, seed, rm_steps) for (_, seed), d in splits.items()],
                                             a.jobs))) if "madpo" in variants else {}
    wanted = [(variant, 0.0, 0, long_steps) for variant in variants]  # overconfidence, on the clean split
    wanted += [(variant, rate, seed, steps) for rate in rates for seed in seeds for variant in variants]

    distinct = {}  # the same training under two names is run once
    for variant, rate, seed, n_steps in wanted:
        distinct.setdefault(training_key(variant, rate, seed, n_steps), (
            train_variant, splits[(rate, seed)], variant, rate, seed, n_steps, reward_models.get((rate, seed))))
    results = dict(zip(distinct, run_all(list(distinct.values()), a.jobs)))

    runs = []
    for variant, rate, seed, n_steps in wanted[len(variants):]:
        result = results[training_key(variant, rate, seed, n_steps)]
        runs.append({"variant": variant, "rate": rate, "seed": seed, **result})
        print(f"eps={rate} seed={seed} {variant}: accuracy {result['accuracy']:.3f} "
              f"margin {result['mean_margin']:.3f} brier {result['brier']:.3f}", flush=True)
    overconfidence = {v: results[training_key(v, rate, seed, n)]["train_margins"] for v, rate, seed, n in wanted[:len(variants)]}
    summary = summarise(runs)
    meta = {"steps": steps, "long_steps": long_steps, "n_train": n_train, "seeds": len(seeds),
            "rates": list(rates), "variants": list(variants), "mis_set_eps": MIS_SET_EPS,
            "command": "make noise-bench" + (" (quick)" if a.quick else ""), "jobs": a.jobs,
            "distinct_runs": len(distinct), "machine": machine(),
            "minutes": (time.time() - started) / 60}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "summary": summary, "runs": runs, "overconfidence": overconfidence}
    (out / "noise.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "noise.md").write_text(markdown(summary, rates, meta) + "\n")
    plot(summary, rates, overconfidence, out)
    print(f"wrote {out / 'noise.json'}, noise.md, noise.png in {meta['minutes']:.1f} min")
    return result


if __name__ == "__main__":
    main()

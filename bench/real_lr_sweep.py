"""Learning-rate check for recipes/smollm2-135m: a few steps at each learning rate, then held-out margins.

    python bench/real_lr_sweep.py [--lrs 1e-4 3e-4 1e-3] [--steps 6] [--eval_pairs 32]   # bench/results/real_lr.json

Each learning rate trains a fresh LoRA adapter from the same start on the same training pairs in the same order
(the recipe's config: batch, schedule, LoRA placement, padding-free), then scores the first `--eval_pairs` held-out
pairs of the split bench/real_bench.py writes. The reference's log-probs are computed once. Reported per learning rate:
held-out reward accuracy and margin (mean and standard error over pairs), and how far the policy's log-probs of the
held-out chosen replies moved (a learning rate that is too high shows here first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from real_bench import WORK, data_args, recipe_args, write_split  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval_pairs", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "real_lr.json"))
    parser.add_argument("extra", nargs="*", help="config overrides, after --")
    args = parser.parse_args(argv)

    import torch
    from datasets import load_dataset

    from dpo_recipes.config import parse_config
    from dpo_recipes.data import load_preference_splits
    from dpo_recipes.evaluation import ReportSettings, pair_logps
    from dpo_recipes.stats import mean_se
    from dpo_recipes.tokenization import tokenize_pair
    from dpo_recipes.modeling import load_model, load_tokenizer, resolve_model_path
    from dpo_recipes.trainer import PreferenceTrainer

    data = write_split(WORK)
    held_out = load_dataset("json", data_files=str(data / "test.jsonl"), split="train").select(range(args.eval_pairs))
    results = {"meta": {"command": "python bench/real_lr_sweep.py " + " ".join(argv or sys.argv[1:]),
                        "steps": args.steps, "eval_pairs": args.eval_pairs}, "runs": []}
    reference = None
    for lr in args.lrs:
        started = time.time()
        script, training, model_args = parse_config(recipe_args(
            *data_args(data), "--output_dir", str(WORK / f"lr-{lr:g}"), "--overwrite_output_dir", "true",
            "--max_steps", str(args.steps), "--learning_rate", str(lr), "--save_strategy", "no",
            "--logging_steps", "1", *args.extra))
        path = resolve_model_path(model_args, None)
        tokenizer = load_tokenizer(path, model_args, False, None)
        train, _ = load_preference_splits(script, seed=training.seed)
        settings = ReportSettings(beta=training.beta, max_length=training.max_length,
                                  truncation_mode=training.truncation_mode, batch_size=4)
        tokenized = [tokenize_pair(tokenizer, row) for row in held_out]
        model, peft_config = load_model(path, model_args, False)
        trainer = PreferenceTrainer(model=model, args=training, train_dataset=train, processing_class=tokenizer,
                                    peft_config=peft_config)
        policy = trainer.model
        if reference is None:  # the base model: the adapter off (TRL has added its fused LM head by now)
            with policy.disable_adapter():
                reference = pair_logps(policy.eval(), tokenized, settings, torch.device("cpu"))
        trainer.train()
        policy.eval()
        chosen, rejected = pair_logps(policy, tokenized, settings, torch.device("cpu"))
        margins = training.beta * ((chosen - reference[0]) - (rejected - reference[1]))
        run = {"learning_rate": lr,
               "reward_accuracy": mean_se((margins > 0).double()), "reward_margin": mean_se(margins),
               "chosen_logp_change": mean_se(chosen - reference[0]),
               "train_log": [{k: e[k] for k in ("step", "loss", "rewards/margins") if k in e}
                             for e in trainer.state.log_history if "loss" in e],
               "seconds": time.time() - started}
        results["runs"].append(run)
        print(f"lr {lr:g}: held-out accuracy {run['reward_accuracy']['mean']:.3f} margin "
              f"{run['reward_margin']['mean']:.4f} chosen log-prob change {run['chosen_logp_change']['mean']:.3f} "
              f"({run['seconds']:.0f} s)", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        del trainer, model, policy
    return results


if __name__ == "__main__":
    main()

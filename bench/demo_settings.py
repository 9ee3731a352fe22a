"""How the demo recipe's (recipes/demo-smollm2) learning rate and steps were chosen: on validation data only.

    python bench/demo_settings.py          # resumes; bench/results/demo_settings.json and .md

Each candidate trains the recipe as `make train` does (its config, one CPU process), but with the held-out pass and
the end-of-run report on the **validation** split (data/demo/validation.jsonl: new pairs of training subjects and
templates) and the validation probes (data/demo-probes-validation.json: 30 training questions, no facts), so the
held-out subjects and templates of test.jsonl and data/demo-probes.json are never seen while choosing.

The rule, fixed before any candidate ran: among the candidates whose KL to the reference (k3, nats per sampled
completion, on validation prompts) is at most KL_LIMIT, the highest validation style uptake (share of greedy replies
in the chosen style, dpo_recipes/report/probes.py); a tie goes to the smaller KL. beta stays the recipe's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo-smollm2"
WORK = REPO / "bench" / "tmp" / "demo-settings"
RESULTS = REPO / "bench" / "results" / "demo_settings.json"
KL_LIMIT = 3.0
CANDIDATES = [  # (learning rate, steps)
    (1e-4, 8), (1e-4, 24), (3e-4, 8), (3e-4, 24),
]


def run_candidate(lr: float, steps: int) -> dict:
    out = WORK / f"lr{lr:g}-steps{steps}"
    report = out / "eval_report.json"
    if not report.is_file():
        started = time.time()
        command = [sys.executable, str(RECIPE / "train.py"), "--config", str(RECIPE / "config.yaml"),
                   "--learning_rate", str(lr), "--max_steps", str(steps), "--output_dir", str(out),
                   "--overwrite_output_dir", "true", "--dataset_test_split", "validation",
                   "--eval_report_probes", "data/demo-probes-validation.json", "--report_to", "none",
                   "--save_strategy", "no"]
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        (out / "seconds.txt").write_text(f"{time.time() - started:.1f}\n")
    data = json.loads(report.read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    margins = [e["rewards/margins"] for e in history if "rewards/margins" in e and "eval_loss" not in e]
    return {"learning_rate": lr, "steps": steps,
            "validation_style_uptake": data["probes"]["style_uptake"]["policy"],
            "reference_style_uptake": data["probes"]["style_uptake"]["reference"],
            "validation_kl_k3": data["kl"]["k3"]["per_completion"]["mean"],
            "validation_reward_accuracy": data["pairs"]["reward_accuracy"]["mean"],
            "last_training_margin": margins[-1] if margins else None,
            "seconds": float((out / "seconds.txt").read_text()) if (out / "seconds.txt").is_file() else None}


def choose(rows: list[dict]) -> dict | None:
    allowed = [r for r in rows if r["validation_kl_k3"] <= KL_LIMIT]
    return max(allowed, key=lambda r: (r["validation_style_uptake"], -r["validation_kl_k3"])) if allowed else None


def markdown(rows: list[dict], chosen: dict | None) -> str:
    lines = ["# The demo recipe's settings, chosen on validation data", "",
             "`python bench/demo_settings.py` (its docstring has the protocol). Validation pairs and probes only; "
             f"rule: the highest validation style uptake with KL (k3, per completion) <= {KL_LIMIT:g}.", "",
             "| learning rate | steps | style uptake (policy) | style uptake (reference) | KL k3 | reward accuracy | "
             "last training margin | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        margin = "" if r["last_training_margin"] is None else f"{r['last_training_margin']:.2f}"
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['learning_rate']:g} | {r['steps']} | {r['validation_style_uptake']:.3f} | "
                     f"{r['reference_style_uptake']:.3f} | {r['validation_kl_k3']:.2f} | "
                     f"{r['validation_reward_accuracy']:.3f} | {margin} | {seconds} |")
    lines += ["", f"Chosen: learning rate {chosen['learning_rate']:g}, {chosen['steps']} steps." if chosen
              else "No candidate within the KL limit."]
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = []
    for lr, steps in CANDIDATES:
        rows.append(run_candidate(lr, steps))
        print(json.dumps(rows[-1]), flush=True)
    chosen = choose(rows)
    RESULTS.write_text(json.dumps({"kl_limit": KL_LIMIT, "candidates": rows, "chosen": chosen}, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(markdown(rows, chosen))
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()

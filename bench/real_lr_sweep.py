"""HH benchmark, selection stage: the learning rate and the number of steps, chosen on the validation split.

    python bench/real_lr_sweep.py                 # bench/results/hh/selection.json (and sweep.json: every candidate)
    python bench/real_lr_sweep.py --quick --out outputs/hh-quick   # the path on a tiny random model

Every candidate (learning rate x steps, the grid of bench/real_bench.py's protocol) trains DPO from the same start
with each selection seed on the conversation split's training part, then is scored on the validation part. The rule
(bench/README.md): the candidate with the highest mean length-balanced validation accuracy over the selection seeds;
a tie goes to fewer steps, then the smaller learning rate. The test split is not read here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from real_bench import (RESULTS, add_parallel_arguments, balanced_accuracy_of, length_baseline,  # noqa: E402
                        protocol, run_cells, split_info, write_split)


def choose(candidates: list[dict]) -> dict:
    """The selection rule: highest mean validation length-balanced accuracy; ties to fewer steps, then smaller lr."""
    return max(candidates, key=lambda c: (c["balanced_accuracy"], -c["steps"], -c["learning_rate"]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random model and a few pairs: the path only")
    parser.add_argument("--out", default=str(RESULTS))
    add_parallel_arguments(parser)
    args = parser.parse_args(argv)
    plan = protocol(args.quick)
    out = Path(args.out)
    work = Path(args.work) if args.work else REPO / "bench" / "tmp" / out.name
    out.mkdir(parents=True, exist_ok=True)
    data = write_split(work, plan)
    from datasets import load_dataset

    _, groups = length_baseline(load_dataset("json", data_files=str(data / "validation.jsonl"), split="train"))
    sweep_file = out / "sweep.json"
    done = json.loads(sweep_file.read_text()) if sweep_file.is_file() else []
    grid = [(lr, steps, seed) for lr in plan["lrs"] for steps in plan["steps"] for seed in plan["select_seeds"]]
    known = {(r["learning_rate"], r["steps"], r["seed"]) for r in done}
    tasks = [(f"lr{lr:g}-steps{steps}-seed{seed}",
              (plan, "dpo", seed, lr, steps, data, "validation", work / "sweep" / f"lr{lr:g}-steps{steps}-seed{seed}"))
             for lr, steps, seed in grid if (lr, steps, seed) not in known]
    tasks = tasks[:1] + sorted(tasks[1:], key=lambda t: -t[1][4])  # the longest runs first: no core idles at the end

    def record(name: str, cell: dict) -> None:
        done.append({"learning_rate": cell["learning_rate"], "steps": cell["steps"], "seed": cell["seed"],
                     "accuracy": sum(cell["correct"]) / len(cell["correct"]),
                     "balanced_accuracy": balanced_accuracy_of(cell["correct"], groups),
                     "kl_k3": cell["kl_k3_per_completion"], "chosen_logp_change": cell["chosen_logp_change"]})
        sweep_file.write_text(json.dumps(done, indent=1) + "\n")

    failed = run_cells(tasks, args.jobs, args.threads, record)
    if failed:
        raise SystemExit(f"{len(failed)} candidate run(s) failed: {', '.join(failed)}; rerun to retry them")
    candidates = []
    for lr in plan["lrs"]:
        for steps in plan["steps"]:
            runs = [r for r in done if (r["learning_rate"], r["steps"]) == (lr, steps)]
            candidates.append({"learning_rate": lr, "steps": steps,
                               "balanced_accuracy": sum(r["balanced_accuracy"] for r in runs) / len(runs),
                               "accuracy": sum(r["accuracy"] for r in runs) / len(runs), "seeds": len(runs)})
    best = choose(candidates)
    selection = {"learning_rate": best["learning_rate"], "steps": best["steps"], "split": split_info(data)["digest"],
                 "rule": "highest mean length-balanced validation accuracy; ties: fewer steps, then smaller lr",
                 "candidates": candidates}
    (out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    print(f"selected learning rate {best['learning_rate']:g}, {best['steps']} steps -> {out / 'selection.json'}",
          flush=True)
    return selection


if __name__ == "__main__":
    main()

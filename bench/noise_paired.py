"""Paired comparisons of the label-noise benchmark: each variant against DPO, seed by seed.

The benchmark trains every variant with the same seeds (the same flipped pairs, the same batches), so the fair
question is per seed: how much better or worse than DPO on the same noisy data? For each variant, rate and metric
this gives the mean of the per-seed differences (variant - DPO), its 95% t interval (n - 1 degrees of freedom) and
how many seeds go each way. A difference is stated in docs/benchmarks.md only when its interval excludes 0.

    python bench/noise_paired.py     # reads bench/results/noise.json, writes bench/results/noise_paired.{json,md}
"""

import json
import math
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "brier", "ece")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)


def paired(runs: list[dict], variant: str, rate: float, metric: str, baseline: str = "dpo") -> dict:
    by_seed = {(r["variant"], r["seed"]): r[metric] for r in runs if r["rate"] == rate}
    seeds = sorted(s for v, s in by_seed if v == variant and (baseline, s) in by_seed)
    diffs = [by_seed[(variant, s)] - by_seed[(baseline, s)] for s in seeds]
    mean = statistics.fmean(diffs)
    half = T_975[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return {"seeds": len(diffs), "diffs": diffs, "mean": mean, "ci95": [mean - half, mean + half],
            "higher": sum(d > 0 for d in diffs), "lower": sum(d < 0 for d in diffs),
            "excludes_zero": mean - half > 0 or mean + half < 0}


def main() -> None:
    data = json.loads((RESULTS / "noise.json").read_text())
    runs, variants, rates = data["runs"], data["meta"]["variants"], data["meta"]["rates"]
    table = {v: {str(rate): {m: paired(runs, v, rate, m) for m in METRICS} for rate in rates}
             for v in variants if v != "dpo"}
    (RESULTS / "noise_paired.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = ["# Label noise: each variant minus DPO, per seed (same flipped pairs, same batches)", "",
             "Mean of the per-seed differences, 95% t interval, and seeds above / below DPO. Accuracy: higher is "
             "better; Brier and ECE: lower is better. * = the interval excludes 0.", ""]
    for metric in METRICS:
        lines += [f"## {metric}", "", "| variant | " + " | ".join(f"eps={r}" for r in rates) + " |",
                  "|---|" + "---|" * len(rates)]
        for v, per_rate in table.items():
            cells = []
            for rate in rates:
                c = per_rate[str(rate)][metric]
                cells.append(f"{c['mean']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] {c['higher']}/{c['lower']}"
                             + (" *" if c["excludes_zero"] else ""))
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    (RESULTS / "noise_paired.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

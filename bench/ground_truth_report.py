"""The ground-truth experiment's summary (bench/ground_truth.py): ground_truth.json, ground_truth.md and the plots.

Statistics follow the protocol (bench/ground_truth.md): a cell's unit is its seed's mean true reward over the test
samples; a group of cells (variant, beta, eps) is summarised by the t interval over its seeds, and two groups are
compared by the t interval of their per-seed differences (paired by seed: the same swaps, the same data order).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from dpo_recipes.report.statistics import t_interval as seed_t_interval

BEST_OF = (1, 2, 4, 8, 16)
MADPO_NONINFERIORITY = 0.05  # H4: MADPO's reward may fall at most this far below DPO's at equal KL


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean and two-sided t interval over the values (each one unit: a seed), from the shared statistics module, in
    this report's record form: mean, ci95, n, sd."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0, "sd": float("nan")}
    x = seed_t_interval(values, level)
    return {"mean": x["mean"], "ci95": [x["low"], x["high"]], "n": n, "sd": x["se"] * math.sqrt(n)}


def paired_interval(a: dict[int, float], b: dict[int, float]) -> dict:
    """t interval of a[seed] - b[seed] over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    out = t_interval([a[s] - b[s] for s in seeds])
    out["seeds"] = seeds
    return out


def verdict(interval: dict, above: float = 0.0) -> str:
    """supported: the whole interval above `above`; contradicted: the whole interval below it; else unresolved."""
    low, high = interval["ci95"]
    if interval["n"] < 2 or math.isnan(low):
        return "unresolved"
    if low > above:
        return "supported"
    if high < above:
        return "contradicted"
    return "unresolved"


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear y at x through (x, y) points sorted by x; None outside their range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_cells(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]


def reference_summary(folder: Path) -> dict | None:
    """The reference on the test prompts: mean true reward of its samples, and best-of-n (exact over subsets)."""
    from ground_truth import best_of_n, best_of_n_kl

    path = folder / "reference" / "test.jsonl"
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    by_prompt: dict[str, list[float]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["reward"])
    per_prompt = [statistics.fmean(v) for v in by_prompt.values()]
    m = min(len(v) for v in by_prompt.values())
    return {"reward": statistics.fmean(r["reward"] for r in rows),
            "reward_se": statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else None,
            "samples": len(rows), "prompts": len(by_prompt),
            "best_of_n": [{"n": n, "kl": best_of_n_kl(n), "reward": best_of_n(list(by_prompt.values()), n)}
                          for n in BEST_OF if n <= m]}


def group(cells: list[dict], variant: str, beta: float, eps: float, kind: str = "main") -> dict[int, dict]:
    """seed -> cell of one (variant, beta, eps). cdpo and rdpo at eps 0 are DPO (label_smoothing 0): DPO's cells."""
    if variant in ("cdpo", "rdpo") and eps == 0:
        variant = "dpo"
    return {c["seed"]: c for c in cells if c["variant"] == variant and c["beta"] == beta
            and c["epsilon"] == eps and c["kind"] == kind}


# ----------------------------------------------------------------------------------------------------------------
# Summary and hypotheses


def summarise(cells: list[dict], reference: dict | None) -> list[dict]:
    rows = []
    keys = sorted({(c["variant"], c["beta"], c["epsilon"]) for c in cells if c["kind"] == "main"},
                  key=lambda k: (["dpo", "cdpo", "rdpo", "ipo", "madpo_true", "madpo_rm"].index(k[0]), k[1], k[2]))
    for variant, beta, eps in keys:
        g = group(cells, variant, beta, eps)
        rewards = {s: c["policy_reward"] for s, c in g.items()}
        row = {"variant": variant, "beta": beta, "epsilon": eps, "seeds": sorted(g),
               "policy_reward": t_interval(list(rewards.values())),
               "kl": t_interval([c["kl"] for c in g.values()]),
               "margin": t_interval([c["margin"] for c in g.values() if "margin" in c]),
               "accuracy": t_interval([c["accuracy"] for c in g.values() if "accuracy" in c])}
        if reference:
            row["gain"] = t_interval([r - reference["reward"] for r in rewards.values()])
        rows.append(row)
    return rows


def noise_comparisons(cells: list[dict], settings: dict) -> list[dict]:
    """Each variant minus DPO at the same beta and eps > 0, paired by seed (the same swapped pairs): a description
    beside H2, which is the test."""
    b = settings["main_beta"]
    out = []
    for eps in sorted(e for e in settings["epsilons"] if e > 0):
        dpo = {s: c["policy_reward"] for s, c in group(cells, "dpo", b, eps).items()}
        for variant in ("cdpo", "rdpo", "ipo", "madpo_true", "madpo_rm"):
            other = {s: c["policy_reward"] for s, c in group(cells, variant, b, eps).items()}
            if set(other) & set(dpo):
                out.append({"variant": variant, "beta": b, "epsilon": eps,
                            "reward_difference_vs_dpo": paired_interval(other, dpo)})
    return out


def hypotheses(cells: list[dict], reference: dict | None, settings: dict) -> dict:
    b = settings["main_beta"]
    hi = max(settings["epsilons"])
    out = {}
    ref = reference["reward"] if reference else None

    # H1: DPO's true-reward gain over the reference > 0.
    dpo0 = group(cells, "dpo", b, 0.0)
    if ref is not None and dpo0:
        gain = t_interval([c["policy_reward"] - ref for c in dpo0.values()])
        out["H1"] = {"statement": "DPO's true-reward gain over the reference > 0", "gain": gain,
                     "verdict": verdict(gain)}

    # H2: at the highest eps, cDPO and rDPO keep a larger share of their eps-0 gain than DPO. Their eps-0 cells are
    # DPO's, so the shares share a denominator (DPO's mean eps-0 gain) and the comparison is the paired difference
    # of the eps-hi rewards.
    if ref is not None and dpo0:
        g0 = statistics.fmean(c["policy_reward"] for c in dpo0.values()) - ref
        dpo_hi = {s: c["policy_reward"] for s, c in group(cells, "dpo", b, hi).items()}
        parts = {}
        for v in ("cdpo", "rdpo"):
            v_hi = {s: c["policy_reward"] for s, c in group(cells, v, b, hi).items()}
            if not v_hi or not dpo_hi:
                continue
            diff = paired_interval(v_hi, dpo_hi)
            share = {k: (diff[k] / g0 if k == "mean" else [x / g0 for x in diff[k]]) if g0 > 0 else None
                     for k in ("mean", "ci95")}
            parts[v] = {"reward_difference_vs_dpo": diff, "share_difference_vs_dpo": share,
                        "verdict": verdict(diff) if g0 > 0 else "unresolved"}
        if parts:
            verdicts = {p["verdict"] for p in parts.values()}
            overall = ("supported" if verdicts == {"supported"} and len(parts) == 2 else
                       "contradicted" if "contradicted" in verdicts else "unresolved")
            out["H2"] = {"statement": f"at eps={hi} cDPO and rDPO keep a larger share of their eps=0 gain than DPO",
                         "dpo_eps0_gain": g0, "parts": parts, "verdict": overall}

    # H3: with extended training DPO's held-out margin keeps growing while the true reward stops improving or falls;
    # IPO's margin stays bounded. Compared between the first and the last evaluation (epoch 1 and the last epoch),
    # per seed; IPO's bound: its length-normalised held-out margin stays below its training target 1 / (2 tau).
    over = {v: {c["seed"]: c for c in cells if c["kind"] == "overconf" and c["variant"] == v} for v in ("dpo", "ipo")}
    if over["dpo"]:
        first = {s: c["evals"][0] for s, c in over["dpo"].items()}
        last = {s: c["evals"][-1] for s, c in over["dpo"].items()}
        margin_growth = paired_interval({s: e["margin"] for s, e in last.items()},
                                        {s: e["margin"] for s, e in first.items()})
        reward_change = paired_interval({s: e["policy_reward"] for s, e in last.items()},
                                        {s: e["policy_reward"] for s, e in first.items()})
        part_margin = verdict(margin_growth)
        part_reward = ("contradicted" if verdict(reward_change) == "supported" else
                       "supported" if reward_change["n"] >= 2 else "unresolved")
        h3 = {"statement": "with extended training DPO's held-out margin keeps growing while its true reward stops "
                           "improving or falls, and IPO's margin stays bounded",
              "dpo_margin_growth": margin_growth, "dpo_reward_change": reward_change,
              "dpo_margin_verdict": part_margin, "dpo_reward_verdict": part_reward}
        parts = [part_margin, part_reward]
        if over["ipo"]:
            tau = next(iter(over["ipo"].values()))["loss_beta"]
            ipo_last = t_interval([c["evals"][-1]["normalised_logratio_margin"] for c in over["ipo"].values()])
            ipo_verdict = ("supported" if ipo_last["ci95"][1] < 1 / (2 * tau) else
                           "contradicted" if ipo_last["ci95"][0] > 1 / (2 * tau) else "unresolved")
            ipo_growth = paired_interval({s: c["evals"][-1]["normalised_logratio_margin"] for s, c in over["ipo"].items()},
                                         {s: c["evals"][0]["normalised_logratio_margin"] for s, c in over["ipo"].items()})
            h3.update({"ipo_normalised_margin_last": ipo_last, "ipo_target": 1 / (2 * tau), "ipo_verdict": ipo_verdict,
                       "ipo_normalised_margin_growth": ipo_growth})
            parts.append(ipo_verdict)
        else:
            parts.append("unresolved")
        h3["verdict"] = ("supported" if set(parts) == {"supported"} else
                         "contradicted" if "contradicted" in parts else "unresolved")
        out["H3"] = h3

    # H4: MADPO with true margins reaches at least DPO's reward at equal KL: per seed, MADPO's reward minus DPO's
    # frontier (the seed's DPO cells at every beta, linear in KL) at MADPO's KL; non-inferiority margin fixed.
    madpo = group(cells, "madpo_true", b, 0.0)
    if madpo:
        diffs = {}
        for s, c in madpo.items():
            frontier = [(d["kl"], d["policy_reward"]) for d in cells if d["variant"] == "dpo" and d["kind"] == "main"
                        and d["epsilon"] == 0 and d["seed"] == s]
            y = interpolate(frontier, c["kl"])
            if y is not None:
                diffs[s] = c["policy_reward"] - y
        interval = t_interval(list(diffs.values()))
        out["H4"] = {"statement": "MADPO with true margins reaches at least DPO's true reward at equal KL",
                     "difference_at_equal_kl": interval, "seeds_inside_dpo_kl_range": sorted(diffs),
                     "noninferiority_margin": MADPO_NONINFERIORITY,
                     "verdict": verdict(interval, -MADPO_NONINFERIORITY) if len(diffs) >= 2 else "unresolved"}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Markdown and plots


def _ci(x: dict, digits: int = 3) -> str:
    if x["n"] == 0:
        return "-"
    if x["n"] < 2:
        return f"{x['mean']:.{digits}f} (n=1)"
    return f"{x['mean']:.{digits}f} [{x['ci95'][0]:.{digits}f}, {x['ci95'][1]:.{digits}f}]"


def markdown(result: dict) -> str:
    meta, ref = result["meta"], result["reference"]
    lines = ["# Ground truth: true reward vs KL on SmolLM2-135M-Instruct", "",
             f"Written by `make ground-truth` (bench/ground_truth.py); protocol: bench/ground_truth.md. "
             f"{meta['cells_finished']} test cells finished. Task: one-sentence film reviews "
             "(data/ground_truth/README.md); true reward: VADER compound sentiment in [-1, 1].", ""]
    p = meta["progress"]
    if p.get("pending"):
        eta = (f"; at the finished cells' median pace they would take about {p['pending_hours_estimate']:.1f} h more "
               "on this machine" if "pending_hours_estimate" in p else "")
        lines += [f"**Partial results**: {p['finished']} of {p['planned']} cells (sweep included) have finished; "
                  f"next: {', '.join(p['pending'][:3])}{eta}. A rerun of `make ground-truth` resumes. Verdicts below are "
                  "preliminary until all five seeds of their cells have finished.", ""]
    sweep = result.get("sweep")
    if sweep:
        lines += [f"Budget chosen on validation prompts: learning rate {sweep['learning_rate']:g}, {sweep['steps']} "
                  f"steps of {meta['settings']['batch']} pairs: {sweep['steps'] * meta['settings']['batch']} of the "
                  f"{meta['train_pairs']} training pairs, each seen at most once, in the seed's order.", "",
                  "| learning rate | steps | validation reward | KL |", "|---|---|---|---|"]
        lines += [f"| {p['learning_rate']:g} | {p['steps']} | {p['validation_reward']:.3f} ± "
                  f"{p['validation_reward_se'] or float('nan'):.3f} | {p['kl']:.2f} |" for p in sweep["points"]]
        lines.append("")
    if ref:
        lines += [f"Reference on the test prompts: mean true reward {ref['reward']:.3f} (± {ref['reward_se']:.3f}, "
                  f"{ref['samples']} samples over {ref['prompts']} prompts). Best-of-n from the same samples:", "",
                  "| n | KL = log n - (n-1)/n | true reward |", "|---|---|---|"]
        lines += [f"| {b['n']} | {b['kl']:.3f} | {b['reward']:.3f} |" for b in ref["best_of_n"]]
        lines.append("")
    lines += ["Per (variant, beta, eps): 95% t intervals over seeds (a seed's mean over its test samples is one unit). "
              "cDPO and rDPO at eps 0 are DPO exactly (label_smoothing 0) and reuse its cells.", "",
              "| variant | beta | eps | seeds | true reward | gain over reference | KL (k3, per completion) | "
              "held-out margin | held-out accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        lines.append(f"| {row['variant']} | {row['beta']:g} | {row['epsilon']:g} | {len(row['seeds'])} | "
                     f"{_ci(row['policy_reward'])} | {_ci(row['gain']) if 'gain' in row else '-'} | "
                     f"{_ci(row['kl'], 2)} | {_ci(row['margin'])} | {_ci(row['accuracy'])} |")
    if result.get("noise_vs_dpo"):
        lines += ["", "Under label noise, each variant's true reward minus DPO's at the same beta and eps, paired by "
                  "seed (the same swapped pairs): a description; H2 below is the test.", "",
                  "| variant | beta | eps | seeds | minus DPO |", "|---|---|---|---|---|"]
        for x in result["noise_vs_dpo"]:
            d = x["reward_difference_vs_dpo"]
            lines.append(f"| {x['variant']} | {x['beta']:g} | {x['epsilon']:g} | {len(d['seeds'])} | {_ci(d)} |")
    lines += ["", "## Hypotheses", ""]
    h = result["hypotheses"]
    for name in ("H1", "H2", "H3", "H4"):
        if name not in h:
            lines.append(f"- **{name}**: unresolved (its cells have not finished).")
            continue
        x = h[name]
        detail = ""
        if name == "H1":
            detail = f"gain {_ci(x['gain'])}"
        elif name == "H2":
            detail = "; ".join(f"{v} minus DPO at eps {max(meta['settings']['epsilons'])}: reward "
                               f"{_ci(p['reward_difference_vs_dpo'])}" for v, p in x["parts"].items())
            detail += f" (DPO's eps-0 gain {x['dpo_eps0_gain']:.3f})"
        elif name == "H3":
            detail = (f"DPO margin growth first to last evaluation {_ci(x['dpo_margin_growth'])} "
                      f"({x['dpo_margin_verdict']}); reward change {_ci(x['dpo_reward_change'])} "
                      f"({x['dpo_reward_verdict']})")
            if "ipo_verdict" in x:
                detail += (f"; IPO's normalised margin at the end {_ci(x['ipo_normalised_margin_last'])} vs its target "
                           f"{x['ipo_target']:.3f} ({x['ipo_verdict']}), its growth first to last "
                           f"{_ci(x['ipo_normalised_margin_growth'])}")
        elif name == "H4":
            detail = (f"MADPO minus DPO's frontier at MADPO's KL {_ci(x['difference_at_equal_kl'])} "
                      f"(non-inferiority margin {x['noninferiority_margin']})")
        lines.append(f"- **{name}** ({x['statement']}): **{x['verdict']}**. {detail}.")
    lines += ["", "Plots: ground_truth_frontier.png (true reward vs KL, best-of-n), ground_truth_noise.png (share of "
              "the eps-0 gain kept), ground_truth_overconfidence.png (margin and true reward vs steps)."]
    return "\n".join(lines) + "\n"


COLOURS = {"dpo": "#4c72b0", "cdpo": "#dd8452", "rdpo": "#55a868", "ipo": "#c44e52", "madpo_true": "#8172b3",
           "madpo_rm": "#937860"}


def _save(fig, axes, path: Path) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, ref, meta = result["cells"], result["reference"], result["meta"]
    main = [c for c in cells if c["kind"] == "main"]
    fig, ax = plt.subplots(figsize=(7, 5))
    if ref:
        ax.plot([b["kl"] for b in ref["best_of_n"]], [b["reward"] for b in ref["best_of_n"]], "k--o", ms=3,
                label="best-of-n (reference)")
    for v, colour in COLOURS.items():
        pts = [c for c in main if c["variant"] == v and c["epsilon"] == 0]
        if pts:
            ax.scatter([c["kl"] for c in pts], [c["policy_reward"] for c in pts], color=colour, s=14, alpha=0.6,
                       label=f"{v} (eps 0)")
    for row in result["summary"]:
        if row["epsilon"] == 0 and row["variant"] in COLOURS:
            ax.errorbar(row["kl"]["mean"], row["policy_reward"]["mean"],
                        yerr=[[row["policy_reward"]["mean"] - row["policy_reward"]["ci95"][0]],
                              [row["policy_reward"]["ci95"][1] - row["policy_reward"]["mean"]]] if
                        row["policy_reward"]["n"] > 1 else None, color=COLOURS[row["variant"]], marker="D", ms=7,
                        mec="black", capsize=3)
        if row["epsilon"] == 0 and row["variant"] == "dpo":
            ax.annotate(f"beta {row['beta']:g}", (row["kl"]["mean"], row["policy_reward"]["mean"]), fontsize=8,
                        xytext=(6, -12), textcoords="offset points")
    ax.set_xlabel("KL(policy || reference), k3, nats per completion")
    ax.set_ylabel("true reward (VADER compound), test prompts")
    ax.set_title("True reward vs KL (points: seeds; diamonds: means, 95% t)")
    _save(fig, [ax], out / "ground_truth_frontier.png")

    h2 = result["hypotheses"].get("H2")
    if h2 and ref:
        g0 = h2["dpo_eps0_gain"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for v in ("dpo", "cdpo", "rdpo"):
            xs, ys = [], []
            for eps in meta["settings"]["epsilons"]:
                g = group(cells, v, meta["settings"]["main_beta"], eps)
                if g and g0 > 0:
                    xs.append(eps)
                    ys.append((statistics.fmean(c["policy_reward"] for c in g.values()) - ref["reward"]) / g0)
            ax.plot(xs, ys, "-o", color=COLOURS[v], label=v)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("label-noise rate eps")
        ax.set_ylabel("share of DPO's eps-0 gain kept")
        _save(fig, [ax], out / "ground_truth_noise.png")

    over = [c for c in cells if c["kind"] == "overconf"]
    if over:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for c in over:
            steps = [e["step"] for e in c["evals"]]
            axes[0].plot(steps, [e["logratio_margin"] for e in c["evals"]], "-o", ms=3, color=COLOURS[c["variant"]],
                         alpha=0.6, label=c["variant"] if c["seed"] == min(x["seed"] for x in over) else None)
            axes[1].plot(steps, [e["policy_reward"] for e in c["evals"]], "-o", ms=3, color=COLOURS[c["variant"]],
                         alpha=0.6, label=c["variant"] if c["seed"] == min(x["seed"] for x in over) else None)
        axes[0].set_ylabel("held-out log-ratio margin h (nats)")
        axes[1].set_ylabel("true reward, test prompts")
        if ref:
            axes[1].axhline(ref["reward"], color="grey", ls="--", lw=0.8, label="reference")
        for ax in axes:
            ax.set_xlabel("optimizer steps")
        _save(fig, axes, out / "ground_truth_overconfidence.png")


def plan(folder: Path, settings: dict, sweep: dict | None) -> list[str] | None:
    """Every cell's name in the order the run takes them (once the budget is chosen), so the report can say what
    is left."""
    import dataclasses

    from ground_truth import Settings, main_cells, sweep_cells

    known = {f.name for f in dataclasses.fields(Settings)}
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in known})
    names = [c.name for c in sweep_cells(s)]
    pairs = folder / "pairs" / "train.jsonl"
    if sweep is None or not pairs.is_file():
        return None
    return names + [c.name for c in main_cells(s, sweep["learning_rate"], sweep["steps"], len(read_jsonl(pairs)))]


def progress(cells: list[dict], planned: list[str] | None, planned_steps: int | None, jobs: int = 2) -> dict:
    """Finished and pending cells, and the hours the pending ones would take at the finished ones' median pace
    (`jobs` cells at a time; over-confidence cells weighted by their steps)."""
    done = {c["name"] for c in cells}
    out = {"finished": len(done)}
    if planned is None:
        return out
    pending = [n for n in planned if n not in done]
    # Seconds per training step, evaluation included: the main cells' median, else the sweep's (three evaluations
    # each, so an overestimate).
    paced = [c for c in cells if c["kind"] == "main"] or [c for c in cells if c["kind"] == "sweep"]
    per_step = statistics.median(c["seconds"] / max(c["steps"], 1) for c in paced) if paced else None
    steps = {c["name"]: c["steps"] for c in cells}
    out.update({"planned": len(planned), "pending": pending})
    if per_step is not None:
        main_steps = planned_steps
        cost = sum(per_step * (3 * main_steps if n.startswith("overconf-") else steps.get(n, main_steps))
                   for n in pending)
        out["pending_hours_estimate"] = cost / jobs / 3600
    return out


def write_report(out: Path, settings=None) -> dict:
    folder = out / "ground_truth"
    meta_settings = json.loads((folder / "settings.json").read_text())
    cells = load_cells(folder)
    reference = reference_summary(folder)
    validation = folder / "reference" / "validation.jsonl"
    references = {"test": reference["reward"] if reference else None,
                  "validation": statistics.fmean(r["reward"] for r in read_jsonl(validation))
                  if validation.is_file() else None}
    for c in cells:  # the reference's mean on the cell's own evaluation prompts
        c["reference_reward"] = references[c["split"]]
    sweep = json.loads((folder / "sweep.json").read_text()) if (folder / "sweep.json").is_file() else None
    pairs = folder / "pairs" / "train.jsonl"
    test_cells = [c for c in cells if c["kind"] != "sweep"]
    result = {"meta": {"command": "make ground-truth", "settings": meta_settings,
                       "cells_finished": len(test_cells),
                       "progress": progress(cells, plan(folder, meta_settings, sweep), sweep and sweep["steps"]),
                       "train_pairs": len(read_jsonl(pairs)) if pairs.is_file() else None},
              "reference": reference, "sweep": sweep, "summary": summarise(test_cells, reference),
              "hypotheses": hypotheses(test_cells, reference, meta_settings),
              "noise_vs_dpo": noise_comparisons(test_cells, meta_settings), "cells": cells}
    (out / "ground_truth.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ground_truth.md").write_text(markdown(result))
    plot(result, out)
    return result


if __name__ == "__main__":
    import sys

    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results")

"""The evaluation report as files: eval_report.json and its Markdown rendering eval_report.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dpo_recipes.names import REPORT_JSON, REPORT_MD
from .run_record import write_json


def _pm(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def format_markdown(report: dict) -> str:
    s, pairs, kl = report["settings"], report["pairs"], report["kl"]
    lines = [
        f"# Evaluation report: {report.get('run_name', '')}".rstrip(),
        "",
        f"Run folder `{report.get('run_dir', '')}`, step {report.get('global_step', '?')}, {report['model_kind']} "
        f"policy; reference: {'the base model with the adapter disabled' if report['model_kind'] != 'full' else 'the initial model'}. "
        f"Written {report.get('written_at', '')} by {report.get('written_by', '')}. Values are mean ± standard error.",
        "",
        f"## Held-out preference pairs ({pairs['pairs']} of {report['held_out_rows']} rows)",
        "",
        f"Implicit reward r = beta · (log π − log π_ref), beta = {pairs['beta']:g}; log-probs are summed over the "
        "completion tokens, as in training (same template and truncation).",
        "",
        "| | policy | reference |",
        "|---|---|---|",
        f"| chosen log-prob | {_pm(pairs['logps']['policy']['chosen'], 2)} | {_pm(pairs['logps']['reference']['chosen'], 2)} |",
        f"| rejected log-prob | {_pm(pairs['logps']['policy']['rejected'], 2)} | {_pm(pairs['logps']['reference']['rejected'], 2)} |",
        "",
    ]
    if "logp_change" in pairs:
        change = pairs["logp_change"]
        lines += [f"Change of the log-probs (policy − reference): chosen {_pm(change['chosen'], 2)}, rejected "
                  f"{_pm(change['rejected'], 2)}.", ""]
    lines += [
        "| metric | value |",
        "|---|---|",
        f"| reward accuracy (r_chosen > r_rejected) | {_pm(pairs['reward_accuracy'])} |",
        f"| reward margin (r_chosen − r_rejected) | {_pm(pairs['reward_margin'])} |",
        f"| chosen reward | {_pm(pairs['reward_chosen'])} |",
        f"| rejected reward | {_pm(pairs['reward_rejected'])} |",
        "",
        f"## KL(policy ‖ reference) on {kl['prompts']} held-out prompts",
        "",
        f"Monte-Carlo over {kl['completions']} completions sampled from the policy ({kl['samples_per_prompt']} per "
        f"prompt, temperature 1, no top-k / top-p, at most {s['max_new_tokens']} new tokens; {kl['tokens']} tokens, "
        f"{kl['mean_completion_tokens']:.1f} per completion). k1 sums log π − log π_ref over the sampled tokens; k3 "
        "sums ρ − 1 − log ρ with ρ = π_ref / π (never negative, lower variance). Both are unbiased for the KL "
        "between the policy's and the reference's distributions of such completions.",
        "",
        "| estimator | per completion | per token |",
        "|---|---|---|",
    ]
    for name in ("k1", "k3"):
        lines.append(f"| {name} | {_pm(kl[name]['per_completion'], 4)} | {_pm(kl[name]['per_token'], 4)} |")
    if "win_rate" in report:
        w = report["win_rate"]
        lines += [
            "",
            f"## Win-rate against the reference ({w['n']} held-out prompts)",
            "",
            f"Judge `{w['judge_model']}` scores the greedy replies of the policy and of the reference. Policy wins "
            f"{w['wins']}, ties {w['ties']}, losses {w['losses']}: win-rate {w['win_rate']:.3f} "
            f"(95% Wilson interval [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}], ties counted half). Mean reward: "
            f"policy {w['mean_reward']['policy']:.3f}, reference {w['mean_reward']['reference']:.3f}.",
        ]
    if "probes" in report:
        lines += _probe_lines(report["probes"])
    examples = report["generations"][: s["examples"]]
    if examples:
        lines += ["", f"## Generations (greedy, at most {s['max_new_tokens']} new tokens; all "
                  f"{len(report['generations'])} in {REPORT_JSON})"]
        for i, ex in enumerate(examples, 1):
            lines += ["", f"### Prompt {i}", "", "```text", ex["prompt"], "```", "",
                      "| policy | reference |", "|---|---|",
                      f"| {_cell(ex['policy'])} | {_cell(ex['reference'])} |"]
    return "\n".join(lines) + "\n"


def _interval(change: dict) -> str:
    return f"{change['mean']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"


def _probe_lines(probes: dict) -> list[str]:
    computed = f" in {probes['dtype']}" if probes.get("dtype") else ""
    lines = ["", f"## Probes (`{probes['file']}`, greedy replies{computed})", ""]
    if "style_uptake" in probes:
        st = probes["style_uptake"]
        lines += [f"Style uptake on {st['prompts']} held-out prompts: share of replies in the chosen style "
                  f"({probes['style_rule']}): policy {st['policy']:.3f}, reference {st['reference']:.3f}; "
                  f"change {_interval(st['change'])} (95% paired t interval over prompts).", ""]
    if "fact_accuracy" in probes:
        fa = probes["fact_accuracy"]
        lines += [f"Fact accuracy over {fa['subjects']} subjects (the reply states an accepted answer): before "
                  f"(reference) {fa['before']:.3f}, after (policy) {fa['after']:.3f}; change "
                  f"{_interval(fa['change'])} (95% paired t interval over subjects). Gained: "
                  f"{', '.join(fa['gained']) or 'none'}. Lost: {', '.join(fa['lost']) or 'none'}.", ""]
    return lines


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def write_report(run_dir: Path, report: dict) -> tuple[Path, Path]:

    old = run_dir / REPORT_JSON
    if old.is_file():  # `make eval` again: say what is replaced
        try:
            when = json.loads(old.read_text()).get("written_at", "an earlier run")
        except ValueError:
            when = "an unreadable earlier file"
        print(f"{run_dir / REPORT_MD}: replacing the report written {when}", file=sys.stderr)
    write_json(old, report)
    md = run_dir / REPORT_MD
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(format_markdown(report))
    tmp.replace(md)
    return old, md

"""The data audit: what was read, kept and dropped (and why), token lengths, truncation and length bias.

It runs at the start of every training run, after the tokenizer and before the model loads, and alone:

    make audit RECIPE=<name> [ARGS="--key value ..."]
    python -m dpo_recipes.commands.audit --config recipes/<name>/config.yaml [--tokenizer <dir>] [--key value ...]

Both write `data_audit.json` to the run's output_dir and print a short table. Alone it needs the tokenizer, not the
training hardware: it reads the config as a CPU run (no bf16, fp16, tf32 or Liger kernels), so a GPU recipe's data
can be checked before a GPU is rented, and `--tokenizer` names a local tokenizer folder for a gated or offline model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpo_recipes.data.preparation import PreferenceData
from dpo_recipes.data.sources import DEFECTS
from dpo_recipes.names import AUDIT_FILE
from .run_record import write_json


def length_stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    return {
        "mean": round(float(values.mean()), 2),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def split_stats(lengths: dict, max_length: int | None) -> dict:
    """Token statistics of one final split: lengths, truncation at max_length, length bias."""
    prompt, chosen, rejected = lengths["prompt"], lengths["chosen"], lengths["rejected"]
    # "lengths", not "tokens": reporting.write_json redacts every key that contains "token".
    stats = {"lengths": {side: length_stats(lengths[side]) for side in ("prompt", "chosen", "rejected")}}
    # Length bias: DPO is known to reward length; a high share here means the data alone can teach it.
    stats["chosen_longer_share"] = round(float((chosen > rejected).mean()), 4) if len(chosen) else None
    stats["rejected_longer_share"] = round(float((rejected > chosen).mean()), 4) if len(chosen) else None
    if max_length is not None:
        # The collator cuts prompt + completion to max_length: these pairs lose completion tokens (keep_start).
        chosen_cut, rejected_cut = prompt + chosen > max_length, prompt + rejected > max_length
        stats["truncated"] = {"chosen": int(chosen_cut.sum()), "rejected": int(rejected_cut.sum()),
                              "pairs": int((chosen_cut | rejected_cut).sum())}
    return stats


def build_report(data: PreferenceData) -> dict:
    settings = data.settings
    totals = {"rows_read": 0, "kept": 0, "dropped": dict.fromkeys(DEFECTS, 0)}
    for source in data.sources:
        for role in ("train", "eval"):
            counts = source[role]
            if "rows_read" not in counts:  # carved from the train split: already counted there
                continue
            totals["rows_read"] += counts["rows_read"]
            totals["kept"] += counts["kept"]
            for reason, n in counts["dropped"].items():
                totals["dropped"][reason] += n
    if totals["rows_read"] != totals["kept"] + sum(totals["dropped"].values()):
        raise AssertionError(f"audit counts do not add up: {totals}")  # a bug, never the user's data
    report = {
        **totals,
        "format": "conversational" if data.conversational else "standard",
        "extra_columns": data.extra_columns,
        "settings": settings,
        "sources": data.sources,
        "splits": {"train": {"rows": len(data.train)}, "eval": {"rows": len(data.eval)}},
        "eval_pairs_in_train": data.eval_pairs_in_train,
        "template_inputs": data.template_inputs,
    }
    for name, lengths in data.lengths.items():
        report["splits"][name].update(split_stats(lengths, settings["max_length"]))
    return report


def format_table(report: dict) -> str:
    """A short, fixed-width summary for the run's log."""
    lines = []
    for source in report["sources"]:
        mix = f", {source['rows_in_mixture']} rows in the mixture" if len(report["sources"]) > 1 else ""
        lines.append(f"source {source['name']}: {source['format']}; held-out: {source['held_out']}{mix}")
    dropped = {r: n for r, n in report["dropped"].items() if n}
    lines.append(f"rows read {report['rows_read']}, kept {report['kept']}, dropped {sum(dropped.values())}"
                 + (": " + ", ".join(f"{r} {n}" for r, n in dropped.items()) if dropped else ""))
    for source in report["sources"]:
        for role in ("train", "eval"):
            for entry in source[role].get("files", []) if len(source[role].get("files", [])) > 1 else []:
                dropped = sum(entry["dropped"].values())
                lines.append(f"  {entry['file']}: read {entry['rows_read']}, kept {entry['kept']}, dropped {dropped}")
            for reason, where in source[role].get("first_dropped", {}).items():
                lines.append(f"  first {reason}: {where}")
        if source.get("files_not_data"):
            lines.append(f"  not data, not read: {', '.join(source['files_not_data'])}")
        if source.get("splits_not_used"):
            lines.append("  splits not used by this run: " + ", ".join(
                f"{split} ({rows} rows)" for split, rows in source["splits_not_used"].items()))
    splits = report["splits"]
    rows = [("", "train", "eval"), ("pairs", *(str(splits[s]["rows"]) for s in ("train", "eval")))]
    if "lengths" in splits["train"]:
        for side in ("prompt", "chosen", "rejected"):
            rows.append((f"{side} tokens", *(" / ".join(_num(splits[s]["lengths"][side][k]) for k in
                                                        ("mean", "p50", "p95", "max")) for s in ("train", "eval"))))
        rows.append(("chosen longer", *(_pct(splits[s]["chosen_longer_share"]) for s in ("train", "eval"))))
        if "truncated" in splits["train"]:
            rows.append((f"truncated at {report['settings']['max_length']}",
                         *(str(splits[s]["truncated"]["pairs"]) for s in ("train", "eval"))))
    for name, train, eval_ in rows:
        lines.append(f"{name:<18}{train:>26}{eval_:>26}")
    lines.append("(tokens: mean / p50 / p95 / max; truncated: pairs that lose tokens to max_length)")
    if report["eval_pairs_in_train"]:
        lines.append(f"warning: {report['eval_pairs_in_train']} eval pairs also appear in train")
    for name, entry in report.get("template_inputs", {}).items():
        tokens = ", ".join(f"{side} {entry['lengths_with'][side]} ({entry['lengths_without'][side]})"
                           for side in ("prompt", "chosen", "rejected"))
        lines.append(f"chat template input {name}: {entry['rows']} train pairs; the first, tokens with it "
                     f"(without): {tokens}")
        if entry["ignored"]:
            lines.append(f"warning: the chat template ignores {name}: a pair renders the same without it, so the "
                         "model never sees it; use a template that renders it (chat_template_path)")
    if report["settings"]["columns_left_out"]:
        lines.append(f"warning: columns left out (not used for DPO, or not in every source): "
                     f"{', '.join(report['settings']['columns_left_out'])}")
    settings = report["settings"]
    lines.append(f"max_length {settings['max_length']} ({settings['truncation_mode']}), seed {settings['seed']}")
    return "\n".join(lines)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value)}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def write_audit(data: PreferenceData, output_dir: str | Path) -> dict:
    """Write the report of the prepared data to output_dir/data_audit.json, print its table, and return it. A run
    calls it on the main process only."""
    report = build_report(data)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / AUDIT_FILE, report)
    print(f"data audit -> {output_dir / AUDIT_FILE}\n{format_table(report)}", flush=True)
    return report

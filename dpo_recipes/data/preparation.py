"""Preparing the preference data: read the configured sources (data/sources.py, data/files.py), normalise every
format to what TRL's DPOTrainer takes (data/formats.py), mark defective rows, drop them (counted) or stop, carve a
held-out split, and mix the sources.

Every row either comes out as a clean pair or is counted under one reason in `DEFECTS`; `data_stop_on` picks the
reasons that stop the run instead (with one line naming the file, row, field and problem).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from datasets import Dataset, Value, concatenate_datasets

from .files import open_text, read_source
from .formats import MESSAGES_WITH_KEYS, TEMPLATE_COLUMNS, TEMPLATE_FEATURES, map_num_proc, normalise
from .sources import DEFECTS, Source, parse_stop_on, sources_from_args
from dpo_recipes.errors import UserError
from dpo_recipes.names import PAIR_COLUMNS, SCORE_COLUMNS
from .tokenization import template_kwargs, tokenize_pairs


# ----------------------------------------------------------------------------------------------------------------
# Token lengths, computed the way TRL's DPOTrainer tokenizes (so its silent prompt filter finds nothing left)


def _token_lengths_batch(batch: dict, tokenizer, conversational: bool) -> dict:
    valid = [i for i, defect in enumerate(batch["_defect"]) if not defect]
    lengths = {"_prompt_len": [0] * len(batch["_defect"]), "_chosen_len": [0] * len(batch["_defect"]),
               "_rejected_len": [0] * len(batch["_defect"])}
    if any(name in batch for name in TEMPLATE_COLUMNS):  # each row with its own template arguments, as TRL does
        pairs = [tokenize_pairs(tokenizer, [batch["prompt"][i]], [batch["chosen"][i]], [batch["rejected"][i]],
                                conversational, **template_kwargs({k: batch[k][i] for k in TEMPLATE_COLUMNS
                                                                   if k in batch}))[0] for i in valid]
    else:
        pairs = tokenize_pairs(tokenizer, *([batch[k][i] for i in valid] for k in ("prompt", "chosen", "rejected")),
                               conversational) if valid else []
    for i, pair in zip(valid, pairs):
        lengths["_prompt_len"][i] = len(pair["prompt_ids"])
        lengths["_chosen_len"][i] = len(pair["chosen_ids"])
        lengths["_rejected_len"][i] = len(pair["rejected_ids"])
    return lengths


def add_token_lengths(ds: Dataset, tokenizer, conversational: bool, label: str, num_proc: int | None) -> Dataset:
    if conversational and not tokenizer.chat_template:
        raise UserError(f"{label}: the data is conversational but the tokenizer of "
                        f"'{tokenizer.name_or_path}' has no chat template; set chat_template_path to a Jinja "
                        "template file in the recipe config, or use the model's chat/instruct version")
    return ds.map(
        _token_lengths_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "conversational": conversational},
        num_proc=map_num_proc(num_proc, len(ds)),
        desc=f"Counting tokens of {label}",
    )


# ----------------------------------------------------------------------------------------------------------------
# The whole preparation: read, normalise, mark, drop or stop, carve, mix


@dataclass
class SplitCounts:
    split: str | None  # the split read; None when carved from the training split
    rows_read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> where its first row is, for the audit
    files: list[dict] = field(default_factory=list)  # per file read: file, reader, rows_read, kept, dropped

    def as_dict(self) -> dict:
        return {"split": self.split, "rows_read": self.rows_read, "kept": self.kept,
                "dropped": {r: self.dropped[r] for r in DEFECTS if self.dropped[r]}, "first_dropped": self.examples,
                "files": self.files}


@dataclass
class PreferenceData:
    train: Dataset
    eval: Dataset
    conversational: bool
    extra_columns: list[str]  # columns kept beside the pair: numbers (scores, reward_margin), the chat template's
    sources: list[dict]  # per source: name, format, counts per split, held-out origin, rows in the mixture
    lengths: dict  # split -> {"prompt": array, "chosen": array, "rejected": array} (token counts; empty w/o tokenizer)
    eval_pairs_in_train: int
    settings: dict
    train_origins: list[tuple[dict, int]] = field(default_factory=list)  # per train row: (its source part, row)
    template_inputs: dict = field(default_factory=dict)  # tools, chat_template_kwargs, message keys: rows, effect

    def train_row_origin(self, index: int) -> str:
        """Where row `index` of `train` came from: 'file: line N' (JSON Lines) or 'source: row N'."""
        part, row = self.train_origins[index]
        return _where(part, row)



def _mark_and_filter(parts: list[dict], stop_on: set[str], max_length: int | None, truncation_mode: str) -> None:
    """Mark duplicates (across all parts, in order) and long prompts, stop or drop, count. Updates parts in place."""
    seen: dict[str, tuple[dict, int]] = {}  # pair key -> (part, row) of its first occurrence
    for part in parts:
        ds, counts, label = part["ds"], part["counts"], part["label"]
        columns = ["_row", "_defect", "_field", "_detail", "_key"]
        has_lengths = "_prompt_len" in ds.column_names
        if has_lengths:
            columns.append("_prompt_len")
        table = ds.select_columns(columns).to_dict()
        keep, reasons = [], []
        for i, (row, defect, field_name, detail, key) in enumerate(
            zip(table["_row"], table["_defect"], table["_field"], table["_detail"], table["_key"])
        ):
            if not defect and key in seen:
                first, first_row = seen[key]
                where = f"row {first_row}" if first is part else f"{first['label']} row {first_row}"
                defect, field_name, detail = "duplicate_pair", "chosen", f"(with prompt and rejected) repeats {where}"
            elif not defect and has_lengths and max_length is not None and truncation_mode == "keep_start" \
                    and table["_prompt_len"][i] >= max_length:
                defect, field_name = "prompt_too_long", "prompt"
                detail = f"has {table['_prompt_len'][i]} tokens, max_length is {max_length}"
            if defect:
                if defect in stop_on:
                    raise UserError(f"{_where(part, row)}: field '{field_name}' {detail} ({defect}; listed in "
                                    "data_stop_on, remove it to drop and count such rows)")
                counts.dropped[defect] += 1
                reasons.append(defect)
                if defect not in counts.examples:  # where the first one is, for the audit
                    counts.examples[defect] = f"{_where(part, row)}: field '{field_name}' {detail}"
                continue
            seen[key] = (part, row)
            keep.append(i)
            reasons.append("")
        counts.rows_read, counts.kept = len(ds), len(keep)
        counts.files = _file_counts(part["files"], reasons)
        part["ds"] = ds if len(keep) == len(ds) else ds.select(keep)


def _file_counts(files: list[dict], reasons: list[str]) -> list[dict]:
    """Rows read, kept and dropped (by reason) per file of the split: its rows are its files' rows, in order."""
    out, start = [], 0
    for entry in files:
        mine = reasons[start:start + entry["rows"]]
        dropped = Counter(reason for reason in mine if reason)
        out.append({"file": entry["file"], "reader": entry["reader"], "rows_read": len(mine),
                    "kept": mine.count(""), "dropped": {r: dropped[r] for r in DEFECTS if dropped[r]}})
        start += entry["rows"]
    return out


def _file_of(part: dict, row: int) -> tuple[Path | None, int]:
    """The file holding the split's row `row` (1-based) and the row's number within it."""
    for entry in part.get("files", []):
        if row <= entry["rows"]:
            return Path(entry["file"]), row
        row -= entry["rows"]
    return None, row


def _where(part: dict, row: int) -> str:
    """'file: line N' for JSON Lines files (blank lines skipped by the reader), 'file: row N' for other files of a
    directory, else 'source: row N'."""
    path, row_in_file = _file_of(part, row)
    if path is not None and ".jsonl" in [s.lower() for s in path.suffixes]:
        seen = 0
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                seen += bool(line.strip())
                if seen == row_in_file:
                    return f"{path}: line {number}"
    if path is not None and len(part["files"]) > 1:
        return f"{path}: row {row_in_file}"
    return f"{part['label']}: row {row}"


def _take(ds: Dataset, rows: int, rng: np.random.Generator) -> Dataset:
    """`rows` rows of ds: whole copies first, then a seeded sample without replacement for the remainder."""
    if rows == len(ds):
        return ds
    copies, rest = divmod(rows, len(ds))
    indices = np.concatenate([np.tile(np.arange(len(ds)), copies), np.sort(rng.permutation(len(ds))[:rest])])
    return ds.select(indices.tolist())


def mixture_rows(sizes: list[int], sources: list[Source], total: int | None) -> list[int]:
    """Rows each source contributes to the training mixture.

    fraction f (or none: 1): round(f * rows), half up; above 1 repeats rows.
    weights: shares w_i / sum(w). The total is `total` if set, else the largest mixture that repeats no row;
    it is split by largest remainder so the counts add up exactly.
    """
    if not any(s.weight is not None for s in sources):
        return [math.floor(Fraction(str(s.fraction or 1.0)) * n + Fraction(1, 2)) for s, n in zip(sources, sizes)]
    weights = [Fraction(str(s.weight)) for s in sources]
    shares = [w / sum(weights) for w in weights]
    if total is None:
        total = math.floor(min(Fraction(n) / p for n, p in zip(sizes, shares)))
    exact = [total * p for p in shares]
    rows = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(rows)), key=lambda i: (-(exact[i] - rows[i]), i))
    for i in by_remainder[: total - sum(rows)]:
        rows[i] += 1
    return rows


def load_preference_data(
    script_args,
    seed: int,
    tokenizer=None,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    num_proc: int | None = None,
) -> PreferenceData:
    """Read, normalise, check, carve and mix the configured sources. Without a tokenizer the token checks
    (prompt_too_long) and length statistics are skipped."""
    sources = sources_from_args(script_args)
    stop_on = parse_stop_on(getattr(script_args, "data_stop_on", None))
    score_names = (getattr(script_args, "score_chosen_column", None) or SCORE_COLUMNS[0],
                   getattr(script_args, "score_rejected_column", None) or SCORE_COLUMNS[1])
    parts, forms = [], set()
    for index, source in enumerate(sources):
        read = read_source(source)
        splits = read.splits
        if source.split not in splits:
            raise UserError(f"{source.name}: no split '{source.split}' (has {', '.join(sorted(splits))})")
        roles = [("train", source.split)]
        if source.test_split and source.test_split in splits and source.test_split != source.split:
            roles.append(("eval", source.test_split))
        # The source's other splits are not read into this run; the audit names them with their rows.
        unused = {split: len(splits[split]) for split in sorted(splits) if split not in {s for _, s in roles}}
        for role, split in roles:
            label = source.name if len(splits) == 1 else f"{source.name} (split {split})"
            ds, format_name = normalise(splits[split], source, label, num_proc, score_names)
            conversational = not format_name.startswith("standard")
            forms.add(conversational)
            if tokenizer is not None:
                ds = add_token_lengths(ds, tokenizer, conversational, label, num_proc)
            parts.append({"source": source, "index": index, "role": role, "label": label, "ds": ds,
                          "counts": SplitCounts(split), "format": format_name, "files": read.files.get(split, []),
                          "not_data": read.not_data, "unused_splits": unused,
                          "left_out": _left_out(splits[split], ds, source),
                          "numbers": [c for c in ds.column_names if ds.features[c] == Value("float64")]})
    if len(forms) > 1:
        text = [p["label"] for p in parts if p["format"].startswith("standard")]
        raise UserError(f"{text[0]}: standard (text) pairs cannot be mixed with conversational sources; "
                        "convert one of them")
    conversational = forms.pop()
    # Scores and margins are kept only when every source has them: a mixture cannot hold half-empty columns.
    extra_columns = [c for c in parts[0]["numbers"] if all(c in p["numbers"] for p in parts)]
    left_out = sorted({c for p in parts for c in p["numbers"]} - set(extra_columns))
    template_columns = [c for c in TEMPLATE_COLUMNS if any(c in p["ds"].column_names for p in parts)]
    _align_parts(parts, template_columns)
    extra_columns += template_columns
    length_columns = ["_prompt_len", "_chosen_len", "_rejected_len"] if tokenizer is not None else []
    # Train parts first, so an eval pair that repeats a train pair is counted (eval_pairs_in_train), not dropped.
    _mark_and_filter([p for p in parts if p["role"] == "train"], stop_on, max_length, truncation_mode)
    train_keys = {k for p in parts if p["role"] == "train" for k in p["ds"]["_key"]}
    eval_parts = [p for p in parts if p["role"] == "eval"]
    _mark_and_filter(eval_parts, stop_on, max_length, truncation_mode)
    eval_pairs_in_train = sum(k in train_keys for p in eval_parts for k in p["ds"]["_key"])

    rng = np.random.default_rng(seed)
    trains, evals, reports, train_parts = [], [], [], []
    for index, source in enumerate(sources):
        train_part = next(p for p in parts if p["index"] == index and p["role"] == "train")
        train_parts.append(train_part)
        eval_part = next((p for p in parts if p["index"] == index and p["role"] == "eval"), None)
        for part in (train_part, eval_part):
            if part is not None and part["counts"].kept == 0:
                raise UserError(f"{part['label']}: no rows left after filtering ({_dropped_text(part['counts'])})")
        columns = [*PAIR_COLUMNS, *extra_columns, *length_columns, "_row"]
        train_ds = train_part["ds"].select_columns(columns)
        train_ds = train_ds.add_column("_part", [index] * len(train_ds))  # with _row: where each pair came from
        if eval_part is not None:
            eval_ds, held_out = eval_part["ds"].select_columns(columns), f"split '{eval_part['counts'].split}'"
        else:  # no held-out split: carve one from the clean rows, with the seed
            if len(train_ds) < 2:
                raise UserError(f"{train_part['label']}: {len(train_ds)} clean row(s) cannot be split into train "
                                "and a held-out set")
            carved = train_ds.train_test_split(test_size=script_args.eval_fraction, seed=seed)
            train_ds, eval_ds = carved["train"], carved["test"]
            held_out = f"carved {len(eval_ds)} rows ({script_args.eval_fraction:g}) with seed {seed}"
            eval_ds = eval_ds.select_columns(columns)  # the same columns as a source's own held-out split
        trains.append(train_ds)
        evals.append(eval_ds)
        reports.append({
            "name": source.name, "format": train_part["format"], "held_out": held_out,
            "columns_left_out": train_part["left_out"], "files_not_data": train_part["not_data"],
            "splits_not_used": train_part["unused_splits"],
            "train": train_part["counts"].as_dict(),
            "eval": eval_part["counts"].as_dict() if eval_part else {"split": None, "rows": len(eval_ds)},
            "weight": source.weight, "fraction": source.fraction,
        })
    sizes = [len(ds) for ds in trains]
    rows = mixture_rows(sizes, sources, getattr(script_args, "dataset_mixture_rows", None))
    for report, n in zip(reports, rows):
        report["rows_in_mixture"] = n
    mixed = len(sources) > 1 or rows != sizes
    train = concatenate_datasets([_take(ds, n, rng) for ds, n in zip(trains, rows) if n])
    if len(train) == 0:
        raise UserError("dataset_mixture: the training mixture is empty (every source contributes 0 rows)")
    if mixed:
        train = train.shuffle(seed=seed)
    eval_ds = concatenate_datasets(evals) if len(evals) > 1 else evals[0]

    lengths = {}
    if tokenizer is not None:
        for name, ds in (("train", train), ("eval", eval_ds)):
            table = ds.select_columns(["_prompt_len", "_chosen_len", "_rejected_len"]).to_dict()
            lengths[name] = {side: np.asarray(table[f"_{side}_len"]) for side in ("prompt", "chosen", "rejected")}
    origins = train.select_columns(["_part", "_row"]).to_dict()
    train_origins = [(train_parts[i], row) for i, row in zip(origins["_part"], origins["_row"])]
    train, eval_ds = (ds.select_columns([*PAIR_COLUMNS, *extra_columns]) for ds in (train, eval_ds))
    left_out = sorted(set(left_out) | {c for p in parts for c in p["left_out"]})
    settings = {"max_length": max_length, "truncation_mode": truncation_mode, "seed": seed,
                "stop_on": sorted(stop_on), "eval_fraction": script_args.eval_fraction,
                "columns_left_out": left_out}
    inputs = template_inputs(train, tokenizer) if tokenizer is not None and conversational else {}
    return PreferenceData(train, eval_ds, conversational, extra_columns, reports, lengths, eval_pairs_in_train,
                          settings, train_origins, inputs)


def _left_out(raw: Dataset, ds: Dataset, source: Source) -> list[str]:
    """The source's columns that no pair uses (an id, a source tag; tools in text pairs): listed by the audit."""
    used = {source.columns.get(name, name) for name in ds.column_names} | {"prompt"}
    return [c for c in raw.column_names if c not in used]


def _align_parts(parts: list[dict], template_columns: list[str]) -> None:
    """One set of columns and types for every part, so the sources can be mixed: a template column some sources lack
    is empty in their rows (no tools, no template arguments), and messages are JSON values in every part once one
    part's messages carry other keys."""
    with_keys = any(p["ds"].features["chosen"] == MESSAGES_WITH_KEYS for p in parts)
    for part in parts:
        ds = part["ds"]
        for name in template_columns:
            if name not in ds.column_names:
                empty = None if name == "tools" else {}
                ds = ds.add_column(name, [empty] * len(ds), feature=TEMPLATE_FEATURES[name])
        if with_keys and ds.features["chosen"] != MESSAGES_WITH_KEYS:
            features = ds.features.copy()
            features.update({name: MESSAGES_WITH_KEYS for name in PAIR_COLUMNS})
            ds = ds.map(None, features=features, desc=f"Aligning {part['label']}")
        part["ds"] = ds


def _render_ids(tokenizer, row: dict, **kwargs) -> list[int]:
    return tokenize_pairs(tokenizer, [row["prompt"]], [row["chosen"]], [row["rejected"]], True, **kwargs)[0]


def template_inputs(train: Dataset, tokenizer) -> dict:
    """What reaches the chat template beyond role and content, and whether it changes the tokens: for tools,
    chat_template_kwargs and each other message key, the rows that carry it, and the first such row rendered with
    and without it (prompt tokens; `ignored` when both render the same, so the model would never see it)."""
    inputs = {}
    if "tools" in train.column_names:
        rows = [i for i, tools in enumerate(train["tools"]) if tools]
        inputs["tools"] = (rows, lambda row: {**row, "tools": None})
    if "chat_template_kwargs" in train.column_names:
        rows = [i for i, kwargs in enumerate(train["chat_template_kwargs"]) if kwargs]
        inputs["chat_template_kwargs"] = (rows, lambda row: {**row, "chat_template_kwargs": {}})
    if train.features["chosen"] == MESSAGES_WITH_KEYS:
        keys: dict[str, list[int]] = {}
        for i, row in enumerate(train.select_columns(list(PAIR_COLUMNS))):
            for key in sorted({k for side in PAIR_COLUMNS for m in row[side] for k in m} - {"role", "content"}):
                keys.setdefault(key, []).append(i)
        for key, rows in keys.items():
            inputs[f"message key {key}"] = (rows, lambda row, key=key: {
                **row, **{side: [{k: v for k, v in m.items() if k != key} for m in row[side]] for side in PAIR_COLUMNS}})
    report = {}
    for name, (rows, without) in inputs.items():
        if not rows:
            continue
        row = train[rows[0]]
        with_it = _render_ids(tokenizer, row, **template_kwargs(row))
        stripped = without(row)
        without_it = _render_ids(tokenizer, stripped, **template_kwargs(stripped))
        report[name] = {"rows": len(rows), "first_row": rows[0] + 1,
                        "lengths_with": {k[:-4]: len(v) for k, v in with_it.items()},
                        "lengths_without": {k[:-4]: len(v) for k, v in without_it.items()},
                        "ignored": with_it == without_it}
    return report


def _dropped_text(counts: SplitCounts) -> str:
    dropped = ", ".join(f"{r} {n}" for r, n in counts.dropped.items())
    return f"{counts.rows_read} read; dropped: {dropped or 'none'}"


def load_preference_splits(script_args, seed: int, **kwargs) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets ready for TRL's DPOTrainer; see `load_preference_data` for the options."""
    data = load_preference_data(script_args, seed, **kwargs)
    return data.train, data.eval

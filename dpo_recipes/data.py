"""Preference data: read the sources, normalise every format to what TRL's DPOTrainer takes, mark defective rows,
drop them (counted) or stop, carve a held-out split, and mix the sources.

Formats (per source, after the optional column mapping):
- standard: `prompt`, `chosen`, `rejected` strings;
- conversational: lists of `{role, content}` messages;
- implicit prompt: only `chosen` and `rejected`, full transcripts sharing the prompt. Text transcripts
  ("\\n\\nHuman: ... \\n\\nAssistant: ...", Anthropic HH) and message lists are both split into
  prompt = every turn before the final assistant turn, chosen / rejected = that final turn;
- scored pairs: any of the above plus `score_chosen` / `score_rejected` (UltraFeedback-binarized style, where the
  `prompt` column is a string and `chosen` / `rejected` hold the whole conversation). The scores, and a
  `reward_margin` column if the data has one, are checked and kept for MADPO (margins.py turns scores into margins).

Every row either comes out as a clean pair or is counted under one reason in `DEFECTS`; `data_stop_on` picks the
reasons that stop the run instead (with one line naming the file, row, field and problem).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import yaml
from datasets import Dataset, DatasetDict, Features, Json, List, Value, concatenate_datasets, load_dataset

from .errors import UserError
from .names import MARGIN_COLUMN
from .tokenization import tokenize_pairs

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# Why a row can be dropped, in the order they are checked (a row is counted under its first reason).
DEFECTS = (
    "missing_field",  # a field is null or absent in this row
    "wrong_type",  # a field is not text / a list of {role, content} messages / a number, or differs from the source
    "empty_field",  # an empty prompt, completion or final reply
    "bad_transcript",  # turns that do not end in an assistant reply after at least one prompt turn
    "prompt_mismatch",  # implicit prompt: chosen and rejected do not share the turns before the reply
    "identical_pair",  # chosen == rejected: no preference signal (the DPO gradient is zero)
    "duplicate_pair",  # the same (prompt, chosen, rejected) as an earlier row of the same split
    "prompt_too_long",  # the prompt alone has >= max_length tokens: TRL would drop it silently
)
DEFAULT_STOP_ON = ("missing_field", "wrong_type")  # structural problems: usually the wrong file or column
SCORE_COLUMNS = ("score_chosen", "score_rejected")  # default names; score_chosen_column / score_rejected_column
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
SOURCE_KEYS = ("name", "config", "split", "test_split", "columns", "weight", "fraction")
MESSAGES = List({"role": Value("string"), "content": Value("string")})
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_INTERNAL = ("_row", "_defect", "_field", "_detail", "_key")


# ----------------------------------------------------------------------------------------------------------------
# Configuration: the sources to read


@dataclass
class Source:
    """One dataset of the mixture. `columns` maps our column names to the data's (e.g. {prompt: question})."""

    name: str
    config: str | None = None
    split: str = "train"
    test_split: str | None = "test"
    columns: dict[str, str] = field(default_factory=dict)
    weight: float | None = None
    fraction: float | None = None


def _yaml_value(value, what: str):
    """Config values may come from YAML (already parsed) or from the command line (a YAML / JSON string)."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise UserError(f"config: {what} is not valid YAML: {' '.join(str(err).split())}") from None


def parse_columns(value, where: str) -> dict[str, str]:
    """A column mapping: {ours: theirs}, from a mapping or a string `prompt=question,chosen=good` / YAML."""
    if value in (None, "", {}):
        return {}
    if isinstance(value, str) and "=" in value and ":" not in value:
        value = dict(part.split("=", 1) for part in value.split(",") if part.strip())
    value = _yaml_value(value, where)
    if not isinstance(value, dict):
        raise UserError(f"config: {where} must map our column names to the data's, e.g. {{prompt: question}}")
    allowed = (*PAIR_COLUMNS, *SCORE_COLUMNS, MARGIN_COLUMN)
    mapping = {}
    for ours, theirs in value.items():
        ours = str(ours).strip()
        if ours not in allowed:
            raise UserError(f"config: {where}: unknown column '{ours}'; map one of {', '.join(allowed)}")
        if not isinstance(theirs, str) or not theirs.strip():
            raise UserError(f"config: {where}: '{ours}' must name a column of the data, got {theirs!r}")
        mapping[ours] = theirs.strip()
    return mapping


def _positive(value, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"config: {where}: {key} must be a number > 0, got {value!r}")
    return float(value)


def sources_from_args(script_args) -> list[Source]:
    """The sources to read: `dataset_mixture` entries, or the single `dataset_name` source."""
    mixture = _yaml_value(getattr(script_args, "dataset_mixture", None), "dataset_mixture")
    columns = parse_columns(getattr(script_args, "dataset_columns", None), "dataset_columns")
    defaults = dict(split=script_args.dataset_train_split, test_split=script_args.dataset_test_split)
    if not mixture:
        if not script_args.dataset_name:
            raise UserError("config: set dataset_name (a file, directory or hub id) or dataset_mixture")
        return [Source(script_args.dataset_name, script_args.dataset_config, columns=columns, **defaults)]
    if script_args.dataset_name:
        raise UserError("config: set either dataset_name or dataset_mixture, not both (on the command line, "
                        "--dataset_name '' clears the recipe's dataset_name)")
    if columns:
        raise UserError("config: with dataset_mixture, give each entry its own `columns` instead of dataset_columns")
    if not isinstance(mixture, list):
        raise UserError("config: dataset_mixture must be a list of sources, e.g. [{name: data/a.jsonl, weight: 2}]")
    sources = []
    for i, entry in enumerate(mixture, start=1):
        where = f"dataset_mixture entry {i}"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise UserError(f"config: {where} needs a `name` (a file, directory or hub id)")
        for key in entry:
            if key not in SOURCE_KEYS:
                close = difflib.get_close_matches(str(key), SOURCE_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UserError(f"config: {where}: unknown key '{key}'{hint}; keys: {', '.join(SOURCE_KEYS)}")
        weight = _positive(entry.get("weight"), "weight", where)
        fraction = _positive(entry.get("fraction"), "fraction", where)
        if weight is not None and fraction is not None:
            raise UserError(f"config: {where}: give weight or fraction, not both")
        sources.append(Source(
            name=entry["name"].strip(),
            config=entry.get("config"),
            split=str(entry.get("split", defaults["split"])),
            test_split=entry.get("test_split", defaults["test_split"]),
            columns=parse_columns(entry.get("columns"), f"{where} columns"),
            weight=weight,
            fraction=fraction,
        ))
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        raise UserError("config: dataset_mixture: give every entry a weight, or none (then use fractions)")
    return sources


def parse_stop_on(value) -> set[str]:
    """`data_stop_on`: the defect reasons that stop the run; `all` and `none` are shorthands."""
    value = list(DEFAULT_STOP_ON) if value is None else value
    value = [value] if isinstance(value, str) else list(value)
    if value in (["none"], []):
        return set()
    if value == ["all"]:
        return set(DEFECTS)
    for reason in value:
        if reason not in DEFECTS:
            close = difflib.get_close_matches(str(reason), DEFECTS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"config: data_stop_on: unknown reason '{reason}'{hint}; reasons: {', '.join(DEFECTS)}, "
                            "or all / none")
    return set(value)


def check_data_args(script_args) -> None:
    """The data options, checked with the rest of the config (before anything is loaded)."""
    sources_from_args(script_args)
    parse_stop_on(getattr(script_args, "data_stop_on", None))
    rows = getattr(script_args, "dataset_mixture_rows", None)
    if rows is not None and rows <= 0:
        raise UserError(f"config: dataset_mixture_rows must be > 0, got {rows}")


# ----------------------------------------------------------------------------------------------------------------
# Reading: files, directories, the hub; errors become one line naming the file and the line


def _builder(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    builder = FILE_BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise UserError(f"{path}: unsupported file type; use .jsonl, .json, .parquet or .csv (gzip-compressed too)")
    return builder


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix.lower() == ".gz" else open(path, encoding="utf-8")


def _diagnose_json(path: Path, fields: set[str] | None = None) -> str | None:
    """Why a JSON Lines / JSON file does not load, as one message naming the line: broken JSON, a line that is not
    an object, or a field (of `fields`, default all) whose type changes between rows. None if none."""
    first_seen: dict[str, tuple[str, int]] = {}  # field -> (type, line) where it was first seen

    def check_types(row, number: int, what: str) -> str | None:
        if not isinstance(row, dict):
            return f"{path}: {what} {number}: expected a JSON object, got {type(row).__name__}"
        for key, value in row.items():
            if value is None or (fields is not None and key not in fields):
                continue
            kind = _kind_of(value)
            seen = first_seen.setdefault(key, (kind, number))
            if seen[0] != kind:
                return f"{path}: {what} {number}: field '{key}' is {kind}, but {what} {seen[1]} has {seen[0]}"
        return None

    try:
        with _open_text(path) as f:
            if ".jsonl" in [s.lower() for s in path.suffixes]:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line.rstrip("\r\n"))
                    except json.JSONDecodeError as err:
                        return f"{path}: line {number}: not valid JSON ({err.msg} at column {err.colno})"
                    problem = check_types(row, number, "line")
                    if problem:
                        return problem
                return None
            try:
                rows = json.load(f)
            except json.JSONDecodeError as err:
                return f"{path}: line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
            for number, row in enumerate(rows if isinstance(rows, list) else [], start=1):
                problem = check_types(row, number, "row")
                if problem:
                    return problem
    except (OSError, UnicodeDecodeError, EOFError) as err:
        return f"{path}: cannot be read ({' '.join(str(err).split())})"
    return None


def _first_line(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:  # the root cause says what is wrong
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def read_source(source: Source) -> DatasetDict:
    """All splits of one source: a local file (train split only), a local directory, or a hub dataset."""
    path = Path(source.name)
    if path.is_file():
        builder = _builder(path)
        return _load_local(builder, {"data_files": {"train": str(path)}}, [path], source.name)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return _load_local(str(path), {}, files, source.name)
    if any(source.name.lower().endswith(ext + gz) for ext in FILE_BUILDERS for gz in ("", ".gz")):
        raise UserError(f"{source.name}: file not found")
    try:
        splits = load_dataset(source.name, source.config)
    except Exception as err:  # the hub raises many types (offline, not found, gated); all are user-fixable
        raise UserError(f"{source.name}: not a local file or directory, and loading it from the hub failed: "
                        f"{_first_line(err)}") from None
    return splits if isinstance(splits, DatasetDict) else DatasetDict({source.split: splits})


def _mixed_types(ds: Dataset, source: Source, label: str, columns: list[str]) -> None:
    """Stop on a used column whose type changes between rows. The JSON reader keeps such a column only in a lossy
    form (the text "4" and the number 4 come back alike), so its rows cannot be judged one by one."""
    mixed = [c for c in columns if isinstance(ds.features.get(c), Json)]
    if not mixed:
        return
    original = {ours: theirs for ours, theirs in source.columns.items()}
    names = {original.get(c, c) for c in mixed}
    path = Path(source.name)
    files = [path] if path.is_file() else sorted(path.rglob("*.json*")) if path.is_dir() else []
    for file in files:
        message = _diagnose_json(file, names)
        if message:
            raise UserError(message)
    raise UserError(f"{label}: column(s) {', '.join(sorted(names))} mix types between rows (text, lists, numbers); "
                    "every row needs the same type")


def _is_empty(path: Path) -> bool:
    """A file with no bytes, or a text file (JSON, JSON Lines, CSV, plain or gzip) with only blank lines."""
    if path.stat().st_size == 0:
        return True
    if not any(suffix.lower() in (".json", ".jsonl", ".csv") for suffix in path.suffixes):
        return False
    try:
        with _open_text(path) as f:
            return not any(line.strip() for line in f)
    except (OSError, UnicodeDecodeError, EOFError):
        return False


def _load_local(path_or_builder: str, kwargs: dict, files: list[Path], name: str) -> DatasetDict:
    try:
        return load_dataset(path_or_builder, **kwargs)
    except Exception as err:  # pyarrow, pandas and datasets errors: find the line ourselves when we can
        for file in files:
            if _is_empty(file):
                raise UserError(f"{file}: the file is empty (no rows)") from None
        for file in files:
            if file.suffix.lower() in (".jsonl", ".json", ".gz"):
                message = _diagnose_json(file)
                if message:
                    raise UserError(message) from None
        raise UserError(f"{name}: cannot be read as a dataset: {_first_line(err)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Normalising one row to TRL's format


class Defect(Exception):
    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


def _kind_of(value) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "messages"
    return "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def _messages(value, name: str) -> list[dict]:
    """A validated list of {role, content} messages (extra keys are left out: TRL reads role and content)."""
    if not value:
        raise Defect("empty_field", name, "is an empty list of messages")
    messages = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise Defect("wrong_type", name, f"message {i} has no role")
        if not isinstance(message.get("content"), str):
            raise Defect("wrong_type", name, f"message {i} content is not text")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def parse_transcript(text: str, name: str) -> list[dict]:
    """An Anthropic-HH style transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") as conversational turns."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise Defect("bad_transcript", name, "is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    return [{"role": HH_ROLES[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def _split_reply(turns: list[dict], name: str) -> tuple[list[dict], list[dict]]:
    """(prompt turns, [final assistant turn])."""
    if turns[-1]["role"] != "assistant":
        raise Defect("bad_transcript", name, f"ends with a '{turns[-1]['role']}' turn, not an assistant reply")
    if len(turns) < 2:
        raise Defect("bad_transcript", name, "has no prompt turns before the assistant reply")
    return turns[:-1], turns[-1:]


def normalise_pair(prompt, chosen, rejected, kind: str, prompt_kind: str | None) -> dict:
    """One row as TRL's standard or conversational pair; raises Defect.

    `kind` is the source's type of chosen / rejected ('text' or 'messages'), `prompt_kind` its type of prompt (None:
    no prompt column). A row whose values have another type than the source's is wrong_type."""
    fields = (("prompt", prompt),) if prompt_kind else ()
    fields += (("chosen", chosen), ("rejected", rejected))
    for name, value in fields:
        if value is None:
            raise Defect("missing_field", name, "is missing (null)")
    for name, value in fields:
        expected = kind if name != "prompt" else prompt_kind
        if _kind_of(value) != expected:
            wanted = "text" if expected == "text" else "a list of messages"
            raise Defect("wrong_type", name, f"is {_kind_of(value)}, expected {wanted} like the rest of the source")
    if kind == "text" and prompt_kind == "text":  # TRL standard
        for name, value in fields:
            if not value.strip():
                raise Defect("empty_field", name, "is empty")
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    else:  # conversational, possibly with the prompt inside the transcripts
        if kind == "text":
            chosen_turns, rejected_turns = parse_transcript(chosen, "chosen"), parse_transcript(rejected, "rejected")
        else:
            chosen_turns, rejected_turns = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if prompt_kind == "messages":  # conversational with an explicit prompt: TRL's form as is
            prompt_turns = _messages(prompt, "prompt")
            chosen_reply, rejected_reply = chosen_turns, rejected_turns
        elif prompt_kind == "text" and chosen_turns[0]["role"] == "assistant":  # text prompt, assistant-only replies
            if not prompt.strip():
                raise Defect("empty_field", "prompt", "is empty")
            prompt_turns = [{"role": "user", "content": prompt}]
            chosen_reply, rejected_reply = chosen_turns, rejected_turns
        else:  # implicit prompt: the turns before the final assistant reply (a text prompt column is not needed)
            prompt_turns, chosen_reply = _split_reply(chosen_turns, "chosen")
            rejected_prompt, rejected_reply = _split_reply(rejected_turns, "rejected")
            if rejected_prompt != prompt_turns:
                raise Defect("prompt_mismatch", "rejected", "does not share the prompt turns of chosen")
        for name, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
            if not reply[-1]["content"].strip():
                raise Defect("empty_field", name, "has an empty final reply")
        pair = {"prompt": prompt_turns, "chosen": chosen_reply, "rejected": rejected_reply}
    if pair["chosen"] == pair["rejected"]:
        raise Defect("identical_pair", "rejected", "is identical to chosen")
    return pair


def _score(value, name: str) -> float:
    if value is None:
        raise Defect("missing_field", name, "is missing (null)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Defect("wrong_type", name, f"is {value!r}, expected a finite number")
    return float(value)


def _pair_key(pair: dict) -> str:
    text = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _normalise_batch(batch: dict, indices: list[int], kind: str, prompt_kind: str | None, numbers: list[str]) -> dict:
    """Batched map: TRL-ready pair columns, the numeric columns kept (scores, margins), the defect (if any) and a
    key for finding duplicates."""
    empty = "" if kind == "text" and prompt_kind == "text" else []
    out = {name: [] for name in (*PAIR_COLUMNS, *numbers, *_INTERNAL)}
    prompts = batch["prompt"] if prompt_kind else [None] * len(indices)
    for i, index in enumerate(indices):
        scores = [0.0] * len(numbers)
        try:
            scores = [_score(batch[name][i], name) for name in numbers]
            pair = normalise_pair(prompts[i], batch["chosen"][i], batch["rejected"][i], kind, prompt_kind)
            defect = ("", "", "")
            key = _pair_key(pair)
        except Defect as d:
            pair = {name: empty for name in PAIR_COLUMNS}
            defect, key = (d.reason, d.field, d.detail), ""
        for name in PAIR_COLUMNS:
            out[name].append(pair[name])
        out["_row"].append(index + 1)
        out["_defect"].append(defect[0])
        out["_field"].append(defect[1])
        out["_detail"].append(defect[2])
        out["_key"].append(key)
        for name, score in zip(numbers, scores):
            out[name].append(score)
    return out


def _column_kind(ds: Dataset, column: str) -> str | None:
    """'text' or 'messages': the type of the column's first such value (rows of another type are wrong_type)."""
    for value in ds.select_columns([column]).to_iterable_dataset():
        kind = _kind_of(value[column])
        if kind in ("text", "messages"):
            return kind
    return None


def normalise(ds: Dataset, source: Source, label: str, num_proc: int | None,
              score_names: tuple[str, str] = SCORE_COLUMNS) -> tuple[Dataset, str]:
    """The source split in TRL's format with defect columns, and the name of the format it was read as."""
    ds = _map_columns(ds, source, label, score_names)
    if len(ds) == 0:
        raise UserError(f"{label}: the split has no rows")
    has_prompt = "prompt" in ds.column_names
    scored = all(name in ds.column_names for name in score_names)
    numbers = [*(score_names if scored else ()), *([MARGIN_COLUMN] if MARGIN_COLUMN in ds.column_names else [])]
    _mixed_types(ds, source, label, [c for c in (*PAIR_COLUMNS, *numbers) if c in ds.column_names])
    kind = _column_kind(ds, "chosen")
    if kind is None:
        raise UserError(f"{label}: column 'chosen' holds neither text nor lists of messages in any row")
    prompt_kind = (_column_kind(ds, "prompt") or kind) if has_prompt else None
    if kind == "text" and prompt_kind == "messages":
        raise UserError(f"{label}: column 'prompt' holds messages but 'chosen' holds text; use messages for both, "
                        "or text for both")
    conversational = not (kind == "text" and prompt_kind == "text")
    pair_type = MESSAGES if conversational else Value("string")
    features = {name: pair_type for name in PAIR_COLUMNS}
    features.update(_row=Value("int64"), _defect=Value("string"), _field=Value("string"), _detail=Value("string"),
                    _key=Value("string"))
    features.update({name: Value("float64") for name in numbers})
    ds = ds.map(
        _normalise_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"kind": kind, "prompt_kind": prompt_kind, "numbers": numbers},
        remove_columns=ds.column_names,
        features=Features(features),
        num_proc=_num_proc(num_proc, len(ds)),
        desc=f"Normalising {label}",
    )
    return ds, _format_name(kind, prompt_kind, scored)


def _map_columns(ds: Dataset, source: Source, label: str, score_names: tuple[str, str]) -> Dataset:
    """Rename the source's columns to ours; score columns keep the names score_chosen_column / ..._rejected_column."""
    for ours, theirs in source.columns.items():
        if theirs not in ds.column_names:
            raise UserError(f"{label}: columns maps '{ours}' to '{theirs}', which is not a column "
                            f"(columns: {', '.join(ds.column_names)})")
    targets = {theirs: dict(zip(SCORE_COLUMNS, score_names)).get(ours, ours) for ours, theirs in source.columns.items()}
    if targets:
        replaced = [t for t in targets.values() if t in ds.column_names and t not in targets]
        ds = ds.remove_columns(replaced).rename_columns({k: v for k, v in targets.items() if k != v})
    for name in ("chosen", "rejected"):
        if name not in ds.column_names:
            raise UserError(f"{label}: no column '{name}' (columns: {', '.join(ds.column_names)}); name it with "
                            f"dataset_columns, e.g. {{{name}: <column>}}")
    present = [name for name in score_names if name in ds.column_names]
    if len(present) == 1:
        raise UserError(f"{label}: column '{present[0]}' without its partner; scored pairs need both "
                        f"{' and '.join(score_names)}")
    return ds


def _num_proc(num_proc: int | None, rows: int) -> int | None:
    if not num_proc or num_proc <= 1:
        return None
    return max(1, min(num_proc, rows // 1000 or 1))  # a worker per thousand rows at least: start-up costs


# ----------------------------------------------------------------------------------------------------------------
# Token lengths, computed the way TRL's DPOTrainer tokenizes (so its silent prompt filter finds nothing left)


def _token_lengths_batch(batch: dict, tokenizer, conversational: bool) -> dict:
    valid = [i for i, defect in enumerate(batch["_defect"]) if not defect]
    lengths = {"_prompt_len": [0] * len(batch["_defect"]), "_chosen_len": [0] * len(batch["_defect"]),
               "_rejected_len": [0] * len(batch["_defect"])}
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
        num_proc=_num_proc(num_proc, len(ds)),
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

    def as_dict(self) -> dict:
        return {"split": self.split, "rows_read": self.rows_read, "kept": self.kept,
                "dropped": {r: self.dropped[r] for r in DEFECTS if self.dropped[r]}, "first_dropped": self.examples}


@dataclass
class PreferenceData:
    train: Dataset
    eval: Dataset
    conversational: bool
    extra_columns: list[str]  # numeric columns kept beside the pair (scores, reward_margin)
    sources: list[dict]  # per source: name, format, counts per split, held-out origin, rows in the mixture
    lengths: dict  # split -> {"prompt": array, "chosen": array, "rejected": array} (token counts; empty w/o tokenizer)
    eval_pairs_in_train: int
    settings: dict
    train_origins: list[tuple[dict, int]] = field(default_factory=list)  # per train row: (its source part, row)

    def train_row_origin(self, index: int) -> str:
        """Where row `index` of `train` came from: 'file: line N' (JSON Lines) or 'source: row N'."""
        part, row = self.train_origins[index]
        return _where(part, row)


def _format_name(kind: str, prompt_kind: str | None, scored: bool) -> str:
    if kind == "text":
        name = "standard" if prompt_kind else "implicit prompt (Human/Assistant transcripts)"
    elif prompt_kind == "text":
        name = "text prompt + message lists"
    else:
        name = "conversational" if prompt_kind else "implicit prompt (message lists)"
    return name + (" + scores" if scored else "")


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
        keep = []
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
                if defect not in counts.examples:  # where the first one is, for the audit
                    counts.examples[defect] = f"{_where(part, row)}: field '{field_name}' {detail}"
                continue
            seen[key] = (part, row)
            keep.append(i)
        counts.rows_read, counts.kept = len(ds), len(keep)
        part["ds"] = ds if len(keep) == len(ds) else ds.select(keep)


def _where(part: dict, row: int) -> str:
    """'file: line N' for JSON Lines files (blank lines skipped by the reader), else 'source: row N'."""
    path = Path(part["source"].name)
    if path.is_file() and ".jsonl" in [s.lower() for s in path.suffixes]:
        seen = 0
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                seen += bool(line.strip())
                if seen == row:
                    return f"{path}: line {number}"
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
        splits = read_source(source)
        if source.split not in splits:
            raise UserError(f"{source.name}: no split '{source.split}' (has {', '.join(sorted(splits))})")
        roles = [("train", source.split)]
        if source.test_split and source.test_split in splits and source.test_split != source.split:
            roles.append(("eval", source.test_split))
        for role, split in roles:
            label = source.name if len(splits) == 1 else f"{source.name} (split {split})"
            ds, format_name = normalise(splits[split], source, label, num_proc, score_names)
            conversational = ds.features["chosen"] == MESSAGES
            forms.add(conversational)
            if tokenizer is not None:
                ds = add_token_lengths(ds, tokenizer, conversational, label, num_proc)
            parts.append({"source": source, "index": index, "role": role, "label": label, "ds": ds,
                          "counts": SplitCounts(split), "format": format_name,
                          "numbers": [c for c in ds.column_names if ds.features[c] == Value("float64")]})
    if len(forms) > 1:
        text = [p["label"] for p in parts if p["format"].startswith("standard")]
        raise UserError(f"{text[0]}: standard (text) pairs cannot be mixed with conversational sources; "
                        "convert one of them")
    conversational = forms.pop()
    # Scores and margins are kept only when every source has them: a mixture cannot hold half-empty columns.
    extra_columns = [c for c in parts[0]["numbers"] if all(c in p["numbers"] for p in parts)]
    left_out = sorted({c for p in parts for c in p["numbers"]} - set(extra_columns))
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
    settings = {"max_length": max_length, "truncation_mode": truncation_mode, "seed": seed,
                "stop_on": sorted(stop_on), "eval_fraction": script_args.eval_fraction,
                "columns_left_out": left_out}
    return PreferenceData(train, eval_ds, conversational, extra_columns, reports, lengths, eval_pairs_in_train,
                          settings, train_origins)


def _dropped_text(counts: SplitCounts) -> str:
    dropped = ", ".join(f"{r} {n}" for r, n in counts.dropped.items())
    return f"{counts.rows_read} read; dropped: {dropped or 'none'}"


def load_preference_splits(script_args, seed: int, **kwargs) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets ready for TRL's DPOTrainer; see `load_preference_data` for the options."""
    data = load_preference_data(script_args, seed, **kwargs)
    return data.train, data.eval

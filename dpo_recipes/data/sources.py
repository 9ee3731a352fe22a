"""The configured sources of preference data: `dataset_name` or `dataset_mixture` entries (file, directory or hub
id, splits, column mapping, weight or fraction), and `data_stop_on`, the row defects that stop a run. Checked with the
rest of the config, before anything is read (data/files.py reads the sources, data/preparation.py prepares them).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dpo_recipes.errors import UserError
from dpo_recipes.names import MARGIN_COLUMN, PAIR_COLUMNS, SCORE_COLUMNS

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
SOURCE_KEYS = ("name", "config", "split", "test_split", "columns", "weight", "fraction")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # gzip-compressed too


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


def missing_file(name: str) -> bool:
    """A source named as a data file (by its extension) that does not exist: not a hub id, a missing file."""
    named_as_file = any(name.lower().endswith(ext + gz) for ext in FILE_BUILDERS for gz in ("", ".gz"))
    return named_as_file and not Path(name).exists()


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
    for source in sources_from_args(script_args):
        if missing_file(source.name):  # before a model is resolved, loaded or converted
            raise UserError(f"{source.name}: file not found")
    parse_stop_on(getattr(script_args, "data_stop_on", None))
    rows = getattr(script_args, "dataset_mixture_rows", None)
    if rows is not None and rows <= 0:
        raise UserError(f"config: dataset_mixture_rows must be > 0, got {rows}")

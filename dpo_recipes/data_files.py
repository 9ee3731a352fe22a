"""Reading a source: a local file or directory (JSON Lines, JSON, Parquet, CSV, gzip-compressed too) or a hub
dataset. What does not load becomes one line naming the file and the line: broken JSON, a line that is not an object,
a field whose type changes between rows, an empty file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from datasets import Dataset, DatasetDict, Json, load_dataset

from .data_sources import FILE_BUILDERS, Source, missing_file
from .errors import UserError


def _builder(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    builder = FILE_BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise UserError(f"{path}: unsupported file type; use .jsonl, .json, .parquet or .csv (gzip-compressed too)")
    return builder


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix.lower() == ".gz" else open(path, encoding="utf-8")


def kind_of(value) -> str:
    """A value's type as the one-line errors name it: text, messages (a list), a number, or the Python type."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "messages"
    return "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


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
            kind = kind_of(value)
            seen = first_seen.setdefault(key, (kind, number))
            if seen[0] != kind:
                return f"{path}: {what} {number}: field '{key}' is {kind}, but {what} {seen[1]} has {seen[0]}"
        return None

    try:
        with open_text(path) as f:
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
    if missing_file(source.name):
        raise UserError(f"{source.name}: file not found")
    try:
        splits = load_dataset(source.name, source.config)
    except Exception as err:  # the hub raises many types (offline, not found, gated); all are user-fixable
        raise UserError(f"{source.name}: not a local file or directory, and loading it from the hub failed: "
                        f"{_first_line(err)}") from None
    return splits if isinstance(splits, DatasetDict) else DatasetDict({source.split: splits})


def mixed_types(ds: Dataset, source: Source, label: str, columns: list[str]) -> None:
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
        with open_text(path) as f:
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

"""Reading a source: a local file or directory (JSON Lines, JSON, Parquet, CSV, gzip-compressed too) or a hub
dataset. What does not load becomes one line naming the file and the line: broken JSON, a line that is not an object,
a field whose type changes between rows, an empty file, a byte that is not UTF-8, a CSV whose rows outgrow its header.

A directory is read whole: every data file goes to the split its name gives (datasets' own naming rules: train*,
test*, validation*, ...), or, when no name gives a split, all of them to `train`. A data file that no split would
read, or a split that mixes file types, stops the run with one line naming the files. Each split remembers its files
and their rows, for the audit.
"""

from __future__ import annotations

import codecs
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, Json, concatenate_datasets, load_dataset
from datasets.data_files import DataFilesDict, get_data_patterns

from .sources import FILE_BUILDERS, Source, missing_file
from dpo_recipes.errors import UserError

CSV_DELIMITERS = (",", ";", "\t", "|")
NOT_DATA = (".md", ".rst", ".txt", ".license", ".yaml", ".yml", ".py", ".tmp", ".lock", ".log")  # docs, scripts, partial writes


@dataclass
class SourceRead:
    """A source's splits, the files each split was read from with their rows (none for a hub dataset), and the
    files of a directory that hold no data (documentation), listed in the audit."""

    splits: DatasetDict
    files: dict[str, list[dict]] = field(default_factory=dict)  # split -> [{file, rows, reader}]
    not_data: list[str] = field(default_factory=list)


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


def read_source(source: Source) -> SourceRead:
    """All splits of one source: a local file (train split only), a local directory, or a hub dataset."""
    path = Path(source.name)
    if path.is_file():
        ds, entry = _read_file(path)
        return SourceRead(DatasetDict({"train": ds}), {"train": [entry]})
    if path.is_dir():
        return _read_directory(path)
    if missing_file(source.name):
        raise UserError(f"{source.name}: file not found")
    try:
        splits = load_dataset(source.name, source.config)
    except Exception as err:  # the hub raises many types (offline, not found, gated); all are user-fixable
        raise UserError(f"{source.name}: not a local file or directory, and loading it from the hub failed: "
                        f"{_first_line(err)}") from None
    return SourceRead(splits if isinstance(splits, DatasetDict) else DatasetDict({source.split: splits}))


def _split_files(path: Path) -> tuple[dict[str, list[Path]], list[Path], list[Path]]:
    """A directory's data files by split (datasets' naming rules), the data files no split reads, the others."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                             p.relative_to(path).parts))
    data = [p for p in files if _is_data_file(p)]
    not_data = [p for p in files if p not in data]
    unsupported = [p for p in not_data if p.suffix.lower() not in NOT_DATA and p.suffix]
    if unsupported:
        raise UserError(f"{path}: {_names(unsupported, path)}: unsupported file type; data files are .jsonl, .json, "
                        ".parquet or .csv (gzip-compressed too); move other files out of the data folder")
    if not data:
        raise UserError(f"{path}: no data files (.jsonl, .json, .parquet, .csv, gzip-compressed too)")
    try:
        patterns = get_data_patterns(str(path))
        by_split = {str(split): sorted(Path(f) for f in found)
                    for split, found in DataFilesDict.from_patterns(patterns, base_path=str(path)).items()}
    except FileNotFoundError:  # datasets: no file matches any pattern
        by_split = {}
    known = {d.resolve(): d for d in data}  # datasets returns absolute paths; keep them as the user gave the folder
    by_split = {split: [known[f.resolve()] for f in found if f.resolve() in known] for split, found in by_split.items()}
    read = {f.resolve() for found in by_split.values() for f in found}
    unread = [p for p in data if p.resolve() not in read]
    return {split: found for split, found in by_split.items() if found}, unread, not_data


def _is_data_file(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return bool(suffixes) and suffixes[-1] in FILE_BUILDERS


def _names(files: list[Path], base: Path) -> str:
    return ", ".join(str(f.relative_to(base)) for f in files)


def _read_directory(path: Path) -> SourceRead:
    by_split, unread, not_data = _split_files(path)
    if unread:
        named = "; ".join(f"{_names(found, path)} as split {split}" for split, found in by_split.items())
        raise UserError(f"{path}: {_names(unread, path)} would not be read: the name gives no split ({named}); "
                        "name each file after its split (train.jsonl, train-more.jsonl, test.jsonl, ...) or list "
                        "the files as sources of dataset_mixture")
    splits, files = {}, {}
    for split, found in by_split.items():
        kinds = {_builder(f) for f in found}
        if len(kinds) > 1:
            which = ", ".join(f"{f.relative_to(path)} ({_builder(f).upper()})" for f in found)
            raise UserError(f"{path}: split {split} mixes file types: {which}; convert them to one type, or list "
                            "each file as its own source in dataset_mixture")
        read = [_read_file(f) for f in found]
        files[split] = [entry for _, entry in read]
        splits[split] = _concatenate([ds for ds, _ in read], found, path)
    return SourceRead(DatasetDict(splits), files, [str(f) for f in not_data])


def _concatenate(parts: list[Dataset], files: list[Path], base: Path) -> Dataset:
    if len(parts) == 1:
        return parts[0]
    columns = {c for ds in parts for c in ds.column_names}
    for ds, file in zip(parts, files):
        for other, other_file in zip(parts, files):
            for column in set(ds.column_names) & set(other.column_names):
                if ds.features[column] != other.features[column]:
                    raise UserError(f"{base}: column '{column}' has another type in {file.relative_to(base)} than in "
                                    f"{other_file.relative_to(base)}; every file of a split needs the same columns "
                                    "and types")
    aligned = []
    for ds in parts:  # a column that only some files have (tools, say): null in the others' rows
        for column in sorted(columns - set(ds.column_names)):
            feature = next(p.features[column] for p in parts if column in p.column_names)
            ds = ds.add_column(column, [None] * len(ds), feature=feature)
        aligned.append(ds.select_columns(sorted(columns)))
    return concatenate_datasets(aligned)


def check_utf8(path: Path) -> None:
    """Stop on the first byte that is not UTF-8, naming its offset and line (a spreadsheet's Latin-1 export)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        _decode_all(opener, path, decoder)
    except (OSError, EOFError) as err:  # a .gz file that is not gzip, a truncated archive, a read error
        raise UserError(f"{path}: cannot be read ({' '.join(str(err).split())})") from None


def _decode_all(opener, path: Path, decoder) -> None:
    offset, newlines = 0, 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                at = offset + err.start
                line = newlines + chunk[: err.start].count(b"\n") + 1
                plain = path.with_suffix("") if path.suffix.lower() == ".gz" else path
                fix = (f"iconv -f cp1252 -t utf-8 {plain} > {plain.with_stem(plain.stem + '-utf8')}"
                       if plain is path else "gunzip, then iconv -f cp1252 -t utf-8, then gzip")
                raise UserError(f"{path}: byte {at} (line {line}) is 0x{chunk[err.start]:02x}, not UTF-8; the file "
                                f"is probably Latin-1 / Windows-1252: convert it ({fix})") from None
            offset += len(chunk)
            newlines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UserError(f"{path}: byte {offset} (the end) cuts a UTF-8 character short; the file is truncated or "
                        "not UTF-8") from None


def csv_delimiter(path: Path) -> str:
    """The separator of a CSV's header line: the candidate it holds most of (a spreadsheet may write ';')."""
    with open_text(path) as f:
        header = f.readline()
    counts = {d: header.count(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_file(path: Path) -> tuple[Dataset, dict]:
    """One data file as a dataset, and its entry for the audit: file, rows, reader (with a CSV's delimiter)."""
    builder = _builder(path)
    kwargs = {"data_files": {"train": str(path)}}
    reader = builder
    if builder in ("json", "csv") and path.stat().st_size:
        check_utf8(path)
    if builder == "csv" and path.stat().st_size:
        delimiter = csv_delimiter(path)
        kwargs["delimiter"] = delimiter
        reader = f"csv (delimiter {delimiter!r})"
    ds = _load_local(builder, kwargs, [path], str(path))["train"]
    if builder == "csv":
        spill = [c for c in ds.column_names if c.startswith("__index_level_")]
        if spill:
            named = [c for c in ds.column_names if c not in spill]
            raise UserError(f"{path}: some rows have more fields than the header ({len(named)} named columns: "
                            f"{', '.join(named)}); quote fields that contain the delimiter")
        if len(ds.column_names) == 1:
            raise UserError(f"{path}: the header has one column ({ds.column_names[0]!r}) and none of the delimiters "
                            f"{', '.join(repr(d) for d in CSV_DELIMITERS)}; preference pairs need prompt, chosen "
                            "and rejected columns, separated by commas")
    return ds, {"file": str(path), "rows": len(ds), "reader": reader}


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

"""Preference data: load a dataset from a file, a directory or the hub, and split off a held-out set."""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset

from .errors import UserError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_preference_splits(script_args, seed: int):
    """(train, eval) datasets. A held-out split is carved with `seed` when the source has none."""
    name = script_args.dataset_name
    if not name:
        raise UserError("config: dataset_name is not set")
    path = Path(name)
    if path.is_file():
        suffix = "".join(s for s in path.suffixes if s != ".gz")[-8:]
        builder = next((b for ext, b in FILE_BUILDERS.items() if suffix.endswith(ext)), None)
        if builder is None:
            raise UserError(f"{path}: unsupported file type; use .jsonl, .json, .parquet or .csv")
        splits = load_dataset(builder, data_files={"train": str(path)})
    elif path.is_dir() or "/" in name:
        splits = load_dataset(name, script_args.dataset_config)
    else:
        raise UserError(f"dataset_name: {name!r} is neither a local file or directory nor a hub id")
    if not isinstance(splits, DatasetDict):
        splits = DatasetDict({"train": splits})
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
    if train_split not in splits:
        raise UserError(f"{name}: no split '{train_split}' (has {sorted(splits)})")
    if test_split in splits:
        return splits[train_split], splits[test_split]
    carved = splits[train_split].train_test_split(test_size=script_args.eval_fraction, seed=seed)
    return carved["train"], carved["test"]

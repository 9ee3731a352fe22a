"""Reading a source (dpo_recipes/data_files.py): every file type, gzip, directories with named splits, the hub; and
what does not load stops with one line naming the file, the line and the field."""

import pytest

from tests.helpers import GOOD_PAIR, error_of, jsonl, text_pairs, write_rows
from dpo_recipes.config import ScriptArguments
from dpo_recipes.data import load_preference_data
from dpo_recipes.errors import UserError


def load(seed=0, **kwargs):
    return load_preference_data(ScriptArguments(**kwargs), seed=seed)


def all_prompts(data):
    return sorted([*data.train["prompt"], *data.eval["prompt"]])


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.parquet", "d.csv", "d.jsonl.gz", "d.json.gz", "d.csv.gz"])
def test_local_file_types(tmp_path, name):
    rows = text_pairs(40)
    data = load(dataset_name=str(write_rows(tmp_path / name, rows)))
    assert all_prompts(data) == sorted(r["prompt"] for r in rows)
    assert len(data.eval) == 2  # no split in a file: 5% carved


def test_directory_with_named_splits(tmp_path):
    write_rows(tmp_path / "train.jsonl", text_pairs(30, "tr"))
    write_rows(tmp_path / "validation.jsonl", text_pairs(7, "va"))
    data = load(dataset_name=str(tmp_path), dataset_test_split="validation")
    assert len(data.train) == 30 and len(data.eval) == 7
    assert all(p.startswith("va") for p in data.eval["prompt"])
    assert data.sources[0]["held_out"] == "split 'validation'"


def test_named_train_split_and_a_missing_one(tmp_path):
    write_rows(tmp_path / "train.jsonl", text_pairs(30, "tr"))
    write_rows(tmp_path / "test.jsonl", text_pairs(5, "te"))
    data = load(dataset_name=str(tmp_path), dataset_train_split="test", dataset_test_split="none")
    assert len(data.train) + len(data.eval) == 5
    with pytest.raises(UserError, match=r"no split 'dev' \(has test, train\)"):
        load(dataset_name=str(tmp_path), dataset_train_split="dev")


def test_hub_id_that_cannot_be_loaded_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load(dataset_name="no-such-org/no-such-dataset")
    message = str(err.value)
    assert message.startswith("no-such-org/no-such-dataset: not a local file or directory, and loading it from the "
                              "hub failed: ")
    assert "\n" not in message


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(UserError, match=r"^nope/train.jsonl: file not found$"):
        load(dataset_name="nope/train.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        load(dataset_name=str(tmp_path / "d.txt"))


# ----------------------------------------------------------------------------------------------------------------
# Files that do not load: one line naming the file, the line and the field


def test_broken_json_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD_PAIR, GOOD_PAIR, '{"prompt": "x", "chosen": "y" "rejected": "z"}')
    assert error_of(path) == f"{path}: line 3: not valid JSON (Expecting ',' delimiter at column 31)"


def test_broken_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a",, }\n]\n')
    assert error_of(path) == f"{path}: line 3: not valid JSON (Expecting property name enclosed in double quotes at " \
                             "column 18)"


def test_json_line_that_is_not_an_object(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD_PAIR, '["a", "b", "c"]')
    assert error_of(path) == f"{path}: line 2: expected a JSON object, got list"


def test_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_text('{"prompt": "a"}\n')
    assert error_of(path).startswith(f"{path}: cannot be read (Not a gzipped file")


@pytest.mark.parametrize("blank_line", [False, True])  # with a blank line pyarrow refuses the file outright
def test_a_column_that_changes_type_names_the_line_and_field(tmp_path, blank_line):
    # The reader would keep this column only in a lossy form (the text "4" and the number 4 alike): always stop.
    lines = [GOOD_PAIR, *([""] if blank_line else []), {**GOOD_PAIR, "prompt": "b", "chosen": 4}]
    path = jsonl(tmp_path / "d.jsonl", *lines)
    expected = f"{path}: line {len(lines)}: field 'chosen' is a number, but line 1 has text"
    assert error_of(path) == expected
    assert error_of(path, data_stop_on=["none"]) == expected


def test_wrong_type_score(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {**GOOD_PAIR, "score_chosen": 9, "score_rejected": 1},
                 {**GOOD_PAIR, "prompt": "b", "score_chosen": "high", "score_rejected": 1})
    assert error_of(path) == f"{path}: line 2: field 'score_chosen' is text, but line 1 has a number"


def test_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("")
    assert error_of(path) == f"{path}: the file is empty (no rows)"
    path.write_text("\n  \n")
    assert error_of(path) == f"{path}: the file is empty (no rows)"

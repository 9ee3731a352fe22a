"""Bad input stops with one line naming the file, the line or row, the field and the problem; through a recipe it
exits 2 with no traceback, before any model is loaded."""

import gzip
import json
import sys

import pytest

from tests.helpers import REPO, run
from dpo_recipes.config import ScriptArguments
from dpo_recipes.data import load_preference_data
from dpo_recipes.errors import UserError

GOOD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


def jsonl(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        load_preference_data(ScriptArguments(dataset_name=str(path), **kwargs), seed=0)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_broken_json_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD, GOOD, '{"prompt": "x", "chosen": "y" "rejected": "z"}')
    assert error_of(path) == f"{path}: line 3: not valid JSON (Expecting ',' delimiter at column 31)"


def test_broken_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a",, }\n]\n')
    assert error_of(path) == f"{path}: line 3: not valid JSON (Expecting property name enclosed in double quotes at " \
                             "column 18)"


def test_json_line_that_is_not_an_object(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD, '["a", "b", "c"]')
    assert error_of(path) == f"{path}: line 2: expected a JSON object, got list"


def test_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_text('{"prompt": "a"}\n')
    assert error_of(path).startswith(f"{path}: cannot be read (Not a gzipped file")


def test_missing_column(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {"prompt": "a", "chosen": "b"})
    assert error_of(path) == (f"{path}: no column 'rejected' (columns: prompt, chosen); name it with dataset_columns, "
                              "e.g. {rejected: <column>}")


def test_column_mapping_to_a_column_that_is_not_there(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD)
    assert error_of(path, dataset_columns="prompt=question") == (
        f"{path}: columns maps 'prompt' to 'question', which is not a column (columns: prompt, chosen, rejected)")


@pytest.mark.parametrize("blank_line", [False, True])  # with a blank line pyarrow refuses the file outright
def test_a_column_that_changes_type_names_the_line_and_field(tmp_path, blank_line):
    # The reader would keep this column only in a lossy form (the text "4" and the number 4 alike): always stop.
    lines = [GOOD, *([""] if blank_line else []), {**GOOD, "prompt": "b", "chosen": 4}]
    path = jsonl(tmp_path / "d.jsonl", *lines)
    expected = f"{path}: line {len(lines)}: field 'chosen' is a number, but line 1 has text"
    assert error_of(path) == expected
    assert error_of(path, data_stop_on=["none"]) == expected


def test_a_row_of_the_wrong_type_stops_by_default_naming_line_and_field(tmp_path):
    message = {"role": "assistant", "content": "fine"}
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [message],
           "rejected": [{**message, "content": "x"}]}
    path = jsonl(tmp_path / "d.jsonl", row, {**row, "rejected": [{"role": "assistant"}]})
    assert error_of(path) == (f"{path}: line 2: field 'rejected' message 1 content is not text (wrong_type; listed in "
                              "data_stop_on, remove it to drop and count such rows)")


def test_missing_field_stops_by_default(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD, {"prompt": "b", "chosen": "c"}, {**GOOD, "prompt": "c"})
    assert error_of(path).startswith(f"{path}: line 2: field 'rejected' is missing (null) (missing_field;")


def test_wrong_type_score(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {**GOOD, "score_chosen": 9, "score_rejected": 1},
                 {**GOOD, "prompt": "b", "score_chosen": "high", "score_rejected": 1})
    assert error_of(path) == f"{path}: line 2: field 'score_chosen' is text, but line 1 has a number"


def test_null_score_is_a_missing_field(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {**GOOD, "score_chosen": 9, "score_rejected": 1},
                 {**GOOD, "prompt": "b", "score_chosen": None, "score_rejected": 1})
    assert error_of(path).startswith(f"{path}: line 2: field 'score_chosen' is missing (null) (missing_field;")


def test_score_column_without_its_partner(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {**GOOD, "score_chosen": 9})
    assert error_of(path) == (f"{path}: column 'score_chosen' without its partner; scored pairs need both "
                              "score_chosen and score_rejected")


def test_dataset_empty_after_filtering(tmp_path):
    same = {"prompt": "p", "chosen": "same", "rejected": "same"}
    path = jsonl(tmp_path / "d.jsonl", same, {**same, "prompt": "q"}, {**GOOD, "chosen": " "})
    assert error_of(path) == f"{path}: no rows left after filtering (3 read; dropped: identical_pair 2, empty_field 1)"


def test_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("")
    assert error_of(path) == f"{path}: the file is empty (no rows)"
    path.write_text("\n  \n")
    assert error_of(path) == f"{path}: the file is empty (no rows)"


def test_too_few_clean_rows_to_carve_a_held_out_set(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD, {**GOOD, "chosen": "5"})
    assert error_of(path) == f"{path}: 1 clean row(s) cannot be split into train and a held-out set"


def _bad_files(tmp):
    broken = jsonl(tmp / "broken.jsonl", GOOD, '{"prompt": "x", "chosen":')
    missing = jsonl(tmp / "missing.jsonl", {"prompt": "a", "chosen": "b"})
    wrong = jsonl(tmp / "wrong.jsonl", GOOD, {**GOOD, "rejected": ["not", "text"]})
    empty = jsonl(tmp / "empty.jsonl", {"prompt": "p", "chosen": "x", "rejected": "x"})
    return {
        "broken JSON line": (broken, f"{broken}: line 2: not valid JSON (Expecting value at column 26)"),
        "missing column": (missing, f"{missing}: no column 'rejected' (columns: prompt, chosen); name it with "
                                    "dataset_columns, e.g. {rejected: <column>}"),
        "wrong type": (wrong, f"{wrong}: line 2: field 'rejected' is messages, but line 1 has text"),
        "empty after filtering": (empty, f"{empty}: no rows left after filtering (1 read; dropped: identical_pair 1)"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["broken JSON line", "missing column", "wrong type", "empty after filtering"])
def test_recipe_exits_2_with_one_line_before_loading_the_model(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", str(REPO / "recipes/demo-cpu/config.yaml"),
                "--dataset_name", str(path), "--output_dir", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr  # the data is checked before the model loads

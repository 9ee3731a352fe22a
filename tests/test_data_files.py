"""Reading a source (dpo_recipes/data/files.py): every file type, gzip, directories with named splits, the hub; and
what does not load stops with one line naming the file, the line and the field."""

import gzip

import pytest

from tests.helpers import GOOD_PAIR, error_of, jsonl, text_pairs, write_rows
from dpo_recipes.train.config import ScriptArguments
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.errors import UserError
from dpo_recipes.report.audit import build_report, format_table


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


def test_a_folder_is_read_whole_with_rows_per_file(tmp_path):
    # No file name gives a split: every file is train, and the audit counts each file's rows.
    write_rows(tmp_path / "a.jsonl", text_pairs(30, "a"))
    write_rows(tmp_path / "b.jsonl", text_pairs(20, "b") + text_pairs(2, "b"))  # two duplicates in b
    (tmp_path / "README.md").write_text("about the data\n")
    data = load(dataset_name=str(tmp_path))
    assert len(data.train) + len(data.eval) == 50
    files = data.sources[0]["train"]["files"]
    assert [(f["file"], f["rows_read"], f["kept"], f["dropped"]) for f in files] == [
        (str(tmp_path / "a.jsonl"), 30, 30, {}), (str(tmp_path / "b.jsonl"), 22, 20, {"duplicate_pair": 2})]
    assert data.sources[0]["files_not_data"] == [str(tmp_path / "README.md")]


def test_a_file_no_split_would_read_is_refused_by_name(tmp_path):
    # datasets alone reads train.jsonl as the train split and skips the other file without a word.
    write_rows(tmp_path / "train.jsonl", text_pairs(48, "t"))
    write_rows(tmp_path / "more_pairs_2025.jsonl", text_pairs(48, "m"))
    message = error_of(tmp_path)
    assert message.startswith(f"{tmp_path}: more_pairs_2025.jsonl would not be read: the name gives no split "
                              "(train.jsonl as split train)")


def test_files_named_after_their_split_are_all_read(tmp_path):
    write_rows(tmp_path / "train.jsonl", text_pairs(20, "t"))
    write_rows(tmp_path / "train-more.jsonl", text_pairs(10, "m"))
    write_rows(tmp_path / "test.jsonl", text_pairs(4, "e"))
    data = load(dataset_name=str(tmp_path))
    assert len(data.train) == 30 and len(data.eval) == 4
    assert sorted(f["rows_read"] for f in data.sources[0]["train"]["files"]) == [10, 20]


def test_a_split_mixing_file_types_names_each_file(tmp_path):
    write_rows(tmp_path / "train.jsonl", text_pairs(10, "a"))
    write_rows(tmp_path / "train-2.csv", text_pairs(10, "b"))
    assert error_of(tmp_path) == (f"{tmp_path}: split train mixes file types: train-2.csv (CSV), train.jsonl (JSON); "
                                  "convert them to one type, or list each file as its own source in dataset_mixture")


def test_an_unsupported_file_in_a_folder_is_named(tmp_path):
    write_rows(tmp_path / "train.jsonl", text_pairs(10))
    (tmp_path / "extra.tsv").write_text("prompt\tchosen\trejected\n")
    assert error_of(tmp_path).startswith(f"{tmp_path}: extra.tsv: unsupported file type")


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.jsonl.gz"])
def test_a_latin1_file_names_the_byte_and_the_fix(tmp_path, name):
    good = text_pairs(3)
    write_rows(tmp_path / name, good)
    body = (tmp_path / name).read_bytes()
    if name.endswith(".gz"):
        body = gzip.decompress(body)
    head = body.decode()
    bad = head.replace("question 2", "caf\u00e9 2").encode("latin-1")
    offset = bad.index(b"\xe9")
    line = bad[:offset].count(b"\n") + 1
    (tmp_path / name).write_bytes(gzip.compress(bad) if name.endswith(".gz") else bad)
    message = error_of(tmp_path / name)
    assert message.startswith(f"{tmp_path / name}: byte {offset} (line {line}) is 0xe9, not UTF-8; the file is "
                              "probably Latin-1 / Windows-1252: convert it (")
    assert "iconv -f cp1252 -t utf-8" in message


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_is_read(tmp_path, delimiter):
    rows = [{"prompt": f"q{i}", "chosen": f"good, {i}", "rejected": f"bad, {i}"} for i in range(20)]
    path = tmp_path / "sheet.csv"
    path.write_text(delimiter.join(rows[0]) + "\n" + "".join(delimiter.join(r.values()) + "\n" for r in rows))
    data = load(dataset_name=str(path))
    assert sorted([*data.train["chosen"], *data.eval["chosen"]]) == sorted(r["chosen"] for r in rows)
    assert data.sources[0]["train"]["files"][0]["reader"] == f"csv (delimiter {delimiter!r})"


def test_a_csv_with_more_fields_than_its_header_is_one_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,rejected\nq,good, really,bad\n")
    assert error_of(path) == (f"{path}: some rows have more fields than the header (3 named columns: prompt, chosen, "
                              "rejected); quote fields that contain the delimiter")


def test_capitalised_spreadsheet_columns_get_the_mapping_to_write(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("Prompt;Chosen;Rejected\n" + "".join(f"q{i};a{i};b{i}\n" for i in range(5)))
    assert error_of(path) == (f"{path}: no column 'chosen' (columns: Prompt, Chosen, Rejected); name it with "
                              "dataset_columns, e.g. {chosen: Chosen}")


def test_a_split_the_run_does_not_use_is_named_in_the_audit(tmp_path):
    write_rows(tmp_path / "train.jsonl", text_pairs(30, "t"))
    write_rows(tmp_path / "validation.jsonl", text_pairs(7, "v"))
    write_rows(tmp_path / "test.jsonl", text_pairs(5, "s"))
    data = load(dataset_name=str(tmp_path), dataset_test_split="test")
    assert (len(data.train), len(data.eval)) == (30, 5)
    assert data.sources[0]["splits_not_used"] == {"validation": 7}
    assert "  splits not used by this run: validation (7 rows)" in format_table(build_report(data)).splitlines()
    used = load(dataset_name=str(tmp_path), dataset_test_split="validation")
    assert used.sources[0]["splits_not_used"] == {"test": 5}


def test_files_are_named_as_the_folder_was_given(tmp_path, monkeypatch):
    # datasets resolves a folder's files to absolute paths; the audit keeps the user's relative name
    (tmp_path / "d").mkdir()
    write_rows(tmp_path / "d" / "train.jsonl", text_pairs(30, "t"))
    monkeypatch.chdir(tmp_path)
    data = load(dataset_name="d")
    assert [f["file"] for f in data.sources[0]["train"]["files"]] == ["d/train.jsonl"]

"""Sources (file types, gzip, directories, named splits, the hub), mixtures with exact counts, seeded held-out sets."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from dpo_recipes.config import ScriptArguments, parse_config
from dpo_recipes.data import load_preference_data, mixture_rows
from dpo_recipes.data_sources import Source
from dpo_recipes.errors import UserError

from tests.helpers import REPO


def pairs(n, tag="p"):
    return [{"prompt": f"{tag} question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def write(path, rows):
    """Write rows in the format the file name says: .jsonl, .json, .parquet or .csv, optionally .gz."""
    suffix = path.name.removesuffix(".gz").rsplit(".", 1)[1]
    frame = pd.DataFrame(rows)
    if suffix == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif suffix == "json":
        data = json.dumps(rows).encode()
    elif suffix == "csv":
        data = frame.to_csv(index=False).encode()
    else:
        frame.to_parquet(path.with_suffix(".tmp"))
        data = path.with_suffix(".tmp").read_bytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def load(seed=0, **kwargs):
    return load_preference_data(ScriptArguments(**kwargs), seed=seed)


def all_prompts(data):
    return sorted([*data.train["prompt"], *data.eval["prompt"]])


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.parquet", "d.csv", "d.jsonl.gz", "d.json.gz", "d.csv.gz"])
def test_local_file_types(tmp_path, name):
    rows = pairs(40)
    data = load(dataset_name=str(write(tmp_path / name, rows)))
    assert all_prompts(data) == sorted(r["prompt"] for r in rows)
    assert len(data.eval) == 2  # no split in a file: 5% carved


def test_directory_with_named_splits(tmp_path):
    write(tmp_path / "train.jsonl", pairs(30, "tr"))
    write(tmp_path / "validation.jsonl", pairs(7, "va"))
    data = load(dataset_name=str(tmp_path), dataset_test_split="validation")
    assert len(data.train) == 30 and len(data.eval) == 7
    assert all(p.startswith("va") for p in data.eval["prompt"])
    assert data.sources[0]["held_out"] == "split 'validation'"


def test_named_train_split_and_a_missing_one(tmp_path):
    write(tmp_path / "train.jsonl", pairs(30, "tr"))
    write(tmp_path / "test.jsonl", pairs(5, "te"))
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


def test_seeded_held_out_carving_is_reproducible_and_disjoint(tmp_path):
    path = str(write(tmp_path / "d.jsonl", pairs(200)))
    a, b = load(seed=1, dataset_name=path), load(seed=1, dataset_name=path)
    c = load(seed=2, dataset_name=path)
    assert list(a.eval["prompt"]) == list(b.eval["prompt"]) and list(a.train["prompt"]) == list(b.train["prompt"])
    assert sorted(a.eval["prompt"]) != sorted(c.eval["prompt"])
    assert len(a.eval) == 10 and len(a.train) == 190  # eval_fraction 0.05
    assert not set(a.eval["prompt"]) & set(a.train["prompt"])
    assert a.sources[0]["held_out"] == "carved 10 rows (0.05) with seed 1"
    d = load(seed=1, dataset_name=path, eval_fraction=0.2)
    assert len(d.eval) == 40


def test_held_out_set_is_carved_from_clean_rows_only(tmp_path):
    rows = pairs(100) + [{"prompt": "x", "chosen": "same", "rejected": "same"}] * 20
    data = load(dataset_name=str(write(tmp_path / "d.jsonl", rows)))
    assert len(data.train) + len(data.eval) == 100 and len(data.eval) == 5
    assert "x" not in data.eval["prompt"]


@pytest.mark.parametrize(
    "sizes, weights, total, expected",
    [
        ([100, 50], [1, 1], None, [50, 50]),  # the largest mixture without repeats: min(100/.5, 50/.5) = 100
        ([100, 50], [3, 1], None, [100, 33]),  # 133 rows: 99.75 + 33.25, the remainder to the larger fraction
        ([10, 10, 10], [1, 1, 1], 10, [4, 3, 3]),  # 10 / 3 each, one extra row to the first
        ([10, 40], [1, 1], 100, [50, 50]),  # an explicit total repeats rows
    ],
)
def test_mixture_rows_by_weight(sizes, weights, total, expected):
    sources = [Source(name=str(i), weight=w) for i, w in enumerate(weights)]
    assert mixture_rows(sizes, sources, total) == expected
    if total is not None:
        assert sum(expected) == total


def test_mixture_rows_by_fraction():
    sources = [Source("a", fraction=0.5), Source("b", fraction=2.5), Source("c"), Source("d", fraction=0.125)]
    assert mixture_rows([11, 10, 7, 4], sources, None) == [6, 25, 7, 1]  # round half up: 5.5 -> 6, 0.5 -> 1


def _two_sources(tmp_path):
    a = write(tmp_path / "a.jsonl", pairs(100, "a"))
    (tmp_path / "b").mkdir()
    write(tmp_path / "b" / "train.jsonl", pairs(60, "b"))
    write(tmp_path / "b" / "test.jsonl", pairs(10, "bt"))
    return str(a), str(tmp_path / "b")


def test_mixture_with_weights_has_exact_counts_per_source(tmp_path):
    a, b = _two_sources(tmp_path)
    mixture = [{"name": a, "weight": 1}, {"name": b, "weight": 1}]
    data = load(seed=3, dataset_mixture=mixture)
    prompts = list(data.train["prompt"])
    # a: 100 rows, 5 carved -> 95; b: 60 rows and its own test split. Equal weights, no repeats: 60 + 60.
    assert sum(p.startswith("a") for p in prompts) == 60 and sum(p.startswith("b") for p in prompts) == 60
    assert len(set(prompts)) == 120  # without repeats
    assert len(data.eval) == 5 + 10  # held-out sets are not reweighted
    assert [s["rows_in_mixture"] for s in data.sources] == [60, 60]
    assert prompts[:60] != sorted(prompts[:60])  # shuffled, not source after source
    again = load(seed=3, dataset_mixture=mixture)
    assert list(again.train["prompt"]) == prompts


def test_every_training_row_names_where_it_came_from(tmp_path):
    a, b = _two_sources(tmp_path)
    lines = Path(a).read_text().splitlines()
    Path(a).write_text("\n".join(["", *lines[:10], "", *lines[10:]]) + "\n")  # blank lines: file lines != rows
    data = load(seed=3, dataset_mixture=[{"name": a, "weight": 1}, {"name": b, "weight": 1}])
    lines = Path(a).read_text().splitlines()
    for i, prompt in enumerate(data.train["prompt"]):  # shuffled across both sources
        origin = data.train_row_origin(i)
        if prompt.startswith("a"):
            path, line = origin.rsplit(": line ", 1)
            assert path == a and json.loads(lines[int(line) - 1])["prompt"] == prompt, origin
        else:  # a folder of splits: the split's row
            assert origin == f"{b} (split train): row {int(prompt.split()[-1]) + 1}"


def test_mixture_weights_with_a_total_repeat_rows(tmp_path):
    a, b = _two_sources(tmp_path)
    data = load(dataset_mixture=[{"name": a, "weight": 3}, {"name": b, "weight": 1}], dataset_mixture_rows=400)
    prompts = list(data.train["prompt"])
    assert sum(p.startswith("a") for p in prompts) == 300 and sum(p.startswith("b") for p in prompts) == 100
    b_counts = {p: prompts.count(p) for p in prompts if p.startswith("b")}
    assert sorted(set(b_counts.values())) == [1, 2]  # 60 whole + 40 sampled again


def test_mixture_with_fractions_from_the_command_line(tmp_path):
    a, b = _two_sources(tmp_path)
    argv = ["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--dataset_name", "",
            "--dataset_mixture", f"[{{name: {a}, fraction: 0.5}}, {{name: {b}, fraction: 2}}]"]
    script_args, training_args, _ = parse_config(argv)
    data = load_preference_data(script_args, seed=training_args.seed)
    prompts = list(data.train["prompt"])
    assert sum(p.startswith("a") for p in prompts) == 48  # round(0.5 * 95), half up
    assert sum(p.startswith("b") for p in prompts) == 120 and len(set(p for p in prompts if p.startswith("b"))) == 60


def test_mixture_per_source_columns_and_split(tmp_path):
    a = write(tmp_path / "a.jsonl", pairs(40, "a"))
    other = [{"q": f"o{i}", "y": "yes", "n": f"no {i}"} for i in range(40)]
    o = write(tmp_path / "o.csv", other)
    data = load(dataset_mixture=[str(a), {"name": str(o), "columns": {"prompt": "q", "chosen": "y", "rejected": "n"}}])
    assert len(data.train) == 38 + 38 and {p[0] for p in data.train["prompt"]} == {"a", "o"}


@pytest.mark.parametrize(
    "mixture, message",
    [
        ([{"name": "a.jsonl", "weight": 1}, {"name": "b.jsonl"}], "give every entry a weight, or none"),
        ([{"name": "a.jsonl", "weight": 1, "fraction": 0.5}], "give weight or fraction, not both"),
        ([{"name": "a.jsonl", "weight": -1}], "weight must be a number > 0, got -1"),
        ([{"name": "a.jsonl", "frac": 0.5}], r"unknown key 'frac' \(did you mean 'fraction'\?\)"),
        ([{"split": "train"}], "entry 1 needs a `name`"),
        ({"name": "a.jsonl"}, "must be a list of sources"),
    ],
)
def test_bad_mixture_configs(mixture, message):
    with pytest.raises(UserError, match=message):
        load(dataset_mixture=mixture)


def test_text_and_conversational_sources_cannot_be_mixed(tmp_path):
    a = write(tmp_path / "a.jsonl", pairs(40))
    with pytest.raises(UserError, match="standard \\(text\\) pairs cannot be mixed with conversational sources"):
        load(dataset_mixture=[str(a), str(REPO / "data/demo")])


def test_multi_process_map_gives_the_same_rows_and_is_cached(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"q {i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": f"no {i % 1500}"}]} for i in range(3000)]
    path = write(tmp_path / "big.jsonl", rows)
    two = load_preference_data(ScriptArguments(dataset_name=str(path)), seed=0, num_proc=2)
    cache_dir = Path(two.train.cache_files[0]["filename"]).parent
    assert len(list(cache_dir.glob("cache-*_0000[01]_of_00002.arrow"))) == 2  # two worker processes wrote the map
    one = load_preference_data(ScriptArguments(dataset_name=str(path)), seed=0, num_proc=None)
    assert list(one.train["prompt"]) == list(two.train["prompt"]) and len(two.train) + len(two.eval) == 3000
    assert list(one.eval["rejected"]) == list(two.eval["rejected"])

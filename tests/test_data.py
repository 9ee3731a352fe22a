"""The preparation (dpo_recipes/data/preparation.py): seeded held-out sets carved from clean rows, mixtures with exact counts
per source, where every training row came from, worker processes, and the stops when too few rows are left."""

import json
from pathlib import Path

import pytest

from tests.helpers import GOOD_PAIR, REPO, error_of, jsonl, text_pairs, write_rows
from dpo_recipes.train.config import ScriptArguments, parse_config
from dpo_recipes.data.preparation import load_preference_data, mixture_rows
from dpo_recipes.data.sources import Source
from dpo_recipes.errors import UserError


def load(seed=0, **kwargs):
    return load_preference_data(ScriptArguments(**kwargs), seed=seed)


def test_seeded_held_out_carving_is_reproducible_and_disjoint(tmp_path):
    path = str(write_rows(tmp_path / "d.jsonl", text_pairs(200)))
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
    rows = text_pairs(100) + [{"prompt": "x", "chosen": "same", "rejected": "same"}] * 20
    data = load(dataset_name=str(write_rows(tmp_path / "d.jsonl", rows)))
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
    a = write_rows(tmp_path / "a.jsonl", text_pairs(100, "a"))
    (tmp_path / "b").mkdir()
    write_rows(tmp_path / "b" / "train.jsonl", text_pairs(60, "b"))
    write_rows(tmp_path / "b" / "test.jsonl", text_pairs(10, "bt"))
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
        else:  # a folder of splits: the split's file and line
            assert origin == f"{b}/train.jsonl: line {int(prompt.split()[-1]) + 1}"


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


def test_text_and_conversational_sources_cannot_be_mixed(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", text_pairs(40))
    with pytest.raises(UserError, match="standard \\(text\\) pairs cannot be mixed with conversational sources"):
        load(dataset_mixture=[str(a), str(REPO / "data/demo")])


def test_multi_process_map_gives_the_same_rows_and_is_cached(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"q {i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": f"no {i % 1500}"}]} for i in range(3000)]
    path = write_rows(tmp_path / "big.jsonl", rows)
    two = load_preference_data(ScriptArguments(dataset_name=str(path)), seed=0, num_proc=2)
    cache_dir = Path(two.train.cache_files[0]["filename"]).parent
    assert len(list(cache_dir.glob("cache-*_0000[01]_of_00002.arrow"))) == 2  # two worker processes wrote the map
    one = load_preference_data(ScriptArguments(dataset_name=str(path)), seed=0, num_proc=None)
    assert list(one.train["prompt"]) == list(two.train["prompt"]) and len(two.train) + len(two.eval) == 3000
    assert list(one.eval["rejected"]) == list(two.eval["rejected"])


def test_dataset_empty_after_filtering(tmp_path):
    same = {"prompt": "p", "chosen": "same", "rejected": "same"}
    path = jsonl(tmp_path / "d.jsonl", same, {**same, "prompt": "q"}, {**GOOD_PAIR, "chosen": " "})
    assert error_of(path) == f"{path}: no rows left after filtering (3 read; dropped: identical_pair 2, empty_field 1)"


def test_too_few_clean_rows_to_carve_a_held_out_set(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD_PAIR, {**GOOD_PAIR, "chosen": "5"})
    assert error_of(path) == f"{path}: 1 clean row(s) cannot be split into train and a held-out set"

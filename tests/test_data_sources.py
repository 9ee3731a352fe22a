"""The configured sources (dpo_recipes/data/sources.py): dataset_name or dataset_mixture entries, column mappings,
weights and fractions, and data_stop_on, checked before anything is read."""

import pytest

from tests.helpers import REPO, text_pairs, write_rows
from dpo_recipes.train.config import ScriptArguments, parse_config
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.data.sources import DEFAULT_STOP_ON, DEFECTS, check_data_args, parse_columns, parse_stop_on
from dpo_recipes.errors import UserError


def load(seed=0, **kwargs):
    return load_preference_data(ScriptArguments(**kwargs), seed=seed)


def test_mixture_per_source_columns_and_split(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", text_pairs(40, "a"))
    other = [{"q": f"o{i}", "y": "yes", "n": f"no {i}"} for i in range(40)]
    o = write_rows(tmp_path / "o.csv", other)
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


def test_column_mapping_from_a_string_or_a_mapping():
    assert parse_columns("prompt=question, chosen=good,rejected=bad", "dataset_columns") == {
        "prompt": "question", "chosen": "good", "rejected": "bad"}
    assert parse_columns({"score_chosen": " rating "}, "dataset_columns") == {"score_chosen": "rating"}
    assert parse_columns(None, "dataset_columns") == {}
    with pytest.raises(UserError, match="dataset_columns: unknown column 'answer'; map one of prompt, chosen, "):
        parse_columns("answer=text", "dataset_columns")
    with pytest.raises(UserError, match="dataset_columns: 'prompt' must name a column of the data, got 3"):
        parse_columns({"prompt": 3}, "dataset_columns")


def test_data_stop_on_reasons_and_shorthands():
    assert parse_stop_on(None) == set(DEFAULT_STOP_ON) == {"missing_field", "wrong_type"}
    assert parse_stop_on("all") == set(DEFECTS) and parse_stop_on(["none"]) == set() == parse_stop_on([])
    assert parse_stop_on("identical_pair") == {"identical_pair"}
    with pytest.raises(UserError, match=r"unknown reason 'identical_pairs' \(did you mean 'identical_pair'\?\)"):
        parse_stop_on(["identical_pairs"])


def test_a_missing_data_file_stops_with_the_config(tmp_path):
    """Checked with the rest of the config, before a model is resolved (the default recipe converts one first)."""
    present = write_rows(tmp_path / "a.jsonl", text_pairs(4, "a"))
    check_data_args(ScriptArguments(dataset_name=str(present)))
    check_data_args(ScriptArguments(dataset_name="org/some-dataset"))  # a hub id: read later
    for name in (tmp_path / "nope.jsonl", tmp_path / "nope.csv.gz"):
        with pytest.raises(UserError, match=f"^{name}: file not found$"):
            check_data_args(ScriptArguments(dataset_name=str(name)))
    with pytest.raises(UserError, match="nope.parquet: file not found"):
        check_data_args(ScriptArguments(dataset_name="", dataset_mixture=[str(present), str(tmp_path / "nope.parquet")]))


def test_the_default_recipe_stops_on_a_missing_file_at_parse_time(tmp_path):
    """commands/train.py parses the config before it resolves (for demo-smollm2: converts) the model, so this is the first stop."""
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=f"^{missing}: file not found$"):
        parse_config(["--config", str(REPO / "recipes/demo-smollm2/config.yaml"), "--dataset_name", str(missing)])

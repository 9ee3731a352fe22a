"""MADPO's margins (dpo_recipes/train/margins.py) from score columns or a margin column, and the one-line errors when there
is none or they are wrong. Margins from a trained reward model, and MADPO trained with them:
tests/e2e/test_madpo_two_step.py."""

import json

import pytest
from datasets import Dataset

from tests.helpers import REPO
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_splits
from dpo_recipes.errors import UserError
from dpo_recipes.train.margins import add_reward_margins
from dpo_recipes.names import MARGIN_COLUMN

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")


def madpo_args(*extra):
    return parse_config(["--config", DEMO, "--loss_type", "madpo", *extra])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored_rows(n, chosen_key="score_chosen", rejected_key="score_rejected"):
    """UltraFeedback-binarized style: a string prompt, whole conversations, one score per side."""
    rows = []
    for i in range(n):
        question = f"What is {i} plus {i}?"
        rows.append({
            "prompt": question,
            "chosen": [{"role": "user", "content": question}, {"role": "assistant", "content": f"It is {2 * i}."}],
            "rejected": [{"role": "user", "content": question}, {"role": "assistant", "content": "No idea."}],
            chosen_key: 7.0 + i,
            rejected_key: 4.5 - i / 2,
        })
    return rows


def test_margins_from_ultrafeedback_score_columns(tmp_path):
    data = write_jsonl(tmp_path / "scored.jsonl", scored_rows(20))
    script_args, training_args, _ = madpo_args("--dataset_name", str(data), "--eval_fraction", "0.25",
                                               "--score_margin_scale", "0.5")
    train, held_out = load_preference_splits(script_args, seed=0)
    train, held_out = add_reward_margins(script_args, training_args, train, held_out)
    for ds in (train, held_out):
        assert list(ds[MARGIN_COLUMN]) == [0.5 * (c - r) for c, r in zip(ds["score_chosen"], ds["score_rejected"])]
    assert sorted([*train[MARGIN_COLUMN], *held_out[MARGIN_COLUMN]]) == [0.5 * (2.5 + 1.5 * i) for i in range(20)]


def test_score_columns_need_an_explicit_scale(tmp_path):
    """Score differences are not Bradley-Terry logit margins (the paper's): without score_margin_scale, one line."""
    data = write_jsonl(tmp_path / "scored.jsonl", scored_rows(8))
    script_args, training_args, _ = madpo_args("--dataset_name", str(data))
    train, held_out = load_preference_splits(script_args, seed=0)
    with pytest.raises(UserError, match=r"\(train\): score columns 'score_chosen' and 'score_rejected' are not "
                                        r"reward-model margins .* set score_margin_scale"):
        add_reward_margins(script_args, training_args, train, held_out)
    for bad, message in ((["--score_margin_scale", "0"], "score_margin_scale must be > 0"),
                         (["--score_margin_scale", "1", "--reward_model_name_or_path", "rm"],
                          "score_margin_scale is only used by loss_type madpo with score columns")):
        with pytest.raises(UserError, match=message):
            madpo_args("--dataset_name", str(data), *bad)
    with pytest.raises(UserError, match="score_margin_scale is only used"):
        parse_config(["--config", DEMO, "--score_margin_scale", "1"])


def test_score_column_names_are_configurable(tmp_path):
    data = write_jsonl(tmp_path / "scored.jsonl", scored_rows(8, "rating_good", "rating_bad"))
    script_args, training_args, _ = madpo_args("--dataset_name", str(data), "--score_chosen_column", "rating_good",
                                               "--score_rejected_column", "rating_bad", "--score_margin_scale", "1")
    train, held_out = load_preference_splits(script_args, seed=0)
    train, _ = add_reward_margins(script_args, training_args, train, held_out)
    assert list(train[MARGIN_COLUMN]) == [c - r for c, r in zip(train["rating_good"], train["rating_bad"])]


def pairs(n, **columns):
    rows = {"prompt": ["q"] * n, "chosen": ["good"] * n, "rejected": ["bad"] * n}
    return Dataset.from_dict({**rows, **columns})


def test_an_existing_margin_column_is_used_as_given():
    script_args, training_args, _ = madpo_args()
    given = pairs(3, reward_margin=[0.5, -1.0, 2.0], score_chosen=[1.0, 1.0, 1.0], score_rejected=[0.0, 0.0, 0.0])
    train, _ = add_reward_margins(script_args, training_args, given, None)
    assert list(train[MARGIN_COLUMN]) == [0.5, -1.0, 2.0]


def test_bad_scores_name_the_row():
    script_args, training_args, _ = madpo_args("--score_margin_scale", "1")
    bad = pairs(3, score_chosen=[1.0, None, 2.0], score_rejected=[0.0, 0.0, 0.0])
    with pytest.raises(UserError, match=r"\(train\): row 1: 'score_chosen' must be a finite number, got None"):
        add_reward_margins(script_args, training_args, bad, None)


def test_no_margin_source_is_one_clear_error():
    script_args, training_args, _ = madpo_args()
    with pytest.raises(UserError, match=r"data/demo \(train\): loss_type madpo needs reward margins: set "
                                        r"reward_model_name_or_path"):
        add_reward_margins(script_args, training_args, pairs(2), pairs(2))


def test_reward_model_and_margin_column_together_refuse_to_overwrite(tmp_path):
    script_args, training_args, _ = madpo_args("--reward_model_name_or_path", str(tmp_path))
    with pytest.raises(UserError, match=r"already has a 'reward_margin' column and reward_model_name_or_path is set"):
        add_reward_margins(script_args, training_args, pairs(2, reward_margin=[1.0, 2.0]), None)


def test_a_folder_that_is_not_a_reward_model_is_one_clear_error(tmp_path):
    script_args, training_args, _ = madpo_args("--reward_model_name_or_path", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"reward_model_name_or_path: cannot load"):
        add_reward_margins(script_args, training_args, pairs(2), None)

"""Normalising (dpo_recipes/data/formats.py): every input format comes out in TRL's own format, the real Anthropic HH
sample parses row for row, and a row or column that cannot be read as a pair stops with one line."""

import gzip
import json

import pytest
from trl.data_utils import is_conversational

from tests.helpers import GOOD_PAIR, REPO, error_of, jsonl
from dpo_recipes.train.config import ScriptArguments
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.data.formats import parse_transcript

HH = REPO / "data/hh-rlhf/harmless-base-test.jsonl.gz"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(path, **kwargs):
    args = ScriptArguments(dataset_name=str(path), **kwargs)
    return load_preference_data(args, seed=0)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_standard_text_pairs_stay_text(tmp_path):
    rows = [{"prompt": f"Q{i}: what is {i}+{i}?", "chosen": f" {2 * i}", "rejected": " no idea"} for i in range(20)]
    data = load(write_jsonl(tmp_path / "std.jsonl", rows))
    assert not data.conversational
    got = sorted([*data.train, *data.eval], key=lambda r: r["prompt"])
    assert got == sorted(rows, key=lambda r: r["prompt"])
    assert not is_conversational(data.train[0])
    assert data.sources[0]["format"] == "standard"


def test_conversational_pairs_keep_every_message_key(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, user(f"Name {i}?")],
             "chosen": [{"role": "assistant", "content": f"Sure: {i}.", "weight": 1}],
             "rejected": [assistant("No.")]} for i in range(20)]
    data = load(write_jsonl(tmp_path / "conv.jsonl", rows))
    assert data.conversational and is_conversational(data.train[0])
    by_prompt = {r["prompt"][1]["content"]: r for r in [*data.train, *data.eval]}
    assert len(by_prompt) == 20
    # The chat template receives the message as written: the extra key "weight" in the row that has it, no other.
    assert by_prompt["Name 3?"]["chosen"] == [{**assistant("Sure: 3."), "weight": 1}]
    assert by_prompt["Name 3?"]["rejected"] == [assistant("No.")]
    assert by_prompt["Name 3?"]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_implicit_prompt_transcripts_split_before_the_final_assistant_turn(tmp_path):
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke {}"
    rows = [{"chosen": prefix.format(i) + "\n\nAssistant: Why did the chicken cross the road? ",
             "rejected": prefix.format(i) + "\n\nAssistant: No."} for i in range(20)]
    data = load(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert data.conversational
    row = next(r for r in [*data.train, *data.eval] if r["prompt"][-1]["content"] == "Tell me a joke 7")
    assert row["prompt"] == [user("Hi"), assistant("Hello!"), user("Tell me a joke 7")]
    assert row["chosen"] == [assistant("Why did the chicken cross the road?")]
    assert row["rejected"] == [assistant("No.")]
    assert data.sources[0]["format"].startswith("implicit prompt")


def test_implicit_prompt_message_lists(tmp_path):
    rows = [{"chosen": [user(f"q{i}"), assistant("a"), user("more"), assistant(f"good {i}")],
             "rejected": [user(f"q{i}"), assistant("a"), user("more"), assistant("bad")]} for i in range(20)]
    data = load(write_jsonl(tmp_path / "implicit.jsonl", rows))
    row = next(r for r in [*data.train, *data.eval] if r["prompt"][0]["content"] == "q4")
    assert row == {"prompt": [user("q4"), assistant("a"), user("more")], "chosen": [assistant("good 4")],
                   "rejected": [assistant("bad")]}


def test_scored_pairs_ultrafeedback_style_keep_their_scores(tmp_path):
    rows = [{"prompt": f"Question {i}", "chosen": [user(f"Question {i}"), assistant(f"Answer {i}")],
             "rejected": [user(f"Question {i}"), assistant("Meh")], "score_chosen": 8.0 + i, "score_rejected": 2,
             "messages": [user("unused")]} for i in range(20)]
    data = load(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert set(data.train.column_names) == {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    assert data.extra_columns == ["score_chosen", "score_rejected"]
    row = next(r for r in [*data.train, *data.eval] if r["prompt"] == [user("Question 5")])
    assert row["chosen"] == [assistant("Answer 5")] and row["rejected"] == [assistant("Meh")]
    assert (row["score_chosen"], row["score_rejected"]) == (13.0, 2.0)
    assert data.sources[0]["format"] == "text prompt + message lists + scores"


def test_text_prompt_with_assistant_only_replies_becomes_a_user_turn(tmp_path):
    rows = [{"prompt": f"P{i}", "chosen": [assistant(f"yes {i}")], "rejected": [assistant("no")]} for i in range(20)]
    data = load(write_jsonl(tmp_path / "mixed.jsonl", rows))
    row = next(r for r in [*data.train, *data.eval] if r["prompt"] == [user("P2")])
    assert row["chosen"] == [assistant("yes 2")]


def test_column_mapping_renames_other_names(tmp_path):
    rows = [{"question": f"Q{i}", "good": f"right {i}", "bad": "wrong", "prompt": "ignored", "r_good": 5,
             "r_bad": 1} for i in range(20)]
    path = write_jsonl(tmp_path / "other.jsonl", rows)
    data = load(path, dataset_columns="prompt=question,chosen=good,rejected=bad,score_chosen=r_good,"
                                      "score_rejected=r_bad")
    assert set(data.train.column_names) == {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    row = next(r for r in [*data.train, *data.eval] if r["prompt"] == "Q3")
    assert (row["chosen"], row["rejected"], row["score_chosen"]) == ("right 3", "wrong", 5.0)
    # The YAML mapping form gives the same data.
    same = load(path, dataset_columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert sorted(same.train["prompt"]) == sorted(data.train["prompt"])


def test_scores_named_by_score_columns_options_keep_those_names(tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": "a", "rejected": f"b{i}", "rating_a": 3, "rating_b": 1} for i in range(20)]
    data = load(write_jsonl(tmp_path / "r.jsonl", rows), score_chosen_column="rating_a",
                score_rejected_column="rating_b")
    assert data.extra_columns == ["rating_a", "rating_b"]  # what margins.py reads for madpo


def test_parse_transcript_roles_and_text():
    turns = parse_transcript("\n\nHuman: one\n\nAssistant: two Human: not a turn\n\nHuman: three", "chosen")
    assert turns == [user("one"), assistant("two Human: not a turn"), user("three")]


def _hh_rows():
    with gzip.open(HH, "rt") as f:
        return [json.loads(line) for line in f]


def test_hh_sample_every_row_parses_or_is_counted_with_a_reason():
    data = load(HH)
    counts = data.sources[0]["train"]
    assert counts["rows_read"] == 2312
    # Independent of the parser: a chosen transcript that ends on an empty "Assistant:" turn, and pairs whose text
    # before the last "\n\nAssistant:" differs (one side has an extra assistant turn).
    rows = _hh_rows()
    empty = sum(r["chosen"].rstrip().endswith("Assistant:") or r["rejected"].rstrip().endswith("Assistant:")
                for r in rows)
    mismatch = sum(r["chosen"][: r["chosen"].rfind("\n\nAssistant:")] != r["rejected"][: r["rejected"].rfind(
        "\n\nAssistant:")] for r in rows)
    assert counts["dropped"] == {"empty_field": empty, "prompt_mismatch": mismatch} == {"empty_field": 4,
                                                                                        "prompt_mismatch": 5}
    assert counts["kept"] == 2312 - 9 == len(data.train) + len(data.eval)
    assert counts["first_dropped"]["empty_field"] == f"{HH}: line 87: field 'chosen' has an empty final reply"


def test_hh_sample_first_row_turns_match_the_text():
    data = load_preference_data(ScriptArguments(dataset_name=str(HH)), seed=0)
    raw = _hh_rows()[0]
    row = next(r for r in [*data.train, *data.eval] if r["prompt"][0]["content"] ==
               "what are some pranks with a pen i can do?")
    assert [t["role"] for t in row["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert row["chosen"][0]["content"] == raw["chosen"].rsplit("\n\nAssistant: ", 1)[1].strip()
    assert row["rejected"][0]["content"] == raw["rejected"].rsplit("\n\nAssistant: ", 1)[1].strip()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_conversational_output_renders_with_the_tokenizer_chat_template(tmp_path, family):
    """What the data layer hands over is what TRL tokenizes: its chat template renders prompt + reply."""
    from transformers import AutoTokenizer

    from dpo_recipes.models.tiny import build_tiny

    tok = AutoTokenizer.from_pretrained(build_tiny(family, tmp_path / family))
    data = load(HH)
    row = data.train[0]
    text = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert row["chosen"][0]["content"] in text and row["prompt"][0]["content"] in text


# ----------------------------------------------------------------------------------------------------------------
# Rows and columns that cannot be read as pairs: one line naming the file, the line and the field


def test_missing_column(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {"prompt": "a", "chosen": "b"})
    assert error_of(path) == (f"{path}: no column 'rejected' (columns: prompt, chosen); name it with dataset_columns, "
                              "e.g. {rejected: <column>}")


def test_column_mapping_to_a_column_that_is_not_there(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD_PAIR)
    assert error_of(path, dataset_columns="prompt=question") == (
        f"{path}: columns maps 'prompt' to 'question', which is not a column (columns: prompt, chosen, rejected)")


def test_a_row_of_the_wrong_type_stops_by_default_naming_line_and_field(tmp_path):
    message = {"role": "assistant", "content": "fine"}
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [message],
           "rejected": [{**message, "content": "x"}]}
    path = jsonl(tmp_path / "d.jsonl", row, {**row, "rejected": [{"role": "assistant"}]})
    assert error_of(path) == (f"{path}: line 2: field 'rejected' message 1 content is not text (wrong_type; listed in "
                              "data_stop_on, remove it to drop and count such rows)")


def test_missing_field_stops_by_default(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", GOOD_PAIR, {"prompt": "b", "chosen": "c"}, {**GOOD_PAIR, "prompt": "c"})
    assert error_of(path).startswith(f"{path}: line 2: field 'rejected' is missing (null) (missing_field;")


def test_null_score_is_a_missing_field(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {**GOOD_PAIR, "score_chosen": 9, "score_rejected": 1},
                 {**GOOD_PAIR, "prompt": "b", "score_chosen": None, "score_rejected": 1})
    assert error_of(path).startswith(f"{path}: line 2: field 'score_chosen' is missing (null) (missing_field;")


def test_score_column_without_its_partner(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {**GOOD_PAIR, "score_chosen": 9})
    assert error_of(path) == (f"{path}: column 'score_chosen' without its partner; scored pairs need both "
                              "score_chosen and score_rejected")


@pytest.mark.parametrize("row, kind", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "SFT"),
    ({"text": "a whole document"}, "SFT"),
    ({"prompt": "a", "completion": "b"}, "SFT"),
    ({"prompt": "a", "completion": "b", "label": True}, "KTO"),
])
def test_sft_and_kto_files_are_named_as_such(tmp_path, row, kind):
    path = write_jsonl(tmp_path / "d.jsonl", [row] * 3)
    message = error_of(path)
    assert message.startswith(f"{path}: this is {kind} data (columns {', '.join(row)}: ")
    assert "dataset_columns" not in message  # no column mapping turns them into pairs
    assert f"TRL's {kind}Trainer" in message

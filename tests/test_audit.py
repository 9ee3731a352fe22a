"""The audit (dpo_recipes/report/audit.py) on crafted data with known defects (exact counts), its token statistics checked
against TRL's own tokenization, and the chat-template rules. `make audit` itself: tests/e2e/test_make_audit.py."""

import json

import numpy as np
import pytest

from tests.helpers import REPO
from dpo_recipes.report.audit import AUDIT_FILE, build_report, write_audit
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.errors import UserError

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")
MAX_LENGTH = 64


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def good(i, chosen_words=8, rejected_words=2):
    return {"prompt": [user(f"Question number {i}?")],
            "chosen": [assistant(" ".join(["yes"] * chosen_words) + f" {i}")],
            "rejected": [assistant(" ".join(["no"] * rejected_words) + f" {i}")]}


def crafted_rows():
    """20 clean pairs and, after them, rows with one known defect each."""
    rows = [good(i) for i in range(14)] + [good(i, chosen_words=1, rejected_words=9) for i in range(14, 20)]
    rows.append(good(20, chosen_words=80))  # clean, but prompt + chosen exceeds max_length: truncated
    defects = {
        "missing_field": [{**good(100), "chosen": None}, {"prompt": [user("q")], "chosen": [assistant("a")]}],
        "wrong_type": [{**good(101), "chosen": [{"content": "who am I?"}]},
                       {**good(102), "rejected": [{"role": "assistant"}]},
                       {**good(103), "prompt": [user("q"), {"role": "user"}]}],
        "empty_field": [{**good(104), "prompt": []}, {**good(105), "chosen": [assistant("   ")]},
                        {**good(106), "rejected": []}],
        "identical_pair": [{**good(107), "rejected": good(107)["chosen"]}],
        "duplicate_pair": [good(0), good(0), good(5)],
        "prompt_too_long": [{**good(108), "prompt": [user("long " * 80)]},
                            {**good(109), "prompt": [user("more " * 60)]}],
    }
    for reason_rows in defects.values():
        rows.extend(reason_rows)
    return rows, {reason: len(r) for reason, r in defects.items()}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    path = tmp_path_factory.mktemp("crafted") / "pairs.jsonl"
    rows, expected = crafted_rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows, expected


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def configure(path, out, *extra):
    return parse_config(["--config", DEMO, "--dataset_name", str(path), "--max_length", str(MAX_LENGTH),
                         "--output_dir", str(out), "--data_stop_on", "none", *extra])


def prepare(script_args, training_args, tokenizer):
    """The data as a training run prepares it (dpo_recipes/commands/train.py) with the run's tokenizer and settings."""
    return load_preference_data(script_args, seed=training_args.seed, tokenizer=tokenizer,
                                max_length=training_args.max_length, truncation_mode=training_args.truncation_mode,
                                num_proc=training_args.dataset_num_proc)


@pytest.fixture(scope="module")
def audited(crafted, tokenizer, tmp_path_factory):
    path, rows, expected = crafted
    out = tmp_path_factory.mktemp("audit")
    script_args, training_args, _ = configure(path, out)
    data = prepare(script_args, training_args, tokenizer)
    report = write_audit(data, training_args.output_dir)
    train, eval_ = data.train, data.eval
    return train, eval_, report, training_args, out


def test_every_defect_is_counted_exactly(audited, crafted):
    _, rows, expected = crafted
    train, eval_, report, _, _ = audited
    assert report["rows_read"] == len(rows) == 21 + sum(expected.values())
    assert {r: n for r, n in report["dropped"].items() if n} == expected
    assert report["kept"] == 21 == len(train) + len(eval_)
    assert report["sources"][0]["train"]["first_dropped"]["duplicate_pair"].endswith(
        "line 31: field 'chosen' (with prompt and rejected) repeats row 1")
    assert report["sources"][0]["train"]["first_dropped"]["wrong_type"].endswith(
        "line 24: field 'chosen' message 1 has no role")


def test_no_row_is_lost_without_a_reason(audited, crafted):
    train, eval_, report, _, _ = audited
    kept = {r["prompt"][0]["content"] for r in [*train, *eval_]}
    assert kept == {f"Question number {i}?" for i in range(21)}


def test_token_statistics_match_trls_own_tokenization(audited, tiny_llama, tmp_path):
    """TRL tokenizes our output: it must drop nothing more, and its lengths must give the audit's numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    train, eval_, report, _, _ = audited
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama),
        args=DPOConfig(output_dir=str(tmp_path), max_length=MAX_LENGTH, report_to=[], use_cpu=True),
        train_dataset=train,
        eval_dataset=eval_,
        processing_class=AutoTokenizer.from_pretrained(tiny_llama),
    )
    for split, ds in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        stats = report["splits"][split]
        assert len(ds) == stats["rows"]  # TRL's silent prompt filter found nothing left to drop
        lengths = {side: np.array([len(ids) for ids in ds[f"{side}_ids"]]) for side in ("prompt", "chosen", "rejected")}
        for side, values in lengths.items():
            assert stats["lengths"][side] == {"mean": round(float(values.mean()), 2),
                                             "p50": float(np.percentile(values, 50)),
                                             "p95": float(np.percentile(values, 95)), "max": int(values.max())}
        longer = lengths["chosen"] > lengths["rejected"]
        assert stats["chosen_longer_share"] == round(float(longer.mean()), 4)
        full = {side: lengths["prompt"] + lengths[side] for side in ("chosen", "rejected")}
        cut = (full["chosen"] > MAX_LENGTH) | (full["rejected"] > MAX_LENGTH)
        assert stats["truncated"]["pairs"] == int(cut.sum())
    all_chosen_longer = report["splits"]["train"]["chosen_longer_share"] * report["splits"]["train"]["rows"] + \
        report["splits"]["eval"]["chosen_longer_share"] * report["splits"]["eval"]["rows"]
    assert round(all_chosen_longer) == 15  # rows 0-13 and 20 have the longer chosen reply, 14-19 the shorter
    assert report["splits"]["train"]["truncated"]["pairs"] + report["splits"]["eval"]["truncated"]["pairs"] == 1


def test_trl_would_silently_drop_exactly_the_prompts_the_audit_counts(crafted, audited, tiny_llama, tmp_path):
    """Without the data layer, TRL's _prepare_dataset drops the long prompts with no word: the audit counts them."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _, rows, expected = crafted
    clean = rows[:21] + rows[-expected["prompt_too_long"]:]  # the clean pairs and the two long prompts (last)
    raw = Dataset.from_list(clean)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama),
        args=DPOConfig(output_dir=str(tmp_path), max_length=MAX_LENGTH, report_to=[], use_cpu=True),
        train_dataset=raw,
        processing_class=AutoTokenizer.from_pretrained(tiny_llama),
    )
    report = audited[2]
    assert len(raw) - len(trainer.train_dataset) == report["dropped"]["prompt_too_long"] == 2


def test_audit_file_and_table(audited, crafted):
    from dpo_recipes.report.audit import format_table

    path, _, expected = crafted
    _, _, report, _, out = audited
    saved = json.loads((out / AUDIT_FILE).read_text())
    assert saved["dropped"] == report["dropped"]
    assert saved["splits"] == json.loads(json.dumps(report["splits"]))  # nothing redacted or lost on the way
    assert saved["settings"]["max_length"] == MAX_LENGTH and saved["settings"]["stop_on"] == []
    table = format_table(report).splitlines()
    dropped = ", ".join(f"{reason} {n}" for reason, n in expected.items())
    assert f"rows read 35, kept 21, dropped 14: {dropped}" in table
    assert f"  first identical_pair: {path}: line 30: field 'rejected' is identical to chosen" in table
    train, eval_ = report["splits"]["train"], report["splits"]["eval"]
    assert f"{'pairs':<18}{train['rows']:>26}{eval_['rows']:>26}" in table


def test_stop_on_turns_a_counted_defect_into_an_error(crafted, tokenizer, tmp_path):
    path, _, _ = crafted
    script_args, training_args, _ = configure(path, tmp_path, "--data_stop_on", "identical_pair")
    with pytest.raises(UserError) as err:
        prepare(script_args, training_args, tokenizer)
    assert str(err.value) == (f"{path}: line 30: field 'rejected' is identical to chosen (identical_pair; listed in "
                              "data_stop_on, remove it to drop and count such rows)")


def test_implicit_prompt_defects_are_counted(tmp_path, tokenizer):
    turn = "\n\nHuman: hello {}\n\nAssistant: "
    rows = [{"chosen": turn.format(i) + "fine thanks", "rejected": turn.format(i) + "go away"} for i in range(6)]
    rows += [
        {"chosen": "no turns here", "rejected": turn.format(0) + "x"},  # bad_transcript
        {"chosen": turn.format(90) + "a\n\nHuman: and?", "rejected": turn.format(90) + "b"},  # bad_transcript
        {"chosen": turn.format(91) + "a", "rejected": turn.format(92) + "b"},  # prompt_mismatch
        {"chosen": turn.format(93) + " ", "rejected": turn.format(93) + "b"},  # empty_field
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script_args, training_args, _ = configure(path, tmp_path / "out")
    report = build_report(prepare(script_args, training_args, tokenizer))
    assert {r: n for r, n in report["dropped"].items() if n} == {"bad_transcript": 2, "prompt_mismatch": 1,
                                                                 "empty_field": 1}
    assert report["kept"] == 6


def test_conversational_data_without_a_chat_template_names_the_fix(tokenizer, tmp_path):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    script_args, training_args, _ = parse_config(["--config", DEMO, "--output_dir", str(tmp_path)])
    with pytest.raises(UserError, match=r"data/demo \(split train\): the data is conversational but the tokenizer of "
                                        r"'.*' has no chat template; set chat_template_path to a Jinja template file"):
        prepare(script_args, training_args, bare)


def test_recipe_chat_template_is_the_one_applied(tiny_llama, tmp_path):
    from dpo_recipes.models.loading import load_tokenizer

    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    script_args, _, model_args = parse_config(["--config", DEMO, "--chat_template_path", str(template)])
    custom = load_tokenizer(str(tiny_llama), model_args, False, script_args.chat_template_path)
    own = load_tokenizer(str(tiny_llama), model_args, False, None)
    with_custom = load_preference_data(script_args, seed=0, tokenizer=custom, max_length=128)
    with_own = load_preference_data(script_args, seed=0, tokenizer=own, max_length=128)
    # The plain template renders a prompt as its text and a newline, nothing else.
    plain = [len(custom(row["prompt"][0]["content"] + "\n")["input_ids"]) for row in with_custom.train]
    assert with_custom.lengths["train"]["prompt"].tolist() == plain
    assert (with_own.lengths["train"]["prompt"] > with_custom.lengths["train"]["prompt"]).all()  # Llama 3 headers


def test_held_out_pairs_seen_in_training_are_reported_not_dropped(tmp_path):
    from dpo_recipes.report.audit import format_table
    from dpo_recipes.train.config import ScriptArguments

    rows = [good(i) for i in range(10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [rows[2], rows[7], good(50)]))
    report = build_report(load_preference_data(ScriptArguments(dataset_name=str(tmp_path)), seed=0))
    assert report["eval_pairs_in_train"] == 2 and report["splits"]["eval"]["rows"] == 3
    assert "warning: 2 eval pairs also appear in train" in format_table(report).splitlines()


def test_scores_missing_from_one_source_are_left_out_with_a_warning(tmp_path):
    from dpo_recipes.report.audit import format_table
    from dpo_recipes.train.config import ScriptArguments

    scored = [{**good(i), "score_chosen": 5, "score_rejected": 1} for i in range(20)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(good(i)) + "\n" for i in range(20, 40)))
    mixture = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    data = load_preference_data(ScriptArguments(dataset_mixture=mixture), seed=0)
    assert data.extra_columns == [] and set(data.train.column_names) == {"prompt", "chosen", "rejected"}
    report = build_report(data)
    assert report["settings"]["columns_left_out"] == ["score_chosen", "score_rejected"]
    assert ("warning: columns left out (not used for DPO, or not in every source): score_chosen, score_rejected"
            in format_table(report))


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").iterdir() if (p / "config.yaml").is_file()))
def test_the_audit_of_every_recipe_runs_on_a_cpu_with_a_local_tokenizer(recipe, tiny_llama, tmp_path):
    """GPU recipes (bf16, 4-bit, gated models) are audited on this CPU machine: the audit parses the config as a CPU
    run, and --tokenizer names a local tokenizer folder instead of the gated hub model."""
    from dpo_recipes.commands.audit import main

    report = main(["--config", str(REPO / "recipes" / recipe / "config.yaml"), "--tokenizer", str(tiny_llama),
                   "--dataset_name", "data/demo", "--dataset_train_split", "train", "--dataset_test_split", "test",
                   "--output_dir", str(tmp_path)])
    assert report["splits"]["train"]["lengths"]["prompt"]["max"] > 0
    assert json.loads((tmp_path / AUDIT_FILE).read_text())["rows_read"] == report["rows_read"] > 0


def test_the_audit_names_the_tokenizer_override_when_the_model_cannot_be_reached(tmp_path, capsys):
    from dpo_recipes.commands.audit import main

    missing = tmp_path / "no-such-model"
    with pytest.raises(SystemExit) as stop:
        main(["--config", DEMO, "--model_name_or_path", str(missing), "--bf16", "true", "--use_liger_kernel", "true",
              "--output_dir", str(tmp_path)])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {missing}: cannot load the tokenizer: ")  # not bf16, not Liger: a CPU parse
    assert message.endswith("; for a gated or offline model, audit with a local copy: --tokenizer <dir>")


def test_a_tokenizer_override_that_is_not_a_folder_is_one_line(tmp_path, capsys):
    from dpo_recipes.commands.audit import main

    with pytest.raises(SystemExit):
        main(["--config", DEMO, "--tokenizer", str(tmp_path / "nope"), "--output_dir", str(tmp_path)])
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'nope'}: --tokenizer needs a local tokenizer "
                                               "folder (tokenizer.json or tokenizer_config.json inside)")


def test_the_audit_lists_every_file_of_a_folder(tmp_path, tokenizer):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(good(i)) + "\n" for i in range(12)))
    (folder / "train-more.jsonl").write_text("".join(json.dumps(good(i)) + "\n" for i in range(10, 16)))
    script_args, training_args, _ = configure(folder, tmp_path / "out")
    report = build_report(prepare(script_args, training_args, tokenizer))
    from dpo_recipes.report.audit import format_table

    files = {f["file"]: (f["rows_read"], f["kept"], f["dropped"]) for f in report["sources"][0]["train"]["files"]}
    # Files are read in name order (train-more.jsonl first): the later file's repeats are the duplicates.
    assert files == {str(folder / "train-more.jsonl"): (6, 6, {}),
                     str(folder / "train.jsonl"): (12, 10, {"duplicate_pair": 2})}
    table = format_table(report).splitlines()
    assert f"  {folder / 'train.jsonl'}: read 12, kept 10, dropped 2" in table
    assert report["rows_read"] == 18

"""The demo data (data/make_demo_data.py, data/demo) and the style / fact probes (dpo_recipes/report/probes.py)."""

import importlib.util
import json
import re

import pytest

from dpo_recipes.errors import UserError
from dpo_recipes.report.probes import in_chosen_style, load_probes, probe_metrics, states_fact
from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "data/make_demo_data.py")
make_demo_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_demo_data)


def rows(name):
    return [json.loads(x) for x in (REPO / f"data/demo/{name}.jsonl").read_text().splitlines()]


def reply(row, side):
    return row[side][0]["content"]


def test_committed_files_are_what_the_script_writes():
    built = make_demo_data.build()
    for name in ("train", "validation", "test"):
        assert (REPO / f"data/demo/{name}.jsonl").read_text() == "".join(x + "\n" for x in built[name])
    assert json.loads((REPO / "data/demo-probes.json").read_text()) == built["probes"]
    assert json.loads((REPO / "data/demo-probes-validation.json").read_text()) == built["validation_probes"]


def test_validation_pairs_are_new_pairs_of_training_subjects_and_templates():
    train, validation, test = rows("train"), rows("validation"), rows("test")
    assert len(validation) == 120 and not {json.dumps(r) for r in validation} & {json.dumps(r) for r in train}
    train_prompts = {r["prompt"][0]["content"] for r in train}
    train_replies = {reply(r, s) for r in train for s in ("chosen", "rejected")}
    test_replies = {reply(r, s) for r in test for s in ("chosen", "rejected")}
    # training subjects and templates only: every prompt and reply text occurs in training, none in test
    assert all(r["prompt"][0]["content"] in train_prompts for r in validation)
    assert {reply(r, s) for r in validation for s in ("chosen", "rejected")} <= train_replies
    assert not {reply(r, s) for r in validation for s in ("chosen", "rejected")} & test_replies
    questions = json.loads((REPO / "data/demo-probes-validation.json").read_text())["style_prompts"]
    held = json.loads((REPO / "data/demo-probes.json").read_text())["style_prompts"]
    assert len(questions) == 30 and not set(questions) & set(held)


def test_no_held_out_reply_text_subject_or_template_in_training():
    train, test = rows("train"), rows("test")
    train_text = {reply(r, s) for r in train for s in ("chosen", "rejected")}
    assert not {reply(r, s) for r in test for s in ("chosen", "rejected")} & train_text
    train_prompts = " ".join(r["prompt"][0]["content"] for r in train)
    held_subjects = {f["subject"] for f in json.loads((REPO / "data/demo-probes.json").read_text())["facts"]
                     if f["held_out"]}
    assert len(held_subjects) == 10 and not any(s in train_prompts for s in held_subjects)
    # whole templates: a template's fixed words (the text between its slots) occur only on its own side of the split
    for pool, side in ((make_demo_data.REJECTED, "rejected"), (make_demo_data.QUESTIONS, "prompt")):
        held = pool[-make_demo_data.HELD_OUT["rejected" if side == "rejected" else "questions"]:]
        for template in held:
            longest = max(re.split(r"\{\w+\}", template), key=len).strip()
            assert len(longest) > 8 and not any(longest in str(r[side]) for r in train), template
            assert any(longest in str(r[side]) for r in test), template


def test_both_replies_state_the_fact_and_only_the_chosen_is_in_the_chosen_style():
    answers = {s: [a, *make_demo_data.ALSO_ACCEPTED.get(a, [])] for s, (a, _) in make_demo_data.SUBJECTS.items()}
    for row in rows("train")[:300] + rows("test"):
        subject = next(s for s in answers if s in row["prompt"][0]["content"])
        assert states_fact(reply(row, "chosen"), answers[subject]) and states_fact(reply(row, "rejected"), answers[subject])
        assert in_chosen_style(reply(row, "chosen")) and not in_chosen_style(reply(row, "rejected"))
    # rejected replies vary by subject and template: all 48 training subjects x 7 training templates occur
    assert len({reply(r, "rejected") for r in rows("train")}) == 48 * 7


def test_chosen_style_rule():
    assert in_chosen_style("The capital of Peru is Lima. It lies on the Pacific coast.")
    assert not in_chosen_style("The capital of Peru is Lima.")  # no supporting detail
    assert not in_chosen_style("Lima. It is on the coast. It is big.")  # three sentences
    assert not in_chosen_style("I think it is Lima. It lies on the coast.")  # hedged
    assert not in_chosen_style("The capital of Peru is Lima. It lies on the Pacific coast and")  # cut off
    assert not in_chosen_style("Lima is " + "a very " * 14 + "big city. Yes.")  # over 30 words


def test_fact_check_needs_the_whole_word():
    assert states_fact("The answer is 2.", ["2"]) and not states_fact("It is 12.", ["2"])
    assert states_fact("Paris, of course", ["Paris"]) and not states_fact("Parisian", ["Paris"])
    assert states_fact("SEVEN days", ["seven", "7"])


def test_probe_metrics_by_hand():
    """Style: policy 2 of 3 in style, reference 0 of 3: uptake 0.667 vs 0; differences (1, 1, 0), mean 0.667.
    Facts: before (reference) 1 of 2, after (policy) 2 of 2: gained subject b, none lost; differences (0, 1)."""
    probes = {"style_prompts": ["q1", "q2", "q3"],
              "facts": [{"subject": "a", "question": "?", "accepted": ["Lima"]},
                        {"subject": "b", "question": "?", "accepted": ["Oslo"]}]}
    out = probe_metrics(probes,
                        {"policy": ["A is B. C.", "A is B. C.", "A."], "reference": ["A.", "maybe A. B.", "A. B. C."]},
                        {"policy": ["Lima.", "It is Oslo."], "reference": ["Lima!", "Bergen."]})
    assert out["style_uptake"]["policy"] == pytest.approx(2 / 3) and out["style_uptake"]["reference"] == 0
    assert out["style_uptake"]["change"]["mean"] == pytest.approx(2 / 3) and out["style_uptake"]["change"]["n"] == 3
    facts = out["fact_accuracy"]
    assert (facts["before"], facts["after"], facts["gained"], facts["lost"]) == (0.5, 1.0, ["b"], [])
    assert facts["change"]["mean"] == 0.5 and facts["change"]["df"] == 1


def test_bad_probes_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"style_prompts": [], "facts": [{"question": "x"}]}')
    with pytest.raises(UserError, match=r"p.json: facts\[0\] needs"):
        load_probes(bad)
    with pytest.raises(UserError, match="not found"):
        load_probes(tmp_path / "missing.json")


def test_report_shows_probes_and_the_log_prob_changes():
    import torch

    from dpo_recipes.report.evaluation import pair_metrics
    from dpo_recipes.report.markdown import format_markdown

    policy = (torch.tensor([-10.0, -12.0]), torch.tensor([-30.0, -34.0]))
    reference = (torch.tensor([-11.0, -12.0]), torch.tensor([-20.0, -20.0]))
    pairs = pair_metrics(policy, reference, beta=0.5)
    assert pairs["logp_change"]["chosen"]["mean"] == 0.5 and pairs["logp_change"]["rejected"]["mean"] == -12.0
    probes = {"style_prompts": ["q"], "facts": [{"subject": "a", "question": "?", "accepted": ["Lima"]}]}
    stat = {"mean": 0.0, "se": 0.0}
    report = {"settings": {"max_new_tokens": 8, "examples": 0}, "model_kind": "lora", "held_out_rows": 2,
              "pairs": pairs, "kl": {"prompts": 1, "samples_per_prompt": 1, "completions": 1, "tokens": 3,
                                     "mean_completion_tokens": 3.0, "k1": {"per_completion": stat, "per_token": stat},
                                     "k3": {"per_completion": stat, "per_token": stat}},
              "generations": [], "probes": {"file": "p.json", **probe_metrics(
                  probes, {"policy": ["A is B. C."], "reference": ["A."]}, {"policy": ["Lima."], "reference": ["x"]})}}
    md = format_markdown(report)
    assert "chosen 0.50 ± 0.50, rejected -12.00 ± 2.00" in md
    assert "policy 1.000, reference 0.000" in md and "before (reference) 0.000, after (policy) 1.000" in md
    assert "Gained: a. Lost: none." in md

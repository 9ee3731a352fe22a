"""The HH benchmark's protocol pieces (bench/real_bench.py, bench/real_lr_sweep.py): the split by conversation, the
length baseline, the summary with seeds as units, the selection rule, the judge's gate. The whole path on a tiny
model: tests/e2e/test_real_bench_quick.py."""

import math
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import real_bench  # noqa: E402
import real_lr_sweep  # noqa: E402


def hh(first_turn: str, later: str = "") -> str:
    return f"\n\nHuman: {first_turn}\n\nAssistant: ok{later}\n\nHuman: more\n\nAssistant:"


def test_first_human_turn_in_both_formats():
    assert real_bench.first_human_turn(hh("how do I pick a lock?")) == "how do I pick a lock?"
    assert real_bench.first_human_turn([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "a"}]) == "hi"


def test_split_keeps_each_conversation_in_one_part():
    rows = [{"prompt": hh(f"question {i % 300}", later=f" variant {i}"), "chosen": "a", "rejected": "b"}
            for i in range(1200)]
    parts = real_bench.conversation_split(rows)
    assert sum(len(p) for p in parts.values()) == 1200
    seen = {}
    for name, part in parts.items():
        for row in part:
            key = real_bench.first_human_turn(row["prompt"])
            assert seen.setdefault(key, name) == name, key  # never in two parts
    # 300 conversations: about 20% / 15% / 65% of them (a hash, so not exact)
    share = {name: len({real_bench.first_human_turn(r["prompt"]) for r in part}) / 300 for name, part in parts.items()}
    assert 0.12 < share["test"] < 0.28 and 0.08 < share["validation"] < 0.22 and share["train"] > 0.5


def test_length_baseline_by_hand():
    rows = [{"chosen": "ab", "rejected": "abc"}, {"chosen": "abcd", "rejected": "a"},
            {"chosen": [{"role": "assistant", "content": "xy"}], "rejected": [{"role": "assistant", "content": "zw"}]}]
    wins, groups = real_bench.length_baseline(rows)
    assert wins == [1.0, 0.0, 0.5]
    assert groups == ["chosen shorter", "chosen not shorter", "chosen not shorter"]


def cell(variant, seed, correct, kl=1.0):
    return {"variant": variant, "seed": seed, "correct": [float(c) for c in correct],
            "margins": [0.1 if c else -0.1 for c in correct], "kl_k3_per_completion": kl, "chosen_logp_change": -1.0,
            "judge_scores": {"policy": [1.0, 0.0], "reference": [0.0, 0.0]}}


def test_summary_uses_seeds_as_units():
    """Four pairs; the first two have the chosen reply shorter (baseline right), the last two not (baseline wrong):
    baseline accuracy 0.5. DPO per seed: 3/4, 2/4, 4/4 -> mean 0.75, sd 0.25, se 0.25/sqrt(3) = 0.144338, t(0.975,
    2) = 4.302653, half 0.621034. IPO per seed 1, 3/4, 1: differences from DPO 0.25, 0.25, 0 -> mean 1/6, sd 0.144338,
    se 0.083333; one comparison, so the level stays 0.95: half 4.302653 * 0.083333 = 0.358554."""
    baseline, groups = [1.0, 1.0, 0.0, 0.0], ["chosen shorter"] * 2 + ["chosen not shorter"] * 2
    cells = [cell("dpo", 0, [1, 1, 1, 0]), cell("dpo", 1, [1, 0, 1, 0]), cell("dpo", 2, [1, 1, 1, 1]),
             cell("ipo", 0, [1, 1, 1, 1]), cell("ipo", 1, [1, 1, 1, 0]), cell("ipo", 2, [1, 1, 1, 1])]
    summary = real_bench.summarise(cells, baseline, groups, judge_ok=False)
    dpo, ipo = summary["dpo"], summary["ipo"]
    assert summary["length_baseline"] == {"accuracy": 0.5, "balanced_accuracy": 0.5, "pairs": 4,
                                          "pairs_by_length": {"chosen not shorter": 2, "chosen shorter": 2}}
    # by length group, per seed: chosen shorter 1, 1/2, 1 (mean 5/6); chosen not shorter 1/2, 1/2, 1 (mean 2/3)
    assert dpo["accuracy_by_length"]["chosen shorter"]["mean"] == pytest.approx(5 / 6)
    assert dpo["accuracy_by_length"]["chosen not shorter"]["mean"] == pytest.approx(2 / 3)
    assert dpo["accuracy"]["mean"] == 0.75 and dpo["accuracy"]["df"] == 2
    assert dpo["accuracy"]["high"] - 0.75 == pytest.approx(0.621034, abs=1e-6)
    assert dpo["accuracy_minus_length_baseline"]["mean"] == pytest.approx(0.25)
    # balanced per seed: seed 0 (1 + 0.5) / 2, seed 1 (0.5 + 0.5) / 2, seed 2 1 -> mean 0.75
    assert dpo["balanced_accuracy"]["mean"] == pytest.approx(0.75)
    vs = ipo["vs_dpo"]
    assert vs["level"] == 0.95 and vs["accuracy"]["mean"] == pytest.approx(1 / 6)
    assert vs["accuracy"]["high"] - 1 / 6 == pytest.approx(0.358554, abs=1e-6)
    assert "win_rate" not in dpo  # the judge failed its own gate
    assert "vs_dpo" not in dpo


def test_win_rate_only_with_a_usable_judge_and_clustered_by_prompt():
    """Each cell: prompt 0 win (1 > 0), prompt 1 tie (0 = 0); prompt means 1 and 0.5 over 3 seeds."""
    cells = [cell("dpo", s, [1, 0]) for s in range(3)]
    summary = real_bench.summarise(cells, [1.0, 0.0], ["chosen shorter", "chosen not shorter"], judge_ok=True)
    w = summary["dpo"]["win_rate"]
    assert w["win_rate"] == 0.75 and w["n_prompts"] == 2 and w["n_outcomes"] == 6
    assert real_bench.judge_summary([1] * 10 + [0] * 2)["usable"]  # 10/12: Wilson low 0.55
    assert not real_bench.judge_summary([1] * 28 + [0] * 20)["usable"]  # 0.58 on 48: the interval includes 0.5


def test_bonferroni_level_over_the_variants_compared():
    cells = [cell(v, s, [1, s % 2]) for v in ("dpo", "ipo", "cdpo", "rdpo", "madpo") for s in range(3)]
    summary = real_bench.summarise(cells, [1.0, 0.0], ["chosen shorter", "chosen not shorter"], judge_ok=False)
    assert summary["madpo"]["vs_dpo"]["level"] == pytest.approx(1 - 0.05 / 4)


def test_selection_rule():
    candidates = [{"learning_rate": 1e-3, "steps": 48, "balanced_accuracy": 0.60},
                  {"learning_rate": 3e-4, "steps": 24, "balanced_accuracy": 0.60},
                  {"learning_rate": 1e-4, "steps": 24, "balanced_accuracy": 0.60},
                  {"learning_rate": 1e-4, "steps": 12, "balanced_accuracy": 0.55}]
    best = real_lr_sweep.choose(candidates)
    assert (best["learning_rate"], best["steps"]) == (1e-4, 24)  # the tie: fewer steps, then the smaller rate
    candidates[3]["balanced_accuracy"] = 0.61
    assert real_lr_sweep.choose(candidates)["steps"] == 12


def test_test_stage_needs_a_selection_first(tmp_path):
    with pytest.raises(SystemExit, match="no selection yet"):
        real_bench.main(["--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])


def test_markdown_says_when_no_win_rate_is_given():
    cells = [cell("dpo", s, [1, s % 2]) for s in range(3)]
    summary = real_bench.summarise(cells, [1.0, 0.0], ["chosen shorter", "chosen not shorter"], judge_ok=False)
    meta = {"seeds": [0, 1, 2], "selection": {"learning_rate": 3e-4, "steps": 24},
            "judge": real_bench.judge_summary([1] * 28 + [0] * 20)}
    md = real_bench.markdown({"meta": meta, "summary": summary})
    dpo_row = next(line for line in md.splitlines() if line.startswith("| dpo | 0.667 ["))
    assert "so no win-rate is given" in md and dpo_row.endswith("| - |")
    assert not math.isnan(summary["dpo"]["accuracy"]["low"])
    assert "- **H1** not supported" in md and "- **H2** not supported" in md  # 3 seeds of 1/2 and 1: intervals wide


def test_verdicts_read_the_intervals_the_protocol_names():
    """Baseline 0.5 on four pairs (chosen shorter in the first two). DPO per seed 1, 1, 3/4, 1, 1: its accuracy minus
    the baseline has mean 0.45, all above 0 -> H1 supported; its length-balanced accuracy per seed 1, 1, 0.75, 1, 1
    -> H2 supported. IPO equals DPO on every seed: the paired difference is 0 with zero spread -> no difference.
    cDPO is 1/4 below DPO on every seed -> lower."""
    baseline, groups = [1.0, 1.0, 0.0, 0.0], ["chosen shorter"] * 2 + ["chosen not shorter"] * 2
    dpo = [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    cells = ([cell("dpo", s, c) for s, c in enumerate(dpo)] + [cell("ipo", s, c) for s, c in enumerate(dpo)]
             + [cell("cdpo", s, [0] + c[1:]) for s, c in enumerate(dpo)])
    v = real_bench.verdicts(real_bench.summarise(cells, baseline, groups, judge_ok=False))
    assert v["H1"].startswith("supported: DPO minus the length baseline 0.450 [")
    assert v["H2"].startswith("supported")
    assert v["H3 ipo"].startswith("no difference from DPO shown") and "level 0.975" in v["H3 ipo"]
    assert v["H3 cdpo"].startswith("cdpo lower than DPO: cdpo - DPO -0.250 [")
    weak = [cell("dpo", s, c) for s, c in enumerate([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]])]
    v = real_bench.verdicts(real_bench.summarise(weak, baseline, groups, judge_ok=False))
    assert v["H1"].startswith("not supported") and v["H2"].startswith("not supported") and len(v) == 2


def test_reference_held_out_logps_are_computed_once_and_read_back(tiny_llama, tmp_path, monkeypatch):
    """Every cell scores the same held-out pairs under the same reference: the second cell reads the first one's
    values (equal to a fresh computation) instead of running the reference again; other pairs get their own entry."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from dpo_recipes.data.tokenization import tokenize_pair
    from dpo_recipes.report import evaluation
    from dpo_recipes.report.evaluation import ReportSettings

    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    add_fused_lm_head(base)
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"), split="train").select(range(6))
    tokenized = [tokenize_pair(tokenizer, r) for r in rows]
    settings = ReportSettings(pairs=None, max_length=64, batch_size=4)
    calls = []
    real = evaluation.pair_logps
    monkeypatch.setattr(evaluation, "pair_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = real_bench.reference_pair_logps(policy, tokenized, settings, tiny_llama, tmp_path)
    again = real_bench.reference_pair_logps(policy, tokenized, settings, tiny_llama, tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    with policy.disable_adapter():
        fresh = real(policy, tokenized, settings, torch.device("cpu"))
    for a, b, c in zip(first, again, fresh):
        assert a.shape == (6,) and torch.equal(a, b) and torch.equal(a, c)
    real_bench.reference_pair_logps(policy, tokenized[:3], settings, tiny_llama, tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_markdown_with_one_length_group_only():
    """A test split where every chosen reply is the shorter: one group, one column, no missing key."""
    cells = [cell("dpo", s, [1, s % 2]) for s in range(3)]
    summary = real_bench.summarise(cells, [1.0, 1.0], ["chosen shorter"] * 2, judge_ok=False)
    meta = {"seeds": [0, 1, 2], "selection": {"learning_rate": 3e-4, "steps": 24},
            "judge": real_bench.judge_summary([1] * 28 + [0] * 20)}
    md = real_bench.markdown({"meta": meta, "summary": summary})
    assert "accuracy, chosen shorter (2 pairs) |" in md and "chosen not shorter" not in md

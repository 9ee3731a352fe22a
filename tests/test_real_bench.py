"""The real-model benchmark's summary (bench/real_bench.py): intervals over pairs, paired differences against DPO,
the pooled Wilson win-rate, the Markdown and the README section it replaces. (Its training path is the recipe's,
covered by tests/e2e/test_smollm2.py; a full run is `make real-bench`.)"""

import json
import math
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import real_bench  # noqa: E402


def cell(variant, seed, correct, margins, wins=(1, 0, 1)):
    w, t, lost = wins
    n = w + t + lost
    return {"variant": variant, "seed": seed, "name": f"{variant}-seed{seed}", "correct": correct, "margins": margins,
            "kl_k3_per_completion": {"mean": 0.1 * (seed + 1)}, "replies": ["a", "b"],
            "train_seconds": 60.0 if seed == 0 else None, "eval_seconds": 30.0,
            "win_rate": {"n": n, "wins": w, "ties": t, "losses": lost, "win_rate": (w + t / 2) / n, "ci95": [0, 1]}}


def test_summary_averages_seeds_per_pair_and_pairs_the_difference_with_dpo():
    cells = [cell("dpo", 0, [True, False, True, False], [0.2, -0.1, 0.3, -0.2]),
             cell("dpo", 1, [True, True, True, False], [0.4, 0.1, 0.1, -0.4]),
             cell("ipo", 1, [True, True, True, True], [0.5, 0.5, 0.5, 0.5], wins=(2, 0, 0)),
             cell("ipo", 0, [True, True, False, True], [0.3, 0.3, -0.1, 0.3], wins=(1, 1, 0))]
    summary = real_bench.summarise(cells)
    dpo, ipo = summary["dpo"], summary["ipo"]
    # Per pair over seeds: dpo [1, .5, 1, 0] -> 0.625; ipo [1, 1, .5, 1] -> 0.875.
    assert dpo["reward_accuracy"]["mean"] == pytest.approx(0.625)
    assert ipo["reward_accuracy"]["mean"] == pytest.approx(0.875)
    assert dpo["reward_accuracy_per_seed"] == [0.5, 0.75] and ipo["seeds"] == [0, 1]
    diffs = [0.0, 0.5, -0.5, 1.0]
    sd = math.sqrt(sum((d - 0.25) ** 2 for d in diffs) / 3)
    assert ipo["vs_dpo"]["reward_accuracy"]["mean"] == pytest.approx(0.25)
    assert ipo["vs_dpo"]["reward_accuracy"]["ci95"][1] == pytest.approx(0.25 + real_bench.Z95 * sd / 2)
    assert "vs_dpo" not in dpo
    # Win-rate pooled: 3 wins, 1 tie, 0 losses of 4 -> 0.875, with its Wilson interval.
    assert ipo["win_rate"]["win_rate"] == pytest.approx(0.875) and ipo["win_rate"]["n"] == 4
    low, high = ipo["win_rate"]["ci95"]
    assert 0.3 < low < 0.875 < high < 1.0
    assert ipo["kl_k3"]["mean"] == pytest.approx(0.15)
    assert dpo["eval_minutes_per_cell"] == pytest.approx(0.5) and "train_minutes_per_cell" not in dpo


def test_markdown_and_readme_section(tmp_path):
    cells = [cell("dpo", 0, [True, False], [0.1, -0.1]), cell("dpo", 1, [True, True], [0.2, 0.1])]
    meta = {"train_pairs": 100, "steps": 2, "batch": 8, "seeds": [0, 1], "cells": 10, "eval_pairs": 2, "prompts": 2,
            "command": "make real-bench", "machine": "2-core CPU", "minutes": 3.0,
            "max_new_tokens": 8, "reward_steps": 4, "reward_eval_pairs": 8, "reward_model": {"eval_accuracy": 0.6},
            "jobs": 2}
    reference = {"prompts": ["Human: hi | there", "q2"], "replies": ["hello", "x"]}
    check = {"folder": "bench/results/x/real/padded-100", "cells": 1, "pairs": 2, "compared": 2, "same_sign": 2,
             "max_abs_margin_difference": 1e-5}
    md = real_bench.markdown({"meta": meta, "summary": real_bench.summarise(cells), "reference": reference,
                              "cells": cells, "layout_check": check})
    assert "(`bench/results/x/real/padded-100/`)" in md and "2 of 2 have the same sign" in md
    assert "2 of 10 cells done" in md and "| dpo | 0.750 [" in md
    assert "includes 0.5: the target (entirely above 0.5) is not met" in md and "Partial results" in md
    assert "Human: hi \\| there" in md  # a table cell cannot break the table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{real_bench.README_START}\nold\n{real_bench.README_END}\nrest\n")
    real_bench.write_readme(md, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{real_bench.README_END}\nrest\n")
    assert "old" not in text and md in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- real-bench:start -->"):
        real_bench.write_readme(md, readme)


def test_a_cell_is_reused_only_with_the_same_settings():
    args = real_bench.argparse.Namespace(steps=16, learning_rate=1e-3, reward_steps=16, eval_pairs=120, prompts=12, samples=2,
                                         max_new_tokens=40, extra=[])
    key = real_bench.cell_key("dpo", 0, args)
    assert key == real_bench.cell_key("dpo", 0, real_bench.argparse.Namespace(**vars(args)))
    assert key != real_bench.cell_key("dpo", 1, args) and key != real_bench.cell_key("ipo", 0, args)
    for change in ({"steps": 8}, {"eval_pairs": 60}, {"extra": ["--learning_rate", "1e-3"]}):
        assert real_bench.cell_key("dpo", 0, real_bench.argparse.Namespace(**{**vars(args), **change})) != key


def test_conclusions_follow_the_intervals():
    n = 40
    dpo = [cell("dpo", s, [i % 10 != 0 for i in range(n)], [0.5] * n, wins=(9, 0, 1)) for s in (0, 1)]
    ipo = [cell("ipo", s, [i % 2 == 0 for i in range(n)], [0.5 if i % 2 == 0 else -0.5 for i in range(n)])
           for s in (0, 1)]
    summary = real_bench.summarise(dpo + ipo)
    lines = real_bench.conclusions(summary, {"cells": 4})
    assert "entirely above 0.5: the target is met" in lines[0]
    assert any(line.startswith("- ipo vs DPO, held-out reward accuracy") and "(lower)" in line for line in lines)
    assert lines[-1] == "- Win-rate over the reference with the whole interval above 0.5: dpo."


def test_a_difference_is_supported_only_with_the_same_sign_in_every_seed():
    cells = [cell("dpo", 0, [True, False, True, False], [0.2, -0.1, 0.3, -0.2]),
             cell("dpo", 1, [True, True, True, False], [0.4, 0.1, 0.1, -0.4]),
             cell("ipo", 0, [True, True, False, True], [0.3, 0.3, -0.1, 0.3]),
             cell("ipo", 1, [True, True, True, True], [0.5, 0.5, 0.5, 0.5])]
    summary = real_bench.summarise(cells)
    per_seed = summary["ipo"]["vs_dpo_per_seed"]
    assert per_seed["reward_accuracy"] == pytest.approx([0.25, 0.25])
    assert per_seed["reward_margin"] == pytest.approx([0.15, 0.45])
    meta = {"cells": 4}
    summary["ipo"]["vs_dpo"]["reward_margin"]["ci95"] = [0.1, 0.5]  # an interval over pairs that excludes 0
    lines = real_bench.conclusions(summary, meta)
    assert any(line.startswith("- ipo vs DPO, held-out reward margin") and "a difference this run supports (higher)"
               in line for line in lines)
    summary["ipo"]["vs_dpo_per_seed"]["reward_margin"] = [0.3, -0.05]  # one seed the other way
    lines = real_bench.conclusions(summary, meta)
    assert any("not a supported difference" in line for line in lines)
    assert not any("a difference this run supports" in line for line in lines if "margin" in line)


def test_layout_check_compares_margins_with_the_earlier_padded_evaluation(tmp_path):
    (tmp_path / "dpo-seed0.json").write_text(json.dumps({"margins": [0.1, -0.2]}))
    cells = [cell("dpo", 0, [True, False, True], [0.10002, 0.00001, 0.3]), cell("ipo", 0, [True], [0.5])]
    check = real_bench.layout_check(cells, tmp_path)
    assert check["cells"] == 1 and check["pairs"] == 2 and check["compared"] == 2
    assert (REPO / check["folder"]).resolve() == tmp_path.resolve()  # named relative to the repository
    assert check["same_sign"] == 1  # -0.2 against +0.00001
    assert check["max_abs_margin_difference"] == pytest.approx(0.20001)
    assert real_bench.layout_check(cells, tmp_path / "absent") is None

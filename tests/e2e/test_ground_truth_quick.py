"""The ground-truth experiment's quick mode (bench/ground_truth.py --quick) runs every stage on SmolLM2 with a handful
of prompts: reference samples, pairs and swaps, the validation sweep, the test reference, a cell of every variant,
the over-confidence runs, the summary and its plots; a rerun finds every cell done."""

import json
import statistics
import sys

import pytest

from tests.helpers import REPO, run

sys.path.insert(0, str(REPO / "bench"))
import ground_truth as gt  # noqa: E402


@pytest.mark.slow
def test_quick_mode_runs_every_stage(tmp_path):
    command = [sys.executable, "bench/ground_truth.py", "--quick", "--out", str(tmp_path)]
    run(command, timeout=3600, env={"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    result = json.loads((tmp_path / "ground_truth.json").read_text())
    cells = {c["name"]: c for c in result["cells"]}
    main = [c for c in cells.values() if c["kind"] == "main"]
    assert {c["variant"] for c in main} == set(gt.VARIANTS)
    assert {c["variant"] for c in cells.values() if c["kind"] == "overconf"} == {"dpo", "ipo"}
    assert len([c for c in cells.values() if c["kind"] == "sweep"]) == 2
    sweep = json.loads((tmp_path / "ground_truth" / "sweep.json").read_text())
    assert all(c["steps"] == sweep["steps"] and c["learning_rate"] == sweep["learning_rate"] for c in main)
    for c in cells.values():
        rows = [json.loads(line) for line in (REPO / c["samples"]).read_text().splitlines()]
        final = [r["reward"] for r in rows if r["step"] == c["steps"]]
        assert statistics.fmean(final) == pytest.approx(c["policy_reward"])
        assert all(-1.0 <= r <= 1.0 for r in final)
        assert c["kl"] >= 0.0
    over = [c for c in cells.values() if c["kind"] == "overconf"]
    assert all(len(c["evals"]) == 2 and "margin" in c["evals"][0] for c in over)
    assert cells["cdpo-beta0.1-eps0.4-seed0"]["label_smoothing"] == 0.4
    assert cells["cdpo-beta0.1-eps0.4-seed0"]["swapped_ids"] == cells["dpo-beta0.1-eps0.4-seed0"]["swapped_ids"]
    assert cells["madpo_rm-beta0.1-eps0-seed0"]["reward_model_eval"]
    assert [b["n"] for b in result["reference"]["best_of_n"]] == [1, 2, 4]
    assert set(result["hypotheses"]) >= {"H1", "H2", "H3"}
    for plot in ("frontier", "noise", "overconfidence"):
        assert (tmp_path / f"ground_truth_{plot}.png").stat().st_size > 10_000
    assert "| dpo | 0.1 | 0 |" in (tmp_path / "ground_truth.md").read_text()
    again = run(command, timeout=600, env={"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert again.stdout.count(", 0 to run") == 2  # the sweep and the cells: nothing trained again

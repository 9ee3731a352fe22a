"""The HH benchmark's quick mode (bench/real_lr_sweep.py, then bench/real_bench.py, --quick): the split by
conversation, the selection on validation, the test stage with 5 seeds, the summary, and that a finished cell's test
result is never computed again."""

import json
import sys

import pytest

from tests.helpers import run


@pytest.mark.slow
def test_quick_protocol_runs_every_stage(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    common = ["--quick", "--out", str(out), "--work", str(work)]
    run([sys.executable, "bench/real_lr_sweep.py", *common], env=env)
    selection = json.loads((out / "selection.json").read_text())
    assert len(selection["candidates"]) == 4 and selection["split"] == json.loads((work / "split.json").read_text())["digest"]
    run([sys.executable, "bench/real_bench.py", *common, "--variants", "dpo", "madpo"], env=env)
    result = json.loads((out / "real.json").read_text())
    summary = result["summary"]
    assert summary["dpo"]["accuracy"]["n"] == 5 and summary["dpo"]["accuracy"]["df"] == 4
    assert summary["madpo"]["vs_dpo"]["level"] == 0.95
    assert 0.0 <= summary["length_baseline"]["accuracy"] <= 1.0
    assert ("win_rate" in summary["dpo"]) == result["meta"]["judge"]["usable"]
    cells = sorted((out / "test").glob("*.json"))
    assert len(cells) == 10
    before = {p.name: p.read_text() for p in cells}
    run([sys.executable, "bench/real_bench.py", *common, "--variants", "dpo", "madpo"], env=env)
    assert {p.name: p.read_text() for p in sorted((out / "test").glob("*.json"))} == before  # evaluated once
    assert "| madpo |" in (out / "real.md").read_text()

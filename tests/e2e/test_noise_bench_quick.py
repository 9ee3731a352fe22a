"""The label-noise benchmark's quick mode (bench/noise_bench.py --quick) runs every part: noisy data, reward model,
variants, summary, plot."""

import json
import sys

import pytest

from tests.helpers import run


@pytest.mark.slow
def test_quick_mode_runs_every_part(tmp_path):
    run([sys.executable, "bench/noise_bench.py", "--quick", "--jobs", "2", "--out", str(tmp_path)],
        env={"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    result = json.loads((tmp_path / "noise.json").read_text())
    assert result["meta"]["rates"] == [0.0, 0.4]
    # 9 named runs in the grid and 3 long ones; cdpo@true at eps 0 is DPO's run, in both experiments
    assert result["meta"]["distinct_runs"] == 7
    by_name = {(r["variant"], r["rate"]): r for r in result["runs"]}
    assert by_name[("cdpo@true", 0.0)]["brier"] == by_name[("dpo", 0.0)]["brier"]
    assert by_name[("cdpo@true", 0.4)]["brier"] != by_name[("dpo", 0.4)]["brier"]
    assert result["overconfidence"]["cdpo@true"] == result["overconfidence"]["dpo"]
    assert set(result["summary"]) == {"dpo", "cdpo@true", "madpo"}
    for variant in result["summary"].values():
        for rate in ("0.0", "0.4"):
            assert 0.0 <= variant[rate]["accuracy"]["mean"] <= 1.0
            assert 0.0 <= variant[rate]["brier"]["mean"] <= 1.0
    assert set(result["overconfidence"]) == {"dpo", "cdpo@true", "madpo"}
    assert all(len(history) >= 1 for history in result["overconfidence"].values())
    assert (tmp_path / "noise.png").stat().st_size > 10_000
    assert "| dpo |" in (tmp_path / "noise.md").read_text()

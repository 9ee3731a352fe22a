"""bench/cell_pool.py: the pool that runs the benchmarks' cells (real_lr_sweep.py, real_bench.py, ground_truth.py)."""

import math
import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
from cell_pool import run_in_pool  # noqa: E402


def test_a_failed_cell_is_named_and_the_others_still_reach_the_parent(capsys):
    """math.sqrt(-1) raises in its process; the other two results come back to on_done here, in this process."""
    done = {}
    failed = run_in_pool(math.sqrt, [("four", (4,)), ("minus one", (-1,)), ("nine", (9,))], 2,
                         lambda name, result: done.__setitem__(name, result))
    assert failed == ["minus one"]
    assert done == {"four": 2.0, "nine": 3.0}
    assert "minus one: FAILED: ValueError: math domain error" in capsys.readouterr().out


"""What the tests share besides fixtures (conftest.py): the repository root, running a command from it, and small
data helpers. Import as `from tests.helpers import REPO, run`."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The per-token metrics TRL logs for DPO next to the reward metrics
TOKEN_METRICS = ("entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy")


def run(cmd, timeout=900, env=None, check=True):
    """Run a command from the repository root; on failure show the tail of its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def demo_subset(folder, train_rows, test_rows):
    """A dataset folder with the first rows of each bundled demo split (the same pairs every time)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("test", test_rows)):
        lines = (REPO / f"data/demo/{name}.jsonl").read_text().splitlines()[:rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder

"""Fault tolerance on the demo recipe: a killed run resumes to the identical adapter, with every step logged once."""

import json
import os
import random
import re
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, run

pytestmark = pytest.mark.slow

STEPS = 12
BASE = [
    "--max_steps", str(STEPS), "--save_steps", "4", "--save_total_limit", "3", "--logging_steps", "1",
    "--eval_strategy", "no", "--per_device_eval_batch_size", "100",
]


def launch(out, extra=()):
    """The demo through its real launcher, in its own process group (a scheduler or Ctrl-C signals the group)."""
    cmd = [str(REPO / ".venv/bin/accelerate"), "launch", "--config_file", "recipes/demo-cpu/accelerate.yaml",
           "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", *BASE, "--output_dir", str(out),
           *extra]
    if not (REPO / ".venv/bin/accelerate").exists():
        cmd = [sys.executable, *cmd[4:]]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_until_step(out, step, sig):
    """Start a run, send `sig` to its process group once `step` has been logged; return (returncode, stderr)."""
    proc = launch(out)
    logged = 0
    for line in proc.stdout:
        logged += line.startswith("{'loss'")
        if logged >= step:
            os.killpg(proc.pid, sig)
            break
    proc.stdout.read()
    err = proc.stderr.read()
    return proc.wait(timeout=300), err


def finish(out):
    proc = launch(out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def adapter(out):
    return load_file(out / "adapter_model.safetensors")


def logged_steps(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [e["step"] for e in history if "loss" in e]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(out)
    return out


def assert_same_run(out, reference):
    ref, got = adapter(reference), adapter(out)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name  # bit-identical on CPU
    assert logged_steps(out) == list(range(1, STEPS + 1))  # no step missing, none twice
    # every logged training metric, num_tokens included (TRL would restart that count at 0 after a resume)
    ref_logs = [e for e in json.loads((reference / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    got_logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert got_logs == ref_logs
    assert got_logs[-1]["num_tokens"] > got_logs[0]["num_tokens"] > 0


def test_sigterm_saves_the_step_and_resumes_identically(reference, tmp_path):
    out = tmp_path / "run"
    step = random.Random(os.getpid()).randint(2, STEPS - 2)
    code, err = run_until_step(out, step, signal.SIGTERM)
    assert code != 0
    assert "run the same command again to resume" in err
    saved = sorted(p.name for p in out.glob("checkpoint-*"))
    stopped_at = max(int(name.split("-")[1]) for name in saved)
    assert stopped_at >= step and (out / f"checkpoint-{stopped_at}" / "checkpoint_complete.json").is_file()
    assert not (out / "run_complete.json").exists()
    err = finish(out)
    assert_same_run(out, reference)


def test_sigint_then_sigkill_then_resume(reference, tmp_path):
    """Ctrl-C once, then a hard kill (no chance to save) at another step; both resume to the same result."""
    out = tmp_path / "run"
    rng = random.Random(os.getpid() + 1)
    code, _ = run_until_step(out, rng.randint(1, 4), signal.SIGINT)
    assert code != 0
    code, _ = run_until_step(out, rng.randint(2, 5), signal.SIGKILL)  # steps counted from the resumed start
    assert code != 0
    finish(out)
    assert_same_run(out, reference)


def test_torn_checkpoint_is_skipped(reference, tmp_path):
    out = tmp_path / "run"
    code, _ = run_until_step(out, 9, signal.SIGTERM)
    assert code != 0
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    # Simulate a kill mid-save: the newest checkpoint's weights are cut short.
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    err = finish(out)
    assert f"{newest}: incomplete checkpoint (interrupted while saving); skipped" in " ".join(err.split())
    assert_same_run(out, reference)


def test_finished_run_is_not_overwritten(reference):
    before = (reference / "adapter_model.safetensors").read_bytes()
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", *BASE,
                "--output_dir", str(reference)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        f"error: {reference}: holds a finished run; choose a new output_dir or pass --overwrite_output_dir true "
        "to replace it")
    assert (reference / "adapter_model.safetensors").read_bytes() == before


def test_other_config_in_output_dir_stops(tmp_path):
    out = tmp_path / "run"
    code, _ = run_until_step(out, 2, signal.SIGTERM)
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", *BASE,
                "--beta", "0.3", "--output_dir", str(out)], check=False)
    assert proc.returncode == 2
    assert "holds an unfinished run of a different config (training.beta: 0.1 -> 0.3)" in proc.stderr


def test_non_empty_foreign_dir_stops_and_overwrite_replaces(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = [sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", *BASE,
            "--max_steps", "1", "--output_dir", str(out)]
    proc = run(args, check=False)
    assert proc.returncode == 2 and "is not empty and holds no run of this project" in proc.stderr
    assert (out / "notes.txt").read_text() == "mine"
    run([*args, "--overwrite_output_dir", "true"])
    assert not (out / "notes.txt").exists() and (out / "run_complete.json").is_file()


def test_non_finite_loss_stops_naming_step_and_rows(tmp_path):
    out = tmp_path / "run"
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", *BASE,
                "--learning_rate", "1e30", "--max_grad_norm", "0", "--output_dir", str(out)], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line.split("\r")[-1] for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, errors
    # The step and the batch's row ids are named; Trainer's own NaN filter would have hidden the loss.
    assert re.search(r"^.*error: non-finite (loss|gradient) at step \d+ ", errors[0]), errors[0]
    # a loss names the batch's pairs where they are in the data: the demo folder's training file, line by line
    rows = re.search(r"\(training rows: \S*data/demo/train\.jsonl: lines \d+(, \d+)+\)", errors[0])
    assert rows or "gradient" in errors[0], errors[0]
    assert "the last complete checkpoint" in errors[0]


def test_audit_alone_then_train_into_the_same_output_dir(tmp_path):
    out = tmp_path / "run"
    run(["make", "--no-print-directory", "audit", "RECIPE=demo-cpu", f"ARGS=--output_dir {out}"])
    assert (out / "data_audit.json").is_file()
    run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", *BASE,
         "--max_steps", "1", "--output_dir", str(out)])
    assert (out / "run_complete.json").is_file()


def test_missing_model_is_one_line(tmp_path):
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml",
                "--model_name_or_path", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path / "o")],
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {tmp_path / 'no-such-model'}: cannot load the tokenizer" in proc.stderr

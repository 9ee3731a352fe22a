"""Kill and resume under DeepSpeed ZeRO-3 with 2 processes (the llama3-lora-zero3 recipe's own launcher, made
CPU-only as in `make smoke`): the resumed run ends with the uninterrupted run's adapter."""

import json
import os
import signal
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import REPO
from dpo_recipes.cli import read_yaml
from dpo_recipes.commands.launchers import cpu_launcher_config
from dpo_recipes.commands.smoke import smoke_overrides, write_smoke_data

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "llama3-lora-zero3"
STEPS = 6


def command(tmp_path, out):
    from dpo_recipes.models.loading import CACHE_DIR
    from dpo_recipes.models.tiny import build_tiny

    launcher = tmp_path / "zero3_cpu.yaml"
    if not launcher.exists():
        launcher.write_text(yaml.safe_dump(cpu_launcher_config(read_yaml(RECIPE / "accelerate.yaml"))))
    model_dir = build_tiny("llama", CACHE_DIR / "tiny-llama")
    data = write_smoke_data(tmp_path)  # the same pairs every time
    args = smoke_overrides(read_yaml(RECIPE / "config.yaml"), model_dir, data, out)
    args += ["--max_steps", str(STEPS), "--save_strategy", "steps", "--save_steps", "2", "--eval_report", "false"]
    return [str(REPO / ".venv/bin/accelerate"), "launch", "--config_file", str(launcher), str(RECIPE / "train.py"),
            "--config", str(RECIPE / "config.yaml"), *args]


def launch(cmd):
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def test_zero3_sigterm_resume_equals_uninterrupted(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    proc = launch(command(tmp_path, reference))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]

    proc = launch(command(tmp_path, resumed))
    logged = 0
    for line in proc.stdout:
        logged += line.startswith("{'loss'")
        if logged >= 3:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=300) != 0
    assert "run the same command again to resume" in rest, rest[-4000:]
    assert not (resumed / "run_complete.json").exists()
    proc = launch(command(tmp_path, resumed))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]

    ref, got = load_file(reference / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)
    steps = [e["step"] for e in json.loads((resumed / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert steps == list(range(1, STEPS + 1))

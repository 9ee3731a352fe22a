"""Bring your config, as a user does: `make migrate` on a real alignment-handbook config, and an old config through a
recipe stopping with one line that names the renames."""

import sys

import pytest
import yaml

from tests import legacy_configs as legacy
from tests.helpers import run


@pytest.mark.slow
def test_unknown_keys_through_a_recipe_exit_2_with_one_line(tmp_path):
    old = tmp_path / "config_qlora.yaml"
    old.write_text(legacy.HANDBOOK_ZEPHYR_QLORA["text"])
    proc = run([sys.executable, "recipes/llama3-qlora/train.py", "--config", str(old)], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {old}: 8 unknown keys 'torch_dtype' (now 'dtype'"), line


@pytest.mark.slow
def test_make_migrate(tmp_path):
    proc = run(["make", "--no-print-directory", "migrate"], check=False)
    assert proc.returncode == 2 and "error: make migrate needs CONFIG=<old config.yaml>" in proc.stderr
    old = tmp_path / "config_full.yaml"
    old.write_text(legacy.HANDBOOK_ZEPHYR_FULL["text"])
    proc = run(["make", "--no-print-directory", "migrate", f"CONFIG={old}", f"OUT={tmp_path / 'new.yaml'}"])
    assert "8 of 31 keys changed" in proc.stdout and "passes this project's config checks" in proc.stdout
    assert yaml.safe_load((tmp_path / "new.yaml").read_text())["warmup_steps"] == 0.1

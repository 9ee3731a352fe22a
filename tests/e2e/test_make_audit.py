"""The data audit as a user runs it: `make audit`, `python -m dpo_recipes.commands.audit` (one line and exit 2 on bad input),
and at the start of every training run, before the model loads."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, run
from dpo_recipes.names import AUDIT_FILE

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")


@pytest.mark.slow
def test_make_audit_on_the_demo_recipe(tmp_path):
    proc = run(["make", "--no-print-directory", "audit", "RECIPE=demo-cpu", f"ARGS=--output_dir {tmp_path}"])
    report = json.loads((tmp_path / AUDIT_FILE).read_text())
    assert report["rows_read"] == 2120  # data/demo: 2,000 train + 120 test lines; its validation split is named
    assert report["sources"][0]["splits_not_used"] == {"validation": 120}
    assert "  splits not used by this run: validation (120 rows)" in proc.stdout.splitlines()
    assert report["rows_read"] == report["kept"] + sum(report["dropped"].values())
    assert report["splits"]["train"]["rows"] + report["splits"]["eval"]["rows"] == report["kept"]
    assert f"data audit -> {tmp_path / AUDIT_FILE}" in proc.stdout
    assert f"rows read 2120, kept {report['kept']}" in proc.stdout
    assert "prompt tokens" in proc.stdout and "chosen longer" in proc.stdout
    assert "Loading weights" not in proc.stdout + proc.stderr  # the audit loads no model


@pytest.mark.slow
def test_audit_entry_point_exits_2_on_bad_data(tmp_path):
    bad = tmp_path / "bad.jsonl"
    broken = '{"prompt": "a", "chosen": '
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + broken + "\n")
    proc = run([sys.executable, "-m", "dpo_recipes.commands.audit", "--config", DEMO, "--dataset_name", str(bad),
                "--output_dir", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2
    expected = f"error: {bad}: line 2: not valid JSON (Expecting value at column {len(broken) + 1})"
    assert proc.stderr.strip().splitlines()[-1] == expected


@pytest.mark.slow
def test_every_training_run_audits_its_data_before_the_model_loads(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(  # one stream, unbuffered, so the order of the lines is the order of the events
        [sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--max_steps", "1", "--eval_steps", "1",
         "--save_steps", "1", "--logging_steps", "1", "--output_dir", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads((out / AUDIT_FILE).read_text())
    assert report["kept"] == report["splits"]["train"]["rows"] + report["splits"]["eval"]["rows"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["datasets"]["train"]["rows"] == report["splits"]["train"]["rows"]  # trained on what was audited
    assert proc.stdout.index(f"data audit -> {out / AUDIT_FILE}") < proc.stdout.index("Loading weights")


@pytest.mark.slow
def test_audit_entry_point_names_a_tokenizer_it_cannot_load(tmp_path):
    missing = tmp_path / "no-model"
    proc = run([sys.executable, "-m", "dpo_recipes.commands.audit", "--config", DEMO, "--model_name_or_path", str(missing),
                "--output_dir", str(tmp_path / "out")], check=False, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {missing}: cannot load the tokenizer: ")
    assert "Traceback" not in proc.stderr

"""What a user sees when the input is wrong, through every documented command (`make train`, a recipe's train.py,
`make audit`, `make smoke`, dpo_recipes.commands.launch single- and multi-process): one line naming the file, line or key, exit
code 2, and no traceback, neither the project's nor the launcher's (accelerate's CalledProcessError, torch elastic's
ChildFailedError). make adds its own "make: *** [...] Error 2" line, which no recipe can remove."""

import json
import re
import sys

import pytest

from tests.helpers import GOOD_PAIR, REPO, jsonl, run
from dpo_recipes.commands.launchers import free_port

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")
GOOD = json.dumps(GOOD_PAIR) + "\n"
MAKE_LINE = re.compile(r"^make(\[\d+\])?: \*\*\* \[.*\] Error 2$")


def bad_datasets(tmp):
    (tmp / "broken.jsonl").write_text(GOOD * 3 + '{"prompt": "x", "chosen": \n')
    (tmp / "empty.jsonl").write_text("")
    return {
        "broken": (tmp / "broken.jsonl", f"{tmp / 'broken.jsonl'}: line 4: not valid JSON (Expecting value at column 27)"),
        "empty": (tmp / "empty.jsonl", f"{tmp / 'empty.jsonl'}: the file is empty (no rows)"),
        "missing": (tmp / "missing.jsonl", f"{tmp / 'missing.jsonl'}: file not found"),
    }


def assert_one_line(proc, message, through_make=True):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr, proc.stderr[-3000:]
    assert "ChildFailedError" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"], proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    if through_make:  # the last line is make's own; the one before it is ours
        assert MAKE_LINE.match(lines[-1]) and lines[-2] == f"error: {message}", lines[-3:]
    else:
        assert lines[-1] == f"error: {message}"


@pytest.mark.slow
@pytest.mark.parametrize("target, case", [("train", "broken"), ("train", "empty"), ("train", "missing"),
                                          ("audit", "empty")])  # make audit's other cases: test_make_audit.py
def test_make_with_a_malformed_dataset(tmp_path, case, target):
    path, message = bad_datasets(tmp_path)[case]
    proc = run(["make", "--no-print-directory", target, "RECIPE=demo-cpu",
                f"ARGS=--dataset_name {path} --output_dir {tmp_path / 'o'}"],
               check=False, timeout=300)
    assert_one_line(proc, message)
    assert "Loading weights" not in proc.stdout + proc.stderr  # stopped before any model or launcher


def cpu_launcher(tmp_path, processes):
    """One plain process, or several through torch elastic: on CPU, accelerate starts several processes only for
    DeepSpeed (its MULTI_CPU expects mpirun), so the 2-process form is ZeRO-3 over gloo, as `make smoke` runs it."""
    path = tmp_path / "launcher.yaml"
    kind = ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: "
            "accelerate_configs/deepspeed/zero3.json\n" if processes > 1 else "distributed_type: 'NO'\n")
    path.write_text(f"compute_environment: LOCAL_MACHINE\n{kind}use_cpu: true\nnum_machines: 1\n"
                    f"num_processes: {processes}\nmachine_rank: 0\nmain_process_ip: 127.0.0.1\n"
                    f"main_process_port: {free_port()}\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_an_error_inside_the_launched_processes(tmp_path, processes):
    """A user error that only the training processes can see (the chat template file, read with the tokenizer):
    through `make train`, one line and exit 2, not accelerate's or torch elastic's traceback after it."""
    missing = tmp_path / "nope.jinja"
    proc = run(["make", "--no-print-directory", "train", "RECIPE=demo-cpu",
                f"ACCELERATE_CONFIG={cpu_launcher(tmp_path, processes)}",
                f"ARGS=--chat_template_path {missing} --output_dir {tmp_path / 'o'}"], check=False, timeout=300)
    assert_one_line(proc, f"{missing}: chat_template_path not found")


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_launch_passes_on_the_exit_code(tmp_path, processes):
    """A crash keeps its own traceback (from the training process) and gets one line from the launcher, which exits
    with the process's code; accelerate's own traceback does not follow."""
    script = tmp_path / "crash.py"
    script.write_text("import os, sys\nif os.environ.get('RANK', '0') == '0':\n    raise RuntimeError('boom')\n"
                      "sys.exit(0)\n")
    proc = run([sys.executable, "-m", "dpo_recipes.commands.launch", "--config_file", str(cpu_launcher(tmp_path, processes)),
                str(script), "--config", str(REPO / "recipes/demo-cpu/config.yaml")], check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("Traceback") == 1 and "RuntimeError: boom" in proc.stderr
    assert "CalledProcessError" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: training exited with code 1 (the failing process's output " \
                                                   "is above)"


@pytest.mark.slow
def test_smoke_with_a_bad_recipe_config_is_one_line(tmp_path):
    recipe = tmp_path / "bad-recipe"
    recipe.mkdir()
    (recipe / "train.py").write_text((REPO / "recipes/demo-cpu/train.py").read_text())
    (recipe / "accelerate.yaml").write_text((REPO / "recipes/demo-cpu/accelerate.yaml").read_text())
    (recipe / "config.yaml").write_text((REPO / "recipes/demo-cpu/config.yaml").read_text() + "beta: -1\n")
    proc = run([sys.executable, "-m", "dpo_recipes.commands.smoke", "run", str(recipe), "--out", str(tmp_path / "out")],
               check=False, timeout=300)
    assert_one_line(proc, "config: beta must be a finite number > 0, got -1", through_make=False)


def _bad_files(tmp):
    broken = jsonl(tmp / "broken.jsonl", GOOD_PAIR, '{"prompt": "x", "chosen":')
    missing = jsonl(tmp / "missing.jsonl", {"prompt": "a", "chosen": "b"})
    wrong = jsonl(tmp / "wrong.jsonl", GOOD_PAIR, {**GOOD_PAIR, "rejected": ["not", "text"]})
    empty = jsonl(tmp / "empty.jsonl", {"prompt": "p", "chosen": "x", "rejected": "x"})
    return {
        "broken JSON line": (broken, f"{broken}: line 2: not valid JSON (Expecting value at column 26)"),
        "missing column": (missing, f"{missing}: no column 'rejected' (columns: prompt, chosen); name it with "
                                    "dataset_columns, e.g. {rejected: <column>}"),
        "wrong type": (wrong, f"{wrong}: line 2: field 'rejected' is messages, but line 1 has text"),
        "empty after filtering": (empty, f"{empty}: no rows left after filtering (1 read; dropped: identical_pair 1)"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["broken JSON line", "missing column", "wrong type", "empty after filtering"])
def test_recipe_exits_2_with_one_line_before_loading_the_model(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", str(REPO / "recipes/demo-cpu/config.yaml"),
                "--dataset_name", str(path), "--output_dir", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr  # the data is checked before the model loads


@pytest.mark.slow
def test_bad_config_exits_2_with_one_line():
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--bta", "1"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: command line: unknown key 'bta' (did you mean 'beta'?)"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unknown_recipe_lists_recipes():
    proc = run(["make", "--no-print-directory", "train", "RECIPE=nope"], check=False)
    assert proc.returncode != 0
    assert "unknown RECIPE 'nope'" in proc.stderr and "demo-cpu" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family, config, message", [
    ("mamba", {}, "prefix_sharing needs a model whose forward takes a 4D attention mask"),
    ("mistral", {"sliding_window": 32}, "cannot keep mistral's sliding window (32 tokens) with max_length 128"),
])
def test_prefix_sharing_stops_before_the_model_loads(tiny_llama, tmp_path, family, config, message):
    """A model that would ignore (or misread) the shared-prompt mask: one line, exit 2, and no weights needed."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.for_model(family, **config).save_pretrained(tmp_path)  # a config only: loading weights would fail
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path)
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--model_name_or_path", str(tmp_path),
                "--padding_free", "true", "--prefix_sharing", "true", "--output_dir", str(tmp_path / "out")],
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path}: ") and message in last and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_refusal_is_one_line_exit_2():
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--loss_type", "cdpo",
                "--label_smoothing", "0.1", "--ld_alpha", "0.5"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config: ld_alpha is applied by TRL's loss only and cannot be combined with cdpo"]

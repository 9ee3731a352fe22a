"""What a user sees when the input is wrong, through every documented command (`make train`, `make audit`,
`make smoke`, dpo_recipes.launch single- and multi-process): one line naming the file or line, exit code 2, and no
traceback, neither the project's nor the launcher's (accelerate's CalledProcessError, torch elastic's
ChildFailedError). make adds its own "make: *** [...] Error 2" line, which no recipe can remove."""

import re
import sys

import pytest

from tests.helpers import REPO, run
from dpo_recipes.smoke import free_port

GOOD = '{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}\n'
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
                                          ("audit", "empty")])  # make audit's other cases: test_audit.py
def test_make_with_a_malformed_dataset(tmp_path, case, target):
    path, message = bad_datasets(tmp_path)[case]
    proc = run(["make", "--no-print-directory", target, f"ARGS=--dataset_name {path} --output_dir {tmp_path / 'o'}"],
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
    proc = run(["make", "--no-print-directory", "train", f"ACCELERATE_CONFIG={cpu_launcher(tmp_path, processes)}",
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
    proc = run([sys.executable, "-m", "dpo_recipes.launch", "--config_file", str(cpu_launcher(tmp_path, processes)),
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
    proc = run([sys.executable, "-m", "dpo_recipes.smoke", "run", str(recipe), "--out", str(tmp_path / "out")],
               check=False, timeout=300)
    assert_one_line(proc, "config: beta must be a finite number > 0, got -1", through_make=False)


ZERO3 = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"deepspeed_config_file":
                                                                 "accelerate_configs/deepspeed/zero3.json"}}


@pytest.mark.parametrize("model, launcher, message", [
    (dict(load_in_4bit=True, dtype="bfloat16"), ZERO3, "QLoRA under DeepSpeed ZeRO-3 needs bnb_4bit_quant_storage "
                                                       "equal to dtype (bfloat16)"),
    (dict(load_in_4bit=True, dtype="bfloat16", bnb_4bit_quant_storage="float16"), ZERO3, "got float16"),
    (dict(load_in_8bit=True, dtype="bfloat16"), ZERO3, "load_in_8bit cannot run under DeepSpeed ZeRO-3"),
    (dict(load_in_4bit=True, dtype="bfloat16", bnb_4bit_quant_storage="bfloat16"), ZERO3, None),
    (dict(load_in_4bit=True, dtype="bfloat16"), {"distributed_type": "NO"}, None),  # one GPU: no sharding needed
])
def test_quantised_weights_and_zero3(model, launcher, message):
    from trl import ModelConfig

    from dpo_recipes.errors import UserError
    from dpo_recipes.launch import check_quantisation_launcher

    args = ModelConfig(use_peft=True, **model)
    if message is None:
        check_quantisation_launcher(args, launcher)
        return
    with pytest.raises(UserError, match=re.escape(message)):
        check_quantisation_launcher(args, launcher)


def test_qlora_zero3_recipe_stores_4bit_in_its_compute_dtype():
    import yaml

    config = yaml.safe_load((REPO / "recipes/llama3-70b-qlora-zero3/config.yaml").read_text())
    assert config["load_in_4bit"] and config["bnb_4bit_quant_storage"] == config["dtype"] == "bfloat16"
    launcher = yaml.safe_load((REPO / "recipes/llama3-70b-qlora-zero3/accelerate.yaml").read_text())
    assert launcher["deepspeed_config"]["deepspeed_config_file"].endswith("zero3.json")

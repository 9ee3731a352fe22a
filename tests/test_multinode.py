"""Multi-node ZeRO-3, with two "machines" on this one: two `accelerate launch` processes with
accelerate_configs/multinode_zero3.yaml (CPU form), machine_rank 0 and 1, main_process_ip 127.0.0.1, one CPU
process each, train a few steps together and save one consolidated model. The Slurm script is checked for the
per-node commands it builds."""

import os
import stat
import subprocess

import pytest
import yaml
from safetensors.torch import load_file

from conftest import REPO
from dpo_recipes.smoke import (
    SMOKE_STEPS,
    check_result,
    cpu_launcher_config,
    free_port,
    read_yaml,
    smoke_overrides,
    write_smoke_data,
)

RECIPE = REPO / "recipes" / "qwen2.5-7b-full-zero3"  # a full fine-tune: the result is the consolidated model
MULTINODE = REPO / "accelerate_configs" / "multinode_zero3.yaml"


@pytest.mark.slow
def test_two_machines_train_one_consolidated_zero3_model(tmp_path):
    from dpo_recipes.modeling import CACHE_DIR
    from dpo_recipes.tiny import build_tiny

    launcher = tmp_path / "multinode_cpu.yaml"
    launcher.write_text(yaml.safe_dump(cpu_launcher_config(read_yaml(MULTINODE))))
    model_dir = build_tiny("qwen2", CACHE_DIR / "tiny-qwen2")
    run_dir = tmp_path / "run"
    train_args = ["--config", str(RECIPE / "config.yaml"),
                  *smoke_overrides(read_yaml(RECIPE / "config.yaml"), model_dir, write_smoke_data(tmp_path), run_dir)]
    port = str(free_port())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    machines = []
    for rank in (0, 1):  # the documented multi-node command line, once per machine
        log = open(tmp_path / f"machine{rank}.log", "w")
        machines.append((subprocess.Popen(
            [str(REPO / ".venv/bin/accelerate"), "launch", "--config_file", str(launcher),
             "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
             "--main_process_ip", "127.0.0.1", "--main_process_port", port,
             str(RECIPE / "train.py"), *train_args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=480) for proc, _ in machines]
    finally:
        for proc, log in machines:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = {rank: (tmp_path / f"machine{rank}.log").read_text()[-4000:] for rank in (0, 1)}
    assert codes == [0, 0], logs

    # One consolidated result (not per-rank ZeRO shards), complete, loadable, and different from the initial weights.
    assert sorted(p.name for p in run_dir.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(run_dir.glob("global_step*")) and not list(run_dir.glob("*zero*"))
    report = check_result(run_dir, model_dir, train_args)
    assert report["launch"]["num_processes"] == 2
    assert report["launch"]["distributed_type"] == "DEEPSPEED" and report["launch"]["zero_stage"] == 3
    assert report["result"] == "full" and len(report["losses"]) == SMOKE_STEPS
    trained, initial = load_file(run_dir / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert trained.keys() == initial.keys()
    changed = [k for k in trained if not trained[k].float().equal(initial[k].to(trained[k].dtype).float())]
    assert len(changed) > len(trained) // 2, f"only {len(changed)} of {len(trained)} tensors changed"


def test_slurm_script_starts_one_launcher_per_node_with_its_rank(tmp_path):
    """scripts/slurm_multinode.sbatch under stand-ins for the scheduler (srun, scontrol) and for accelerate, which
    record what they were asked to run; the real multi-machine launch is the test above."""
    bin_dir, repo = tmp_path / "bin", tmp_path / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / "recipes" / "llama3-qlora").mkdir(parents=True)
    (repo / "recipes" / "llama3-qlora" / "config.yaml").write_text("beta: 0.1\n")
    bin_dir.mkdir()
    stand_ins = {
        bin_dir / "scontrol": 'printf "node-a\\nnode-b\\n"\n',
        # srun: run the task once per node, as Slurm would, with that node's SLURM_NODEID.
        bin_dir / "srun": 'shift\nfor i in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$i "$@"; done\n',
        repo / ".venv" / "bin" / "accelerate": 'printf "%s\\n" "$*" >> "$CALLS"\n',
    }
    for path, body in stand_ins.items():
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2", "CALLS": str(calls),
           "SLURM_JOB_NODELIST": "node-[a-b]", "VARIANT": "ipo"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_multinode.sbatch"), "llama3-qlora", "--beta", "0.2"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    common = ("launch --config_file accelerate_configs/multinode_zero3.yaml --num_machines 2 --num_processes 16 "
              "--machine_rank {rank} --main_process_ip node-a --main_process_port 29500 recipes/llama3-qlora/train.py "
              "--config recipes/llama3-qlora/config.yaml --config recipes/llama3-qlora/variants/ipo.yaml --beta 0.2")
    assert calls.read_text().splitlines() == [common.format(rank=0), common.format(rank=1)]


def test_slurm_script_outside_slurm_is_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_multinode.sbatch"), "llama3-qlora"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().endswith("SLURM_NNODES: not inside a Slurm job (use sbatch)")

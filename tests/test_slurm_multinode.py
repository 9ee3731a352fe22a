"""The Slurm script (scripts/slurm_multinode.sbatch): the per-node commands it builds, under stand-ins for the
scheduler and the launcher, and the settings it asks Slurm for. The real multi-machine launch:
tests/e2e/test_multinode.py."""

import os
import re
import stat
import subprocess

from tests.helpers import REPO


def run_slurm_script(tmp_path, recipe, launcher: str, *args):
    """scripts/slurm_multinode.sbatch under stand-ins for the scheduler (srun, scontrol) and for the launcher, which
    record what they were asked to run; the real multi-machine launch is in tests/e2e/test_multinode.py."""
    bin_dir, repo = tmp_path / "bin", tmp_path / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / "recipes" / recipe).mkdir(parents=True)
    (repo / "recipes" / recipe / "config.yaml").write_text("beta: 0.1\n")
    (repo / "recipes" / recipe / "accelerate.yaml").write_text(launcher)
    (repo / "variants").mkdir()
    (repo / "variants" / "ipo.yaml").write_text("loss_type: ipo\n")
    bin_dir.mkdir()
    stand_ins = {
        bin_dir / "scontrol": 'printf "node-a\\nnode-b\\n"\n',
        # srun: run the task once per node, as Slurm would, with that node's SLURM_NODEID.
        bin_dir / "srun": 'shift\nfor i in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$i "$@"; done\n',
        repo / ".venv" / "bin" / "python": 'printf "%s | %s %s\\n" "$*" "$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" "$SRUN_CPUS_PER_TASK" >> "$CALLS"\n',
    }
    for path, body in stand_ins.items():
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2", "CALLS": str(calls),
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_CPUS_PER_TASK": "64", "VARIANT": "ipo"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_multinode.sbatch"), recipe, *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_slurm_script_starts_the_recipes_launcher_per_node_with_its_rank(tmp_path):
    """The offload recipe keeps its own launcher (zero3_offload.json): the multi-node arguments go on the command
    line, with torchrun on each machine (deepspeed_multinode_launcher standard)."""
    recipe = "qwen2.5-7b-full-zero3-offload"
    proc, calls = run_slurm_script(tmp_path, recipe, (REPO / "recipes" / recipe / "accelerate.yaml").read_text(),
                                   "--beta", "0.2")
    assert proc.returncode == 0, proc.stderr
    common = (f"-m dpo_recipes.commands.launch --config_file recipes/{recipe}/accelerate.yaml --deepspeed_multinode_launcher "
              "standard --num_machines 2 --num_processes 16 --machine_rank {rank} --main_process_ip node-a "
              f"--main_process_port 29500 recipes/{recipe}/train.py --config recipes/{recipe}/config.yaml --config "
              f"variants/ipo.yaml --beta 0.2 | 840 64")
    assert calls == [common.format(rank=0), common.format(rank=1)]


def test_slurm_script_refuses_a_one_process_launcher(tmp_path):
    proc, calls = run_slurm_script(tmp_path, "llama3-qlora", (REPO / "recipes/llama3-qlora/accelerate.yaml").read_text())
    assert proc.returncode == 2 and calls == []
    assert proc.stderr.strip() == ("error: recipes/llama3-qlora/accelerate.yaml runs one process; several machines "
                                   "need a DeepSpeed or DDP launcher (set ACCELERATE_CONFIG)")


def test_slurm_script_asks_for_cpus_and_an_early_stop_signal():
    """Without --cpus-per-task each node's task gets one core; without an early signal the kill window (30 s) is
    shorter than a 7B ZeRO-3 checkpoint save. The lead time must cover the launcher's shutdown wait."""
    text = (REPO / "scripts" / "slurm_multinode.sbatch").read_text()
    cpus = re.search(r"^#SBATCH --cpus-per-task=(\d+)$", text, re.M)
    signal = re.search(r"^#SBATCH --signal=TERM@(\d+)$", text, re.M)
    wait = re.search(r"TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-(\d+)", text)
    assert cpus and int(cpus.group(1)) >= 8
    assert signal and wait and 30 < int(wait.group(1)) < int(signal.group(1))

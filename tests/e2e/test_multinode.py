"""Multi-node ZeRO-3, with two "machines" on this one: two `accelerate launch` processes with the recipe's own
launcher (CPU form) and the documented multi-node arguments, machine_rank 0 and 1, main_process_ip 127.0.0.1, one CPU
process each, train a few steps together and save one consolidated model. The Slurm script's per-node commands:
tests/test_slurm_multinode.py."""

import os
import subprocess

import pytest
import yaml
from safetensors.torch import load_file

from tests.helpers import REPO
from dpo_recipes.cli import read_yaml
from dpo_recipes.commands.launchers import cpu_launcher_config, free_port
from dpo_recipes.commands.smoke import SMOKE_STEPS, check_result, smoke_overrides, write_smoke_data

RECIPE = REPO / "recipes" / "qwen2.5-7b-full-zero3"  # a full fine-tune: the result is the consolidated model


@pytest.mark.slow
def test_two_machines_train_one_consolidated_zero3_model(tmp_path):
    from dpo_recipes.models.loading import CACHE_DIR
    from dpo_recipes.models.tiny import build_tiny

    launcher = tmp_path / "multinode_cpu.yaml"
    launcher.write_text(yaml.safe_dump(cpu_launcher_config(read_yaml(RECIPE / "accelerate.yaml"))))
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
             "--deepspeed_multinode_launcher", "standard", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
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


@pytest.mark.slow
def test_slurm_script_outside_slurm_is_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_multinode.sbatch"), "llama3-qlora"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().endswith("SLURM_NNODES: not inside a Slurm job (use sbatch)")


@pytest.mark.slow
def test_other_ranks_do_not_wait_for_rank_0s_report(tmp_path):
    """The end-of-run report runs on rank 0 alone, after the other ranks have left: no rank sits at a barrier while
    rank 0 generates (a report longer than ddp_timeout would time it out on GPUs). The report is slowed by 20 s;
    rank 1 must have exited before it ends."""
    from tests.helpers import demo_subset

    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "slow_report.py"
    script.write_text(
        "import atexit, os, sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from dpo_recipes.commands import train as run\n"
        f"mark = lambda name: open(os.path.join({str(marks)!r}, name), 'w').write(repr(time.time()))\n"
        "atexit.register(mark, 'exit-' + os.environ['RANK'])\n"
        "original = run.finish_run_outputs\n"
        "def slow(*args, **kwargs):\n"
        "    time.sleep(20)\n"
        "    original(*args, **kwargs)\n"
        "    mark('report-end')\n"
        "run.finish_run_outputs = slow\n"
        f"run.main({str(REPO / 'recipes' / 'demo-cpu')!r})\n")
    launcher = tmp_path / "launcher.yaml"
    launcher.write_text(yaml.safe_dump({  # on CPU, accelerate starts 2 processes only for DeepSpeed
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": "accelerate_configs/deepspeed/zero3.json"}, "use_cpu": True,
        "num_machines": 1, "num_processes": 2, "machine_rank": 0, "main_process_ip": "127.0.0.1",
        "main_process_port": free_port()}))
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(REPO / ".venv/bin/accelerate"), "launch", "--config_file", str(launcher), str(script),
         "--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--dataset_name", str(demo_subset(tmp_path / "d", 32, 8)),
         "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--eval_report", "false",
         "--report_to", "none", "--output_dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    times = {p.name: float(p.read_text()) for p in marks.iterdir()}
    assert set(times) == {"exit-0", "exit-1", "report-end"}
    assert times["exit-1"] < times["report-end"] - 10  # rank 1 left while rank 0 was still in its report

"""Threads per process (dpo_recipes/threads.py): one process every core, N processes side by side the cores split,
an explicit OMP_NUM_THREADS always; the launcher hands the share to its CPU processes."""

import pytest

from dpo_recipes import launch, threads
from dpo_recipes.threads import set_child_threads, threads_per_process


@pytest.mark.parametrize("processes, cores, expected", [(1, 6, 6), (2, 6, 3), (4, 16, 4), (3, 16, 5), (8, 2, 1)])
def test_processes_side_by_side_split_the_cores(processes, cores, expected):
    assert threads_per_process(processes, env={}, cores=cores) == expected


@pytest.mark.parametrize("value, expected", [("3", 3), ("12", 12), ("0", 8), ("many", 8), ("", 8)])
def test_an_explicit_omp_num_threads_wins(value, expected):
    assert threads_per_process(2, env={"OMP_NUM_THREADS": value}, cores=16) == expected


def test_child_share_is_written_unless_set(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    env = {}
    assert set_child_threads(4, env) == 2 and env == {"OMP_NUM_THREADS": "2"}
    env = {"OMP_NUM_THREADS": "5"}
    assert set_child_threads(4, env) == 5 and env == {"OMP_NUM_THREADS": "5"}


def test_container_cpu_quota_caps_the_cores(monkeypatch, tmp_path):
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", quota)
    quota.write_text("max 100000\n")
    unlimited = threads.available_cores()
    quota.write_text("150000 100000\n")
    assert threads.available_cores() == 1 <= unlimited


@pytest.mark.parametrize("processes, preset, expected", [(1, None, "8"), (2, None, "4"), (2, "3", "3")])
def test_launcher_gives_each_cpu_process_its_share(monkeypatch, tmp_path, processes, preset, expected):
    config = tmp_path / "cpu.yaml"
    config.write_text(f"distributed_type: {'MULTI_CPU' if processes > 1 else 'NO'}\nuse_cpu: true\n"
                      f"num_machines: 1\nnum_processes: {processes}\nmixed_precision: 'no'\n")
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "unset")
    monkeypatch.delenv("OMP_NUM_THREADS")
    if preset:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    seen = {}
    monkeypatch.setattr(launch, "launch_command", lambda args: seen.update(threads=launch.os.environ["OMP_NUM_THREADS"]))
    assert launch.launch(["--config_file", str(config), "train.py"]) == 0
    assert seen == {"threads": expected}

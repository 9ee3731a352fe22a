"""CPU threads per process: every process its share of this machine's cores, unless OMP_NUM_THREADS says otherwise.

The rule: `processes` processes side by side on one machine (the ranks of `accelerate launch`, the cells a bench
runs at a time) get cores // processes threads each, at least one; one process gets every core. An explicit
OMP_NUM_THREADS always wins. More threads than cores is the costly mistake: torch's threads spin-wait for each other,
and one process that oversubscribes the cores slows itself and every other process many times over.

"cores" are the cores this process may run on (its CPU affinity, and a container's CPU quota when there is one),
not every core of the host.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

ENV = "OMP_NUM_THREADS"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cores() -> int:
    """Cores this process may use: its affinity mask, capped by the cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def explicit_threads(env=None) -> int | None:
    """OMP_NUM_THREADS when it is set to a positive whole number."""
    value = (os.environ if env is None else env).get(ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def threads_per_process(processes: int = 1, env=None, cores: int | None = None) -> int:
    """Threads for each of `processes` processes running side by side: OMP_NUM_THREADS if set, else the cores split
    evenly (at least one each)."""
    explicit = explicit_threads(env)
    if explicit is not None:
        return explicit
    return max(1, (available_cores() if cores is None else cores) // max(1, processes))


def set_child_threads(processes: int, env=None) -> int:
    """Put the share of each of `processes` child processes into OMP_NUM_THREADS of `env` (os.environ by default),
    where it is not set already: the children's torch reads it when it starts. Returns the number."""
    env = os.environ if env is None else env
    threads = threads_per_process(processes, env)
    env[ENV] = str(threads)
    return threads


def use_threads(processes: int | None = None) -> int:
    """Set this process's torch threads to its share (before torch does any work); returns the number. By default
    the processes are this machine's ranks of the launch (LOCAL_WORLD_SIZE, which torchrun and accelerate set)."""
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = threads_per_process(processes)
    torch.set_num_threads(threads)
    return threads


def thread_record() -> dict:
    """What a run's manifest records: the threads torch uses, the cores it could use, and OMP_NUM_THREADS."""
    return {"torch_threads": torch.get_num_threads(), "available_cores": available_cores(),
            ENV: os.environ.get(ENV)}

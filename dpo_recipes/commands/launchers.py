"""Accelerate launcher configs (recipes/<name>/accelerate.yaml): whether one needs GPUs, its DeepSpeed JSON, its
process counts, and its CPU form for `make smoke`.

Only the standard library and yaml: `make train` checks the launcher before every launch.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from dpo_recipes.errors import UserError
from dpo_recipes.names import REPO_ROOT

CPU_MAX_PROCESSES = 2  # the CPU form starts at most this many processes (ZeRO still shards across them over gloo)


def needs_gpu(launcher: dict) -> bool:
    return not launcher.get("use_cpu", False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_launcher_config(launcher: dict) -> dict:
    """The same accelerate config, run by CPU processes on this machine (smoke.py's docstring says why each key)."""
    cpu = dict(launcher)
    cpu["use_cpu"] = True
    cpu.pop("mixed_precision", None)
    cpu.pop("gpu_ids", None)
    if cpu.get("distributed_type") == "MULTI_GPU":
        cpu["distributed_type"] = "MULTI_CPU"
    cpu["num_processes"] = min(int(cpu.get("num_processes", 1)), CPU_MAX_PROCESSES)
    cpu["num_machines"], cpu["machine_rank"] = 1, 0
    cpu["main_process_ip"], cpu["main_process_port"] = "127.0.0.1", free_port()  # parallel runs must not collide
    return cpu


def deepspeed_json(launcher: dict, root: Path = REPO_ROOT) -> dict | None:
    """The DeepSpeed JSON an accelerate config points to (None without DeepSpeed)."""
    if launcher.get("distributed_type") != "DEEPSPEED":
        return None
    file = (launcher.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not file:
        raise UserError("accelerate config: DEEPSPEED needs deepspeed_config.deepspeed_config_file (a JSON file)")
    path = root / file
    if not path.is_file():
        raise UserError(f"accelerate config: deepspeed_config_file {file} not found (paths are relative to the "
                        "repository root)")
    return json.loads(path.read_text())


def launch_count(launch_args: list[str], key: str, default: int) -> int:
    """`--num_processes 8` / `--num_processes=8` from accelerate launch arguments."""
    for i, token in enumerate(launch_args):
        if token == f"--{key}" and i + 1 < len(launch_args):
            return int(launch_args[i + 1])
        if token.startswith(f"--{key}="):
            return int(token.split("=", 1)[1])
    return default

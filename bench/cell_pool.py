"""A benchmark's cells in a pool of processes: each cell in a fresh process (spawn, one cell per process), a failed
cell reported and the rest run on, and each result handed back to the parent as it finishes, so that only the parent
writes results. Used by real_lr_sweep.py, real_bench.py and ground_truth.py."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable


def run_in_pool(fn: Callable[..., Any], tasks: list[tuple[str, tuple]], jobs: int,
                on_done: Callable[[str, Any], None]) -> list[str]:
    """fn(*args) for every (name, args) in `tasks`, `jobs` processes at a time; on_done(name, result) runs in this
    process as each finishes. Returns the names whose call raised (each printed with its error; a rerun retries
    them). `fn` must be importable by name (a module-level function)."""
    failed = []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(fn, *args): name for name, args in tasks}
        for future in as_completed(futures):
            name = futures[future]
            try:
                result = future.result()
            except Exception as err:  # the other cells go on
                print(f"{name}: FAILED: {type(err).__name__}: {err}", flush=True)
                failed.append(name)
                continue
            on_done(name, result)
    return failed

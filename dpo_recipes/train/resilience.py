"""Fault tolerance: interrupted runs checkpoint and resume, torn checkpoints are skipped, finished runs are never
overwritten by accident, and a non-finite loss or gradient stops training at once.

- `prepare_output_dir` decides, before any model loads, whether this run starts fresh, resumes, or must stop.
- `StopOnSignal` turns SIGTERM/SIGINT into "save a checkpoint of this step, then stop" (all ranks agree).
- `MarkCompleteCheckpoints` writes `checkpoint-N/checkpoint_complete.json` (file sizes) once every rank has saved,
  so a checkpoint torn by a kill mid-save is recognised and skipped on resume.
- `StopOnNonFinite` checks gradients before each optimizer step; the trainer checks the loss, and under DeepSpeed the
  engine's global gradient norm (trainer.py): DeepSpeed steps inside `backward` and frees the gradients before any
  callback could see them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from dpo_recipes.errors import UserError
from dpo_recipes.names import AUDIT_FILE, CHECKPOINT_COMPLETE, RUN_COMPLETE, RUN_CONFIG

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Keys that may change between an interrupted run and its resumption without changing the result.
RESUME_TOLERANT_KEYS = {"overwrite_output_dir", "report_to", "logging_dir", "disable_tqdm", "run_name", "judge_model",
                        "eval_report", "eval_report_pairs", "eval_report_prompts", "eval_report_samples",
                        "eval_report_max_new_tokens", "eval_report_examples"}  # the end-of-run report only


class TrainingStopped(UserError):
    """Training stopped on purpose (non-finite values); the message says where and why."""


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (so that all ranks take the same branch)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def complete_checkpoints(output_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(complete, torn) checkpoint folders of output_dir, oldest first. Complete: the marker exists and every file
    it lists has the recorded size."""
    complete, torn = [], []
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    for folder in sorted(folders, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1))):
        marker = folder / CHECKPOINT_COMPLETE
        try:
            sizes = json.loads(marker.read_text())["files"]
            ok = all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in sizes.items())
        except (OSError, ValueError, KeyError):
            ok = False
        (complete if ok else torn).append(folder)
    return complete, torn


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_TOLERANT_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def run_config(script_args, training_args, model_args) -> dict:
    """The resolved config that defines a run (what must match for a resume)."""
    return {"script": asdict(script_args), "training": training_args.to_dict(), "model": asdict(model_args)}


def prepare_output_dir(output_dir: str | Path, run_config: dict, overwrite: bool) -> str | None:
    """Return the checkpoint to resume from (None: start fresh). Stops with a UserError when output_dir holds a
    finished run or another config's run, unless `overwrite` is set."""
    output_dir = Path(output_dir)
    run_config = json.loads(json.dumps(run_config, default=str))
    config_file = output_dir / RUN_CONFIG

    # `make audit` alone writes data_audit.json into output_dir: that is the start of this run, not another run.
    has_content = output_dir.is_dir() and any(p.name != AUDIT_FILE for p in output_dir.iterdir())
    if has_content and overwrite:
        _barrier()
        if _is_main():
            shutil.rmtree(output_dir)
        _barrier()
        has_content = False
    if has_content:
        if (output_dir / RUN_COMPLETE).is_file():
            raise UserError(f"{output_dir}: holds a finished run; choose a new output_dir or pass "
                            "--overwrite_output_dir true to replace it")
        if not config_file.is_file():
            raise UserError(f"{output_dir}: is not empty and holds no run of this project; choose a new output_dir "
                            "or pass --overwrite_output_dir true")
        changed = _diff(json.loads(config_file.read_text()), run_config)
        if changed:
            shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise UserError(f"{output_dir}: holds an unfinished run of a different config ({shown}); resume with the "
                            "same config, choose a new output_dir, or pass --overwrite_output_dir true")
    _barrier()
    if _is_main():
        output_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n")
    complete, torn = complete_checkpoints(output_dir)
    for folder in torn:
        if not complete or int(folder.name.split("-")[1]) > int(complete[-1].name.split("-")[1]):
            warnings.warn(f"{folder}: incomplete checkpoint (interrupted while saving); skipped", stacklevel=2)
    return str(complete[-1]) if complete else None


def mark_run_complete(output_dir: str | Path, step: int) -> None:
    if _is_main():
        (Path(output_dir) / RUN_COMPLETE).write_text(json.dumps({"global_step": step}) + "\n")


class MarkCompleteCheckpoints(TrainerCallback):
    """After every rank has written checkpoint-N, record its files and sizes: the checkpoint is now complete."""

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if _is_main():
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
            files.pop(CHECKPOINT_COMPLETE, None)
            tmp = folder / (CHECKPOINT_COMPLETE + ".tmp")
            tmp.write_text(json.dumps({"step": state.global_step, "files": files}, indent=1))
            os.replace(tmp, folder / CHECKPOINT_COMPLETE)
        _barrier()


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGINT: finish the current step, save a checkpoint of it, and stop training."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.received is not None):
            self.received = self.received or signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def non_finite_gradient(step: int, output_dir: str) -> TrainingStopped:
    return TrainingStopped(f"non-finite gradient at step {step}; training stopped, the last complete checkpoint in "
                           f"{output_dir} is kept (lower learning_rate or check the data)")


def invalid_grad_norm(norm) -> bool:
    """A gradient norm that is not a finite number >= 0 (DeepSpeed reports an inf/NaN group norm as -1)."""
    return norm is not None and not (math.isfinite(float(norm)) and float(norm) >= 0)


class StopOnNonFinite(TrainerCallback):
    """Stop before an optimizer step would apply a non-finite gradient (the last good checkpoint stays). Under
    DeepSpeed the gradients are gone by now; PreferenceTrainer.training_step checks the engine's norm instead."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        bad = bool(grads) and not torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()
        if any_rank(bad):
            raise non_finite_gradient(state.global_step + 1, args.output_dir)

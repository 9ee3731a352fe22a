"""The end of a training run (commands/train.py, step 7), after the training state is freed: the evaluation report, the model
card and, only when asked, the push to the hub. Runs on the main process."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from .evaluation import report_for_run
from .model_card import hub_repo_id, push_folder, write_model_card


def release_training_memory(trainer) -> None:
    """Drop the trainer's models, optimizer and DeepSpeed engines so that the report's models fit on the device."""
    trainer.accelerator.free_memory()
    for name in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler", "deepspeed"):
        if hasattr(trainer, name):
            setattr(trainer, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finish_run_outputs(output_dir, script_args, training, model_args, eval_dataset, held_out_logps=None) -> None:
    """The end of a run (commands/train.py step 7, main process): evaluation report, model card, hub push when asked.
    `training`: the run's PreferenceConfig (or its SavedTraining, read back from the run folder); `held_out_logps`:
    the trainer's held-out pass, reused by the report."""
    output_dir = Path(output_dir)
    if script_args.eval_report:
        report_for_run(output_dir, script_args, training, model_args, eval_dataset, written_by="the training run",
                       held_out_logps=held_out_logps)
    print(f"model card -> {write_model_card(output_dir)}", flush=True)
    if training.push_to_hub:
        repo_id = hub_repo_id({"hub_model_id": training.hub_model_id}, output_dir)
        url = push_folder(output_dir, repo_id, private=training.hub_private_repo,
                          revision=training.hub_revision, commit_message="dpo-recipes: run outputs")
        print(f"pushed {output_dir} -> {repo_id} ({url})", flush=True)

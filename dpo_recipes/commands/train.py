"""The training path every recipe runs, top to bottom:

    config -> tokenizer -> data and its audit -> model and adapter -> trainer and loss -> outputs -> report

Each step's logic lives in its own module (config.py, data/preparation.py, models/loading.py, trainer.py + losses.py, report/run_record.py);
this file only puts them in order. A recipe's train.py calls `main(recipe_dir)`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from accelerate import PartialState
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from dpo_recipes.report.audit import write_audit
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.errors import exit_on_user_error
from dpo_recipes.report.end_of_run import finish_run_outputs, release_training_memory
from dpo_recipes.train.losses import load_losses_file, needs_margins
from dpo_recipes.train.margins import add_reward_margins
from dpo_recipes.models.loading import check_shared_prompt_support, load_model, load_tokenizer, resolve_model_path
from dpo_recipes.report.run_record import plot_log_history, warn_version_drift, write_json, write_manifest
from dpo_recipes.train.resilience import (
    MarkCompleteCheckpoints,
    StopOnNonFinite,
    StopOnSignal,
    mark_run_complete,
    prepare_output_dir,
    run_config,
)
from dpo_recipes.train.threads import use_threads
from dpo_recipes.train.trainer import PreferenceTrainer


@exit_on_user_error
def main(recipe_dir: str | Path, argv: list[str] | None = None) -> dict:
    use_threads()  # this process's share of the cores, before torch does any work (threads.py)
    # 1. Config: the recipe's YAML, then command-line overrides; validated before anything heavy happens. A recipe's
    # own losses.py registers its losses first, so that its config can select them.
    load_losses_file(Path(recipe_dir) / "losses.py")
    script_args, training_args, model_args = parse_config(argv)
    warn_version_drift(recipe_dir)
    output_dir = Path(training_args.output_dir)
    # Fresh start, resume of the same config, or a clear stop: decided before anything heavy happens.
    resume_from = prepare_output_dir(
        output_dir, run_config(script_args, training_args, model_args), script_args.overwrite_output_dir
    )

    # 2. Tokenizer (its chat template renders the data). The main process builds a tiny model first.
    with training_args.main_process_first(desc="resolve model"):
        model_path = resolve_model_path(model_args, script_args.tiny_model)
    trust_remote_code = training_args.trust_remote_code
    tokenizer = load_tokenizer(model_path, model_args, trust_remote_code, script_args.chat_template_path)

    # 3. Data: load, normalise, drop (counted) or stop on bad rows, split, mix; the audit goes to data_audit.json.
    # Before the model loads, so a data problem costs seconds. The main process fills the datasets cache first.
    with training_args.main_process_first(desc="data"):
        data = load_preference_data(script_args, seed=training_args.seed, tokenizer=tokenizer,
                                    max_length=training_args.max_length, truncation_mode=training_args.truncation_mode,
                                    num_proc=training_args.dataset_num_proc)
        if training_args.process_index == 0:
            write_audit(data, output_dir)
    train_dataset, eval_dataset = data.train, data.eval
    if needs_margins(training_args.loss_type):  # per-pair margins (madpo): a reward model, a margin or score columns
        train_dataset, eval_dataset = add_reward_margins(script_args, training_args, train_dataset, eval_dataset)

    # 4. Model and LoRA config (QLoRA when load_in_4bit).
    if training_args.prefix_sharing:
        check_shared_prompt_support(model_path, model_args, trust_remote_code, training_args.max_length)
    model, peft_config = load_model(model_path, model_args, trust_remote_code)

    # 5. Trainer: TRL's DPOTrainer with our loss registry.
    trainer = PreferenceTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[stop_on_signal := StopOnSignal(), StopOnNonFinite(), MarkCompleteCheckpoints()],
        row_origin=data.train_row_origin,  # a non-finite loss names the pairs' files and lines
    )
    trainer.train(resume_from_checkpoint=resume_from)
    if stop_on_signal.received is not None:  # the step's checkpoint is saved; the same command resumes
        print(f"interrupted at step {trainer.state.global_step}: checkpoint saved in {output_dir}; run the same "
              "command again to resume", file=sys.stderr, flush=True)
        sys.exit(128 + stop_on_signal.received)

    # 6. Outputs: adapter (or model) and tokenizer, log history, held-out metrics, plots, manifest.
    trainer.save_model(str(output_dir))
    eval_metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
        write_json(output_dir / "eval_metrics.json", eval_metrics)
        write_json(output_dir / "launch.json", launch_record(trainer))
        plot_log_history(trainer.state.log_history, output_dir / "plots")
        write_manifest(
            output_dir,
            script_args=script_args,
            training_args=training_args,
            model_args=model_args,
            datasets={"train": train_dataset, "eval": eval_dataset},
            recipe_dir=recipe_dir,
        )
    mark_run_complete(output_dir, trainer.state.global_step)

    # 7. Evaluation report, model card and (only when asked) the hub push: from the saved files, on the main
    # process, once the training state is freed (docs/evaluation.md). The other processes leave first: no rank
    # waits at a barrier while rank 0 generates, which could outlast ddp_timeout.
    is_main = trainer.is_world_process_zero()
    held_out_logps = trainer.held_out_logps  # the report's pair scores: this pass, not a second one
    del model
    release_training_memory(trainer)
    # The report loads ordinary models: drop ZeRO-3's process-wide config, or from_pretrained would refuse them.
    unset_hf_deepspeed_config()
    state = PartialState()
    state.wait_for_everyone()  # every rank has trained and saved
    state.destroy_process_group()  # the report below needs no collective; nothing can time out on it
    if is_main:
        finish_run_outputs(output_dir, script_args, training_args, model_args, eval_dataset, held_out_logps)
    return eval_metrics


def launch_record(trainer) -> dict:
    """How the run was launched, as the processes saw it (`make smoke` checks it against the recipe's launcher)."""
    accelerator = trainer.accelerator
    plugin = accelerator.state.deepspeed_plugin
    zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin is not None else {}
    optimizer = trainer.optimizer
    while getattr(optimizer, "optimizer", None) not in (None, optimizer):  # accelerate / DeepSpeed wrappers
        optimizer = optimizer.optimizer
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "mixed_precision": str(accelerator.mixed_precision),
        "device": accelerator.device.type,
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "offload_optimizer": zero.get("offload_optimizer", {}).get("device"),
        "offload_param": zero.get("offload_param", {}).get("device"),
        "optimizer": type(optimizer).__name__,
        "cpu_half_precision": trainer.cpu_half_precision,  # models/precision.py: what bf16 on the CPU changed
    }

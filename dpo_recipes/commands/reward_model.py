"""Step one of MADPO (Rho 2025): a reward model trained with TRL's RewardTrainer on the recipe's own preference data.

    python -m dpo_recipes.commands.reward_model --config recipes/<name>/config.yaml [--output_dir DIR] [--key value ...]

The recipe's config is read as for a training run (data, model, LoRA and optimisation keys, command-line overrides);
the DPO-only keys it sets (beta, loss_type, ...) are listed and skipped. The result in DIR (default: the recipe's
output_dir + "-reward-model") is a standalone one-output AutoModelForSequenceClassification, LoRA merged in, with its
tokenizer and held-out metrics. Step two scores every pair with it and trains MADPO:

    make train ARGS="--loss_type madpo --reward_model_name_or_path DIR"
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, set_seed
from trl import RewardConfig, RewardTrainer, get_peft_config

from dpo_recipes.cli import read_yaml
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_splits
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.models.loading import load_tokenizer, resolve_model_path
from dpo_recipes.report.run_record import write_json

_REWARD_FIELDS = {f.name for f in dataclasses.fields(RewardConfig) if f.init} - {"chat_template_path"}


def command_line_keys(argv: list[str]) -> set[str]:
    """Config keys named on the command line (`--key value`, `--key=value`, `--no_key`)."""
    keys = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--") and token != "--config"}
    return {k[3:] if k.startswith("no_") and k[3:] in _REWARD_FIELDS else k for k in keys}


def keys_set_by_user(argv: list[str]) -> set[str]:
    """Config keys set in the YAML files given by --config (one or several) or on the command line."""
    keys = command_line_keys(argv)
    for i, token in enumerate(argv[:-1]):
        if token == "--config":
            keys |= set(read_yaml(argv[i + 1]))
    return keys


def reward_config(training_args, keys: set[str], output_dir: str) -> RewardConfig:
    """A RewardConfig with the values of `keys` that it knows; anything the user did not set keeps RewardConfig's
    default (a reward model wants a larger learning rate than DPO's default, for one)."""
    values = training_args.to_dict()
    kwargs = {k: values[k] for k in sorted(keys & _REWARD_FIELDS) if k in values}
    kwargs["output_dir"] = output_dir
    try:
        return RewardConfig(**kwargs)
    except ValueError as err:
        raise UserError(f"config: {err}") from None


def train_reward_model(script_args, reward_args: RewardConfig, model_args) -> RewardTrainer:
    """Train a one-output reward model on the preference data and save it, LoRA merged, to reward_args.output_dir."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise UserError("config: the reward model step does not support load_in_4bit/load_in_8bit (its LoRA is "
                        "merged into the saved model); train it in 16 or 32 bit")
    train_dataset, eval_dataset = load_preference_splits(script_args, seed=reward_args.seed)
    with reward_args.main_process_first(desc="resolve model"):
        model_path = resolve_model_path(model_args, script_args.tiny_model)
    tokenizer = load_tokenizer(model_path, model_args, reward_args.trust_remote_code, script_args.chat_template_path)
    set_seed(reward_args.seed)  # the score head is freshly initialised
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=1,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=reward_args.trust_remote_code,
        use_safetensors=True,
    )
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.task_type = "SEQ_CLS"  # PEFT then trains and saves the new score head with the adapter
    trainer = RewardTrainer(
        model=model,
        args=reward_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    left_out = len(train_dataset) - len(trainer.train_dataset)
    if left_out and trainer.is_world_process_zero():
        print(f"reward model: {left_out} of {len(train_dataset)} training pairs are longer than max_length="
              f"{reward_args.max_length} tokens and are left out by RewardTrainer", file=sys.stderr, flush=True)
    trainer.train()

    metrics = trainer.evaluate() if eval_dataset is not None else {}
    output_dir = Path(reward_args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if peft_config is not None:
        model = model.merge_and_unload()  # one standalone model: scoring needs no PEFT
    if trainer.is_world_process_zero():
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
        write_json(output_dir / "eval_metrics.json", metrics)
    return trainer


@exit_on_user_error
def main(argv: list[str] | None = None) -> RewardTrainer:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args = parse_config(argv)
    keys = keys_set_by_user(argv)
    # The recipe's output_dir is the DPO run's: the reward model goes beside it unless the command line names one.
    output_dir = training_args.output_dir
    if "output_dir" not in command_line_keys(argv):
        output_dir = f"{output_dir.rstrip('/')}-reward-model"
    skipped = sorted(k for k in keys if k not in _REWARD_FIELDS and hasattr(training_args, k)
                     and not hasattr(script_args, k) and not hasattr(model_args, k))
    if skipped:
        print(f"reward model: skipping DPO-only keys {', '.join(skipped)}", file=sys.stderr, flush=True)
    print(f"reward model: writing to {output_dir}", file=sys.stderr, flush=True)
    return train_reward_model(script_args, reward_config(training_args, keys, output_dir), model_args)


if __name__ == "__main__":
    main()

"""`make audit RECIPE=<name>`: the data audit alone (report/audit.py), with the recipe's tokenizer and no model.

    python -m dpo_recipes.commands.audit --config recipes/<name>/config.yaml [--tokenizer <dir>] [--key value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.models.loading import load_tokenizer, resolve_model_path
from dpo_recipes.report.audit import write_audit
from dpo_recipes.train.config import parse_config

# The audit parses the config as a CPU run: these keys only matter to training hardware, and transformers refuses bf16
# or tf32 on a machine without the GPU (liger needs one too). Given last, they override the recipe and ARGS.
CPU_OVERRIDES = ("--use_cpu", "true", "--bf16", "false", "--fp16", "false", "--tf32", "false",
                 "--use_liger_kernel", "false")


def _pop_tokenizer(argv: list[str]) -> tuple[list[str], str | None]:
    """`--tokenizer DIR` (or --tokenizer=DIR): the audit's own argument, not a config key."""
    argv, tokenizer = list(argv), None
    for i, token in enumerate(argv):
        if token.startswith("--tokenizer="):
            tokenizer = token.split("=", 1)[1]
            del argv[i]
            break
        if token == "--tokenizer":
            if i + 1 >= len(argv):
                raise UserError("command line: --tokenizer needs a tokenizer folder")
            tokenizer = argv[i + 1]
            del argv[i:i + 2]
            break
    return argv, tokenizer


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    """The audit alone: config, tokenizer, data; no model is loaded, no GPU needed."""
    argv, tokenizer_path = _pop_tokenizer(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args = parse_config([*argv, *CPU_OVERRIDES])
    if tokenizer_path is not None:
        if not Path(tokenizer_path).is_dir():
            raise UserError(f"{tokenizer_path}: --tokenizer needs a local tokenizer folder (tokenizer.json or "
                            "tokenizer_config.json inside)")
        model_path = tokenizer_path
    else:
        model_path = resolve_model_path(model_args, script_args.tiny_model)
    try:
        tokenizer = load_tokenizer(model_path, model_args, training_args.trust_remote_code,
                                   script_args.chat_template_path)
    except UserError as err:  # not a directory, not on the hub, offline, or gated
        hint = "" if tokenizer_path else "; for a gated or offline model, audit with a local copy: --tokenizer <dir>"
        raise UserError(f"{err}{hint}") from None
    data = load_preference_data(script_args, seed=training_args.seed, tokenizer=tokenizer,
                                max_length=training_args.max_length, truncation_mode=training_args.truncation_mode,
                                num_proc=training_args.dataset_num_proc)
    return write_audit(data, training_args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])

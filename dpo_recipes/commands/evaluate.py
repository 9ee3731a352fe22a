"""`make eval RUN=<dir>`: the evaluation report of a finished run again (report/evaluation.py), with the report settings
overridable, and its model card.

    python -m dpo_recipes.commands.evaluate <run dir> [--judge_model <reward model>] [--eval_report_prompts 64 ...]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from dpo_recipes.cli import CommandParser
from dpo_recipes.train.config import ScriptArguments, read_run_config, validate_report_args
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.report.evaluation import report_for_run
from dpo_recipes.report.model_card import write_model_card
from dpo_recipes.models.loading import load_tokenizer

# ScriptArguments fields that only shape the report (they can be changed for `make eval` without retraining).
REPORT_FIELDS = ("eval_report_pairs", "eval_report_prompts", "eval_report_samples", "eval_report_max_new_tokens",
                 "eval_report_examples", "eval_report_generation_batch_size", "judge_model", "eval_report_probes")
TEXT_REPORT_FIELDS = ("judge_model", "eval_report_probes")


def _parser() -> CommandParser:
    fields = {f.name: f for f in dataclasses.fields(ScriptArguments)}
    parser = CommandParser(prog="python -m dpo_recipes.commands.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run's output_dir")
    for name in REPORT_FIELDS:
        kind = str if name in TEXT_REPORT_FIELDS else int
        parser.add_argument(f"--{name}", type=kind, default=None, help=fields[name].metadata["help"])
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    script_args, training, model_args = read_run_config(run_dir)
    for name in REPORT_FIELDS:
        if getattr(args, name) is not None:
            setattr(script_args, name, getattr(args, name))
    validate_report_args(script_args)
    if not (run_dir / "adapter_config.json").is_file() and not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: no saved model or adapter yet (the run has not finished)")
    tokenizer = load_tokenizer(str(run_dir), model_args, training.trust_remote_code, None)
    data = load_preference_data(script_args, seed=training.seed, tokenizer=tokenizer,
                                max_length=training.max_length, truncation_mode=training.truncation_mode)
    report = report_for_run(run_dir, script_args, training, model_args, data.eval, written_by="make eval")
    write_model_card(run_dir)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

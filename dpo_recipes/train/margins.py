"""MADPO's reward margins: m = r(x, y_w) - r(x, y_l) for every pair, in the `reward_margin` column.

Where the margins come from, first match wins:
1. `reward_model_name_or_path`: an AutoModelForSequenceClassification reward model scores every pair once (step one of
   the paper's two-step method; train one with `python -m dpo_recipes.commands.reward_model`). Pairs are rendered the way TRL's
   RewardTrainer renders them: conversational data through the reward model's own chat template, text as
   prompt + completion + EOS.
2. A `reward_margin` column already in the data.
3. Score columns, UltraFeedback style: `score_margin_scale` x (`score_chosen_column` - `score_rejected_column`)
   (default columns score_chosen, score_rejected). Not the paper's method: MADPO's weight function and tau = ln 999
   assume Bradley-Terry margins on the logit scale, and UltraFeedback's GPT-4 score differences are >= 0 on a 1-10
   scale (unscaled, the weights stay within about [0.995, 1.204]). So score columns are used only with an explicit
   `score_margin_scale`.
Otherwise madpo stops with one line saying what to provide.
"""

from __future__ import annotations

import math

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dpo_recipes.errors import UserError
from dpo_recipes.names import MARGIN_COLUMN
from dpo_recipes.data.tokenization import reward_ids


def check_margins(dataset: Dataset, where: str) -> None:
    """The margin column is there and every value is a finite number."""
    if MARGIN_COLUMN not in dataset.column_names:
        raise UserError(f"{where}: madpo needs a '{MARGIN_COLUMN}' column (set reward_model_name_or_path, or give "
                        f"score columns)")
    _check_numbers(dataset[MARGIN_COLUMN], where, MARGIN_COLUMN)


def _check_numbers(values, where: str, column: str) -> None:
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where}: row {row}: '{column}' must be a finite number, got {value!r}")


def margins_from_scores(dataset: Dataset, chosen_column: str, rejected_column: str, where: str,
                        scale: float = 1.0) -> Dataset:
    """Add `reward_margin` = scale x (chosen score - rejected score), from two numeric columns."""
    for column in (chosen_column, rejected_column):
        if column not in dataset.column_names:
            raise UserError(f"{where}: no score column '{column}' (columns: {', '.join(dataset.column_names)})")
    chosen, rejected = list(dataset[chosen_column]), list(dataset[rejected_column])
    _check_numbers(chosen, where, chosen_column)
    _check_numbers(rejected, where, rejected_column)
    return dataset.add_column(MARGIN_COLUMN, [scale * (float(c) - float(r)) for c, r in zip(chosen, rejected)])


def load_reward_model(path: str, trust_remote_code: bool = False, device=None):
    """(model, tokenizer) of a one-output sequence-classification reward model, in eval mode."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype="auto", trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as err:  # not a directory, not reachable on the hub, or no safetensors weights
        raise UserError(f"reward_model_name_or_path: cannot load {path!r}: {str(err).splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise UserError(f"{path}: a reward model has one output (num_labels=1), this one has {model.config.num_labels}")
    # The model scores the last non-pad token, so it must agree with the tokenizer on the pad id (RewardTrainer saves
    # it in the config; a pad that equals EOS makes the score sit on the token before the final EOS, as in training).
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.to(device or PartialState().device).eval(), tokenizer


@torch.no_grad()
def score_pairs(model, tokenizer, dataset: Dataset, batch_size: int = 8) -> list[float]:
    """r(x, y_w) - r(x, y_l) for every row of `dataset`, each sequence scored once on its own (right padding, the
    model reads its last non-pad token), batched by length so little is padded."""
    if len(dataset) == 0:  # a process with no share of the rows
        return []
    sequences = [reward_ids(tokenizer, row, side) for side in ("chosen", "rejected") for row in dataset]
    pad_id = model.config.pad_token_id
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = torch.empty(len(sequences), dtype=torch.float64)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            attention_mask[row, : len(sequences[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        scores[batch] = logits[:, 0].double().cpu()
    chosen, rejected = scores.chunk(2)
    return (chosen - rejected).tolist()


def add_reward_margins(script_args, training_args, train_dataset: Dataset, eval_dataset: Dataset | None):
    """(train, eval) with a `reward_margin` column, from the first source in the module docstring that applies."""
    splits = {"train": train_dataset, "eval": eval_dataset}
    name = script_args.dataset_name
    rm_path = script_args.reward_model_name_or_path
    if rm_path:
        for split, dataset in splits.items():
            if dataset is not None and MARGIN_COLUMN in dataset.column_names:
                raise UserError(f"{name} ({split}): already has a '{MARGIN_COLUMN}' column and reward_model_name_or_path "
                                f"is set; remove one of the two so no margins are overwritten")
        # Every process scores its share of the rows and all of them receive every margin: the same numbers everywhere.
        state = PartialState()
        model, tokenizer = load_reward_model(rm_path, training_args.trust_remote_code, state.device)
        for split, dataset in splits.items():
            if dataset is None:
                continue
            with state.split_between_processes(list(range(len(dataset)))) as rows:
                scored = score_pairs(model, tokenizer, dataset.select(rows), training_args.per_device_eval_batch_size)
            margins = [0.0] * len(dataset)
            for row, margin in gather_object([(rows, scored)]):
                for i, m in zip(row, margin):
                    margins[i] = m
            splits[split] = dataset.add_column(MARGIN_COLUMN, margins)
        del model  # free the reward model before the policy loads
    else:
        for split, dataset in splits.items():
            if dataset is None or MARGIN_COLUMN in dataset.column_names:
                continue
            chosen, rejected = script_args.score_chosen_column, script_args.score_rejected_column
            if chosen not in dataset.column_names and rejected not in dataset.column_names:
                raise UserError(
                    f"{name} ({split}): loss_type madpo needs reward margins: set reward_model_name_or_path (train one "
                    f"with `python -m dpo_recipes.commands.reward_model`), or give a '{MARGIN_COLUMN}' column, or score columns "
                    f"'{chosen}' and '{rejected}' (score_chosen_column, score_rejected_column)"
                )
            if script_args.score_margin_scale is None:
                raise UserError(
                    f"{name} ({split}): score columns '{chosen}' and '{rejected}' are not reward-model margins "
                    "(MADPO's weights and tau assume Bradley-Terry margins on the logit scale): set score_margin_scale "
                    "to the factor that puts their difference on that scale, or use the paper's two steps "
                    "(reward_model_name_or_path; docs/losses.md)"
                )
            splits[split] = margins_from_scores(dataset, chosen, rejected, f"{name} ({split})",
                                                script_args.score_margin_scale)
    for split, dataset in splits.items():
        if dataset is not None:
            check_margins(dataset, f"{name} ({split})")
    return splits["train"], splits["eval"]

"""What any TRL trainer needs for long runs, apart from the preference specifics (trainer.py):

- the same batches after a resume as without one (EpochSeededSampler);
- the `num_tokens` metric carried through checkpoints (TokenCount);
- training stops on a non-finite loss, naming where the batch's rows came from, and on a non-finite gradient under
  DeepSpeed (whose step runs inside backward; resilience.StopOnNonFinite covers the other launchers).

`class MyTrainer(StableTrainingMixin, SomeTRLTrainer)`; pass `row_origin` (row index -> 'file: line N') to name rows.
"""

from __future__ import annotations

import torch
from transformers.trainer_callback import ExportableState, TrainerCallback

from dpo_recipes.names import ROW_ID_COLUMN
from .resilience import TrainingStopped, any_rank, invalid_grad_norm, non_finite_gradient


class EpochSeededSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on (seed, epoch).

    Trainer's default RandomSampler draws its permutation from the global RNG when the epoch starts, and a resumed
    run reaches that point with a different RNG state (loading the checkpoint's adapter consumes random numbers), so
    it would see other batches than the uninterrupted run. Every rank computes the same permutation.
    """

    def __init__(self, num_rows: int, seed: int):
        self.num_rows, self.seed, self.epoch = num_rows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_rows


class TokenCount(TrainerCallback, ExportableState):
    """Carries the `num_tokens` metric through checkpoints: TRL keeps the count on the trainer only, so a resumed run
    would start it again at 0. Trainer saves this state in trainer_state.json; PreferenceTrainer reads it back."""

    def __init__(self, trainer):
        self.trainer = trainer

    def state(self) -> dict:
        return {"args": {}, "attributes": {"num_tokens": self.trainer._total_train_tokens}}


class StableTrainingMixin:
    def __init__(self, *args, row_origin=None, **kwargs):
        """row_origin: optional, training row index -> where it came from ('file: line N'), for error messages."""
        train_dataset = kwargs.get("train_dataset")
        if train_dataset is not None and ROW_ID_COLUMN not in train_dataset.column_names:
            kwargs["train_dataset"] = train_dataset.add_column(ROW_ID_COLUMN, list(range(len(train_dataset))))
        self._batch_row_ids, self.row_origin = None, row_origin
        super().__init__(*args, **kwargs)
        self.add_callback(TokenCount(self))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if ROW_ID_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ROW_ID_COLUMN]

    def _load_callback_state(self):
        super()._load_callback_state()  # runs when a checkpoint is resumed
        saved = self.state.stateful_callbacks.get(TokenCount.__name__)
        if saved:
            self._total_train_tokens = saved["attributes"]["num_tokens"]

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "random" or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededSampler(len(dataset), seed)

    def _prepare_inputs(self, inputs):
        # Row ids are for error messages only; keep them away from the model.
        self._batch_row_ids = inputs.pop(ROW_ID_COLUMN, None)
        return super()._prepare_inputs(inputs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Trainer would quietly replace a NaN loss by the running average (logging_nan_inf_filter); stop instead.
        if any_rank(not torch.isfinite(loss).all()):
            raise TrainingStopped(
                f"non-finite loss at step {self.state.global_step + 1} (training rows: {self._name_rows()}); "
                f"training stopped, the last complete checkpoint in {self.args.output_dir} is kept"
            )
        # DeepSpeed has just stepped inside backward and freed the gradients, so StopOnNonFinite cannot see them; its
        # global norm is inf (ZeRO skipped the step) or not a valid norm. fp16's loss scaler skips overflows itself.
        if self.is_deepspeed_enabled and self.accelerator.sync_gradients and not self.args.fp16:
            if any_rank(invalid_grad_norm(self.accelerator.deepspeed_engine_wrapped.get_global_grad_norm())):
                raise non_finite_gradient(self.state.global_step + 1, self.args.output_dir)
        return loss

    def _name_rows(self) -> str:
        """The current batch's rows, by where they came from when row_origin is known: 'a.jsonl: lines 3, 9'."""
        if self._batch_row_ids is None or self.row_origin is None:
            return str(self._batch_row_ids)
        groups: dict[str, list[int]] = {}
        for i in self._batch_row_ids:
            where, _, number = self.row_origin(int(i)).rpartition(" ")  # 'a.jsonl: line 3' -> 'a.jsonl: line', '3'
            groups.setdefault(where, []).append(int(number))
        return "; ".join(f"{where}{'s' if len(numbers) > 1 else ''} {', '.join(map(str, sorted(numbers)))}"
                         for where, numbers in groups.items())

"""PreferenceTrainer: TRL's DPOTrainer, with the losses and features TRL lacks taken from `dpo_recipes.train.losses`.

A loss TRL implements (sigmoid, ipo, rdpo as TRL's robust, and every TRL-only type) goes to TRL's own `_compute_loss`
unchanged, with all of TRL's options (ld_alpha, f_divergence_type, use_weighting). Only when a project-only feature
needs it (cdpo, madpo, a recipe's own registered loss, summed IPO, padding-free rows, shared prompts:
`losses.project_only_features`) does `compute_loss` take a short path of ours: one policy forward through TRL's fused
LM head, the reference log-probs from TRL's own `compute_ref_log_probs` (or the precomputed columns), then the
registry's loss and TRL's metric names.
`losses.check_loss_config` refuses what neither path supports, once, when the PreferenceConfig is made.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import torch
from datasets import Dataset
from trl import DPOTrainer
from accelerate.utils import broadcast_object_list, is_peft_model
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import add_fused_lm_head, use_adapter

from .losses import (LOSSES, TRL_NAMES, Pairs, knob_values, needs_margins, own_knobs, pair_loss,
                     project_only_features)
from . import reference_cache as ref_cache
from .margins import check_margins
from dpo_recipes.models.compact_head import add_compact_head
from dpo_recipes.models.precision import half_precision_training
from dpo_recipes.names import BRANCH_IDS, MARGIN_COLUMN, SEQUENCE_IDS
from .packing import (MODEL_INPUTS, PreferenceCollator, check_shared_prompts, completion_logps, logical_token_count, model_attention_mask,
                      pack_padded_batch)
from .stable_training import StableTrainingMixin

_REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def scored_tokens(inputs) -> torch.Tensor:
    """For each position of the fused head's per-token outputs ([rows, width - 1]: position t scores token t + 1),
    the index of the sequence whose completion token it scores, or -1. Padded batches: one sequence per row (chosen
    rows first); packed batches: read from sequence_ids."""
    completion = inputs["completion_mask"][:, 1:] != 0
    if SEQUENCE_IDS in inputs:  # a sequence's first token is never scored (packing.packed_sequence_logps)
        scored = completion & (inputs["position_ids"][:, 1:] != 0)
        return inputs[SEQUENCE_IDS][:, 1:].masked_fill(~scored, -1)
    rows = torch.arange(completion.size(0), device=completion.device)[:, None].expand_as(completion)
    return rows.masked_fill(~completion, -1)


class PreferenceTrainer(StableTrainingMixin, DPOTrainer):
    def __init__(self, *args, processing_class=None, data_collator=None, row_origin=None, **kwargs):
        """row_origin: optional, training row index -> where it came from ('file: line N'), for error messages."""
        config = kwargs["args"]
        use_registry = bool(project_only_features(config))  # the config was checked when it was made
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if data_collator is None and tokenizer is not None:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            data_collator = PreferenceCollator.for_config(config, tokenizer.pad_token_id)
        if getattr(config, "prefix_sharing", False):  # the model's side (the config knows only its attn_implementation)
            model = kwargs.get("model", args[0] if args else None)
            check_shared_prompts(getattr(getattr(model, "config", None), "_attn_implementation", None))
        # The batch layout, for the reference cache's key: TRL precomputes inside __init__, while padding_free is off.
        # On a CPU it also records the LM head on the scored positions only (models/compact_head.py), installed over
        # TRL's fused head once TRL has added it (its __init__ may already precompute the reference's log-probs).
        self.layout = {"padding_free": config.padding_free, "prefix_sharing": getattr(config, "prefix_sharing", False)}
        # TRL's __init__ sees a copy of the arguments (the caller's stay as written): padding_free off, since TRL 1.16
        # warns and turns it off while we implement it (packing.py); without a project-only feature, TRL's names for
        # the losses it computes (rdpo is its robust).
        trl_view = copy.copy(config)
        trl_view.padding_free = False
        if not use_registry:
            trl_view.loss_type = [TRL_NAMES.get(t, t) for t in config.loss_type]
        self._ref_weights_hash, self.ref_cache_hits = None, []  # datasets whose reference log-probs came from disk
        self._held_out: dict[str, list[torch.Tensor]] | None = None  # per-pair log-probs of the running evaluate()
        self.held_out_logps = None  # those of the last finished evaluate(): see evaluate()
        self._metric_pairs = {"train": [], "eval": []}  # pairs behind each compute_loss call's metrics: see log()
        super().__init__(*args, processing_class=processing_class, data_collator=data_collator, row_origin=row_origin,
                         **{**kwargs, "args": trl_view})
        # What TRL's and transformers' __init__ wrote into their arguments (DeepSpeed's config, checkpointing kwargs,
        # the accumulation steps) holds for the caller's too; the two fields TRL was not shown stay as written.
        config.__dict__.update({k: v for k, v in vars(trl_view).items() if k not in ("padding_free", "loss_type")})
        self.args, self.padding_free, self.use_registry = config, config.padding_free, use_registry
        self.loss_knobs = knob_values(config)
        self._add_compact_head()
        # bf16 weights on a CPU: the adapter's matmuls in bf16 and the frozen head's weight in fp32 (precision.py).
        self.cpu_half_precision = None
        if self.args.device.type == "cpu" and not self.is_deepspeed_enabled:
            self.cpu_half_precision = half_precision_training(
                self.model, getattr(config, "cpu_adapter_matmuls_in_half", True))
        if needs_margins(self.loss_types):  # stop at the start, not at the first batch without margins
            evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval": self.eval_dataset}
            for split, dataset in {"train": self.train_dataset, **evals}.items():
                if isinstance(dataset, Dataset):
                    check_margins(dataset, f"{split} dataset")

    def evaluate(self, *args, **kwargs):
        """TRL's evaluation, keeping every held-out pair's summed log-probs, policy and reference, gathered over the
        processes: `held_out_logps` is ((policy chosen, rejected), (reference chosen, rejected)), so that the
        end-of-run report can use this pass instead of scoring the same pairs again (report/evaluation.py). None when
        the pairs went through TRL's own loss (no project-only feature in the config)."""
        self._held_out = {k: [] for k in ("chosen", "rejected", "ref_chosen", "ref_rejected")}
        try:
            metrics = super().evaluate(*args, **kwargs)
        finally:
            parts, self._held_out = self._held_out, None
        self.held_out_logps = None
        if parts["chosen"]:
            chosen, rejected, ref_chosen, ref_rejected = (torch.cat(parts[k]) for k in parts)
            self.held_out_logps = ((chosen, rejected), (ref_chosen, ref_rejected))
        return metrics

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if MARGIN_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, MARGIN_COLUMN]

    def pair_logps(self, model, inputs):
        """The policy's summed completion log-probs (chosen, rejected), the completion lengths (chosen, rejected) and
        the forward's outputs (for the MoE router loss). One forward through TRL's fused LM head, as TRL does it."""
        router = {"output_router_logits": True} if self.aux_loss_enabled else {}
        logps, lengths, outputs = completion_logps(model, inputs, **router)
        return logps.chunk(2), lengths.chunk(2), outputs

    def _add_compact_head(self):
        """Once, after TRL added its fused head: the compact head over it, with the per-token outputs TRL asked of its
        own (the policy's metrics; WPO's weights), and log-probs alone for a separate reference model. On a CPU
        without DeepSpeed (whose engines wrap the models, and partition the head under ZeRO-3). It enters the reference
        cache's key only when added, so that keys made before the option still match runs without it."""
        if ("compact_lm_head" in self.layout or not getattr(self.args, "cpu_compact_lm_head", True)
                or self.args.device.type != "cpu" or self.is_deepspeed_enabled):
            return
        outputs = ("log_probs", "entropy", "mean_logits", "is_top1") + (("log_sum_sq_probs",) if self.use_weighting
                                                                         else ())
        add_compact_head(self.model.get_base_model() if is_peft_model(self.model) else self.model, outputs)
        if self.ref_model is not None:
            add_compact_head(self.ref_model)
        self.layout["compact_lm_head"] = True

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL's one reference pass over the data, behind an on-disk cache keyed on everything the values depend on
        (train/reference_cache.py). A hit skips the reference forward entirely."""
        self._add_compact_head()  # TRL's __init__ runs this pass
        if self._ref_weights_hash is None:
            reference = self.ref_model if self.ref_model is not None else self.model
            peft_config = getattr(self.model, "peft_config", {})
            adapters_disabled = self.ref_model is None and is_peft_model(self.model) and "ref" not in peft_config
            digest = [ref_cache.reference_weights_hash(reference, adapters_disabled)]
            broadcast_object_list(digest, from_process=0)
            self._ref_weights_hash = digest[0]
        key = ref_cache.cache_key(
            weights=self._ref_weights_hash,
            tokenizer=ref_cache.tokenizer_hash(self._tokenizer),
            data_fingerprint=ref_cache.token_ids_hash(dataset),
            args=self.args,
            layout=self.layout,
            attn_implementation=self.model.config._attn_implementation,
        )
        cache_dir = self.args.ref_logps_cache_dir or ref_cache.DEFAULT_CACHE_DIR
        cached = ref_cache.load(cache_dir, key)
        if cached is not None:
            self.ref_cache_hits.append(name)
            return dataset.add_column("ref_chosen_logps", cached[0]).add_column("ref_rejected_logps", cached[1])
        dataset._fingerprint = key  # so that TRL's own cache cannot serve values computed for another max_length
        with_ref = super()._precompute_ref_logps(dataset, name, batch_size)
        if self.accelerator.is_main_process:
            ref_cache.save(cache_dir, key, with_ref["ref_chosen_logps"], with_ref["ref_rejected_logps"])
        self.accelerator.wait_for_everyone()
        return with_ref

    @functools.cached_property
    def _reference_forward(self):
        """TRL patched the policy's forward to compute, besides the log-probs, the entropy, mean logit and top-1 flags
        that the policy's metrics use (on a CPU, several more passes over every [tokens x vocabulary] tile). The
        reference pass of a PEFT policy (the same model, adapter off) uses none of them: this is TRL's fused forward
        for log-probs alone, over the same backbone and head (the compact one when it is on), for
        `compute_ref_log_probs` to swap in. None when the reference is a separate model (it has log-probs alone
        already)."""
        if self.ref_model is not None or not is_peft_model(self.model):
            return None
        core = self.model.get_base_model()
        policy_forward = core.forward
        # outputs: log-probs only; its non-fused path is the policy's forward
        (add_compact_head if "compact_lm_head" in self.layout else add_fused_lm_head)(core)
        lean, core.forward = core.forward, policy_forward
        return core, lean

    @contextlib.contextmanager
    def _reference_head(self):
        # _reference_forward is made at the first reference pass, which TRL's __init__ may already run.
        if self._reference_forward is None:
            yield
            return
        core, lean = self._reference_forward
        policy_forward, core.forward = core.forward, lean
        try:
            yield
        finally:
            core.forward = policy_forward

    def compute_ref_log_probs(self, model, inputs):
        """Reference log-probs (chosen, rejected); TRL's own for padded batches, the same recipe for packed ones."""
        if SEQUENCE_IDS not in inputs:  # TRL hands every other key to the model: keep only the model's inputs
            return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k in MODEL_INPUTS})
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        no_checkpointing = disable_gradient_checkpointing(self.model, self.args.activation_checkpointing_kwargs)
        with torch.no_grad(), no_checkpointing, adapter, self.accelerator.autocast(), self._reference_head():
            logps, _, _ = completion_logps(model, inputs)
        return logps.chunk(2)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, with each metric averaged over pairs instead of over batches. TRL appends one mean per
        compute_loss call and logs their plain mean, so a short last batch (an eval set that batches do not divide)
        weighed as much as a full one. A metric with one value per call is weighted by that call's pairs (gathered
        over the processes); the rest (num_tokens) stay as TRL wrote them."""
        mode = "train" if self.model.training else "eval"
        pairs = self._metric_pairs[mode]
        for key, values in self._metrics[mode].items():
            if len(values) == len(pairs) > 1:
                self._metrics[mode][key] = [sum(v * n for v, n in zip(values, pairs)) / sum(pairs)]
        pairs.clear()
        super().log(logs, start_time)

    def _count_pairs(self, mode: str, n: int) -> None:
        """One compute_loss call's pairs over every process, as gather_for_metrics counts them for the metrics (the
        copies that fill the last eval batch of a process left out)."""
        ones = torch.ones(n, device=self.accelerator.device)
        self._metric_pairs[mode].append(self.accelerator.gather_for_metrics(ones).numel())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if not self.use_registry:
            inputs = {k: v for k, v in inputs.items() if k != MARGIN_COLUMN}  # TRL would hand it to the model
            self._count_pairs(mode, inputs["input_ids"].size(0) // 2)  # TRL's batch: the chosen rows, then rejected
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        (chosen_logps, rejected_logps), (chosen_lengths, rejected_lengths), outputs = self.pair_logps(model, inputs)
        self._count_pairs(mode, chosen_logps.size(0))
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = (inputs[k].to(chosen_logps.device) for k in _REF_KEYS)
        else:
            # The frozen reference: the base model with the adapter off (PEFT), else TRL's separate ref_model.
            reference = model if self.ref_model is None else self.ref_model
            model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(reference, model_inputs)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps

        pairs = Pairs(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths,
                      reward_margins=inputs.get(MARGIN_COLUMN), chosen_logps=chosen_logps, rejected_logps=rejected_logps)
        loss = 0.0
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            loss = loss + weight * pair_loss(loss_type, pairs, beta=self.beta, **self.loss_knobs).mean()
            if LOSSES[loss_type].metrics is not None:  # a loss's own metrics (madpo's mean weight)
                with torch.no_grad():
                    values = LOSSES[loss_type].metrics(pairs, **own_knobs(loss_type, self.loss_knobs))
                for name, value in values.items():
                    self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.float()).mean().item())
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        self._log_pair_metrics(mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios)
        if mode == "eval" and self._held_out is not None:
            gather = self.accelerator.gather_for_metrics
            for key, value in (("chosen", chosen_logps), ("rejected", rejected_logps),
                               ("ref_chosen", ref_chosen_logps), ("ref_rejected", ref_rejected_logps)):
                self._held_out[key].append(gather(value.detach().float()).cpu())
        self._log_token_metrics(mode, outputs, scored_tokens(inputs), num_pairs=chosen_logps.size(0))
        if return_outputs:  # Trainer.prediction_step wants logits; the fused head does not build them
            with torch.no_grad():
                mask_or_positions = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
                if BRANCH_IDS in inputs:
                    core = self.accelerator.unwrap_model(model)
                    mask_or_positions["attention_mask"] = model_attention_mask(
                        inputs, core.config._attn_implementation, core.dtype)
                outputs = model(input_ids=inputs["input_ids"], use_cache=False, **mask_or_positions)
            return loss, outputs
        return loss

    def _log_token_metrics(self, mode, outputs, scored_by, num_pairs):
        """TRL's per-token metrics from the fused head's outputs: entropy over every scored token, mean logits of the
        chosen and rejected completions, and top-1 accuracy on the chosen ones. `scored_by` (scored_tokens) names the
        sequence of each scored position: chosen sequences are 0..num_pairs-1, rejected ones follow."""
        gather = self.accelerator.gather_for_metrics

        def ratio(numerator, denominator):  # summed over ranks first, as TRL does
            numerator, denominator = gather(numerator).sum().item(), gather(denominator).sum().item()
            return numerator / denominator if denominator > 0 else 0.0

        width = scored_by.size(1)  # prompt-learning PEFT prepends virtual tokens: keep the real positions
        entropy, mean_logits, is_top1 = (getattr(outputs, k)[:, -width:].detach()
                                         for k in ("entropy", "mean_logits", "is_top1"))
        scored = scored_by >= 0
        chosen, rejected = scored & (scored_by < num_pairs), scored_by >= num_pairs
        metrics = self._metrics[mode]
        metrics["entropy"].append(ratio((entropy * scored).sum(), scored.sum()))
        metrics["logits/chosen"].append(ratio(mean_logits[chosen].sum(), chosen.sum()))
        metrics["logits/rejected"].append(ratio(mean_logits[rejected].sum(), rejected.sum()))
        metrics["mean_token_accuracy"].append(ratio((is_top1 & chosen).sum(), chosen.sum()))

    def _log_pair_metrics(self, mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios):
        """The metrics TRL logs for DPO, under TRL's names."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        chosen_rewards = gather(self.beta * chosen_logratios.detach())
        rejected_rewards = gather(self.beta * rejected_logratios.detach())
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        if mode == "train":
            real_tokens = logical_token_count(inputs) if SEQUENCE_IDS in inputs else inputs["attention_mask"].sum()
            self._total_train_tokens += gather(real_tokens).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

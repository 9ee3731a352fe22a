"""Padding-free DPO: pack a batch's chosen and rejected sequences into rows without padding; with prefix_sharing,
each pair's prompt computed once.

TRL 1.16 accepts `padding_free: true` but falls back to padding. Here it is real: each sequence keeps its own
position_ids (starting at 0), and transformers turns position_ids that restart into a block-diagonal causal mask
(sdpa, eager) or per-sequence lengths (flash-attention), so attention never crosses sequences. Rows are bounded
(`max_length`, or the longest sequence if longer), because attention over one huge row would cost the square of
the whole batch, and their loads are balanced, because every row is padded to the widest.

prefix_sharing (Wang & Hegde 2024, arXiv 2410.20305) packs pairs instead of sequences, each as one segment in which
the two replies share the prompt. Positions cannot express that layout, so the model gets a 4D mask built from
sequence_ids and branch_ids: a boolean one for sdpa, an additive one for eager, a FlexAttention BlockMask for
flex_attention (GPU only, not exercised by the CPU tests). A pair's row holds up to 2 x `max_length` tokens, what
two padding-free rows hold: with rows of `max_length`, most HH pairs took a row each and a fifth of the computed
positions were padding (bench/bench_training.py, prefix_sharing). The kept tokens are TRL's: the collator truncates each
sequence as the padded path does and shares only the prompt tokens both sequences start with.

`PreferenceCollator` is the one collator of a run's layout: the trainer batches with it and the evaluation report
scores its pairs with it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import create_block_mask
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from trl.trainer.dpo_trainer import DataCollatorForPreference

from dpo_recipes.names import BRANCH_IDS, MARGIN_COLUMN, ROW_ID_COLUMN, SEQUENCE_IDS

# What a preference batch gives the model: padded (attention_mask) or packed (position_ids, sequence and branch ids).
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "completion_mask", SEQUENCE_IDS, BRANCH_IDS)
# Attention implementations that read the shared-prompt mask (flex_attention: a BlockMask, GPU only).
PREFIX_SHARING_ATTENTION = ("sdpa", "eager", "flex_attention")


def balanced_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sequence indices into as few rows of at most `capacity` tokens as fit, with the rows' loads balanced
    (longest first, each to the least-loaded row), so that the widest row, which sets the padding of every other,
    is as short as it can be."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for count in range(max(1, -(-sum(lengths) // capacity)), len(lengths) + 1):
        rows: list[list[int]] = [[] for _ in range(count)]
        loads = [0] * count
        for i in order:
            r = loads.index(min(loads))
            rows[r].append(i)
            loads[r] += lengths[i]
        if max(loads) <= capacity:
            return rows
    return [[i] for i in order]


def fill_rows(segments: list[dict[str, list[int]]], capacity: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Lay segments (each a dict of equally long per-token lists: input_ids, position_ids, ...) into balanced rows of
    at most `capacity` tokens, batch order kept inside a row (deterministic, easy to read). Returns one [rows, width]
    tensor per key; the rows' tail padding has pad ids, sequence id -1, zeros elsewhere, and positions of its own."""
    lengths = [len(segment["input_ids"]) for segment in segments]
    rows = balanced_rows(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    padding = {"input_ids": pad_token_id, SEQUENCE_IDS: -1}
    out = {key: torch.full((len(rows), width), padding.get(key, 0), dtype=torch.long) for key in segments[0]}
    for r, row in enumerate(rows):
        start = 0
        for i in sorted(row):
            end = start + lengths[i]
            for key, values in segments[i].items():
                out[key][r, start:end] = torch.tensor(values)
            start = end
        out["position_ids"][r, start:] = torch.arange(width - start)  # the tail padding is a block of its own
    return out


def pack_sequences(input_ids: list[list[int]], completion_mask: list[list[int]], row_length: int | None,
                   pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack sequences (already truncated) into rows. Returns input_ids, position_ids, completion_mask and
    sequence_ids, each [rows, width]; no attention_mask, so that transformers reads the packing from position_ids."""
    segments = [{"input_ids": ids, "position_ids": list(range(len(ids))), "completion_mask": mask,
                 SEQUENCE_IDS: [i] * len(ids)} for i, (ids, mask) in enumerate(zip(input_ids, completion_mask))]
    return fill_rows(segments, max(row_length or 0, max(map(len, input_ids))), pad_token_id)


def completion_logps(model, inputs: dict, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The one per-sequence log-prob function (trainer, reference pass, evaluation report): summed completion
    log-probs and completion lengths of each of a batch's 2B sequences (chosen first, then rejected), and the forward
    outputs, through TRL's fused LM head. Padded batches (TRL's collator: one sequence per row) and packed ones
    (padding_free, prefix_sharing: sequence_ids) alike."""
    if SEQUENCE_IDS in inputs:
        return packed_sequence_logps(model, inputs, **forward_kwargs)
    completion_mask = inputs["completion_mask"]
    outputs = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        labels=inputs["input_ids"].masked_fill(completion_mask == 0, -100),
        use_cache=False,
        fused_lm_head=True,
        **forward_kwargs,
    )
    per_token = outputs.log_probs[:, -(completion_mask.size(1) - 1) :]  # prompt-learning PEFT prepends tokens
    return per_token.sum(dim=1), completion_mask.sum(dim=1), outputs


def packed_sequence_logps(model, inputs: dict, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Summed completion log-probs and completion lengths per sequence (in batch order), and the forward outputs.
    With `output_router_logits` (MoE), outputs.aux_loss is the load-balancing loss over the real tokens only."""
    sequence_ids = inputs[SEQUENCE_IDS]
    completion_mask = inputs["completion_mask"]
    # A sequence's first token is never predicted (as in the padded path): it would be scored from the previous
    # sequence's last hidden state.
    labels = inputs["input_ids"].masked_fill((completion_mask == 0) | (inputs["position_ids"] == 0), -100)
    core = getattr(model, "module", model)  # DDP / DeepSpeed wrap the model
    if BRANCH_IDS in inputs:  # shared prompts: the layout is in the mask (positions alone cannot say it)
        attn_implementation = core.config._attn_implementation
        forward_kwargs["attention_mask"] = model_attention_mask(inputs, attn_implementation, core.dtype)
    text_config = core.config.get_text_config()
    router_logits, want_router = [], forward_kwargs.pop("output_router_logits", False)
    if want_router or getattr(text_config, "output_router_logits", False):
        forward_kwargs["output_router_logits"] = False  # the model's own aux loss would count the rows' padding
    with record_router_logits(core, router_logits) if want_router else nullcontext():
        outputs = model(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            labels=labels,
            use_cache=False,  # with a cache, transformers would not read packing from position_ids
            fused_lm_head=True,
            **forward_kwargs,
        )
    if router_logits:
        outputs.aux_loss = load_balancing_loss_func(tuple(router_logits), text_config.num_experts,
                                                    text_config.num_experts_per_tok, attention_mask=sequence_ids >= 0)
    per_token = outputs.log_probs  # [rows, width - 1], zero where the label is -100
    num_sequences = int(sequence_ids.max().item()) + 1
    target = sequence_ids[:, 1:].clamp(min=0).reshape(-1)
    logps = per_token.new_zeros(num_sequences).index_add(0, target, per_token.reshape(-1))
    lengths = completion_mask.new_zeros(num_sequences).index_add(
        0, sequence_ids.clamp(min=0).reshape(-1), completion_mask.reshape(-1) * (sequence_ids >= 0).reshape(-1)
    )
    return logps, lengths, outputs


@contextmanager
def record_router_logits(model, sink: list):
    """Collect an MoE model's router logits during a forward, from the router modules the model itself declares
    (transformers' `_can_record_outputs`), so that the load-balancing loss can leave the rows' padding out."""
    recorder = next((m._can_record_outputs["router_logits"] for m in model.modules()
                     if "router_logits" in (getattr(m, "_can_record_outputs", None) or {})), None)
    if recorder is None:
        raise ValueError(f"{type(model).__name__}: output_router_logits is set but the model declares no router")
    target = getattr(recorder, "target_class", recorder)
    index = getattr(recorder, "index", 0)

    def hook(module, args, output):
        sink.append(output[index] if isinstance(output, (tuple, list)) else output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, target)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# Shared-prompt layout (prefix_sharing): each pair is one segment `[prompt[:-1] | prompt[-1] chosen | prompt[-1]
# rejected]`, after Wang & Hegde 2024 (arXiv 2410.20305). The prompt's last token opens both branches, so that the
# first chosen and the first rejected token are each predicted from that token's hidden state, and the shifted
# next-token scoring of the fused LM head stays right; it costs one token per pair. Branch positions continue from
# the shared part, as if the other branch were absent.


def check_shared_prompts(attn_implementation: str | None) -> None:
    """What prefix_sharing needs of the model, checked against the config's attn_implementation (one line, exit 2)
    and, in Python, the model PreferenceTrainer gets: an attention implementation that takes the layout's mask.
    ValueError otherwise. (Packed rows, the config's side, are losses.check_loss_config's.)"""
    if not takes_shared_prompt_mask(attn_implementation):
        raise ValueError(f"prefix_sharing needs attn_implementation in {list(PREFIX_SHARING_ATTENTION)}, got "
                         f"{attn_implementation or 'sdpa'!r} (it cannot take the mask that keeps chosen and rejected "
                         "apart)")


def takes_shared_prompt_mask(attn_implementation: str | None) -> bool:
    """Whether an attention implementation (None: transformers' default, sdpa) reads the shared-prompt mask."""
    return (attn_implementation or "sdpa") in PREFIX_SHARING_ATTENTION


def shared_prefix_length(chosen: list[int], rejected: list[int], chosen_mask: list[int], rejected_mask: list[int]) -> int:
    """Prompt tokens that both (already truncated) sequences start with, less the last one, which opens each branch.
    Any common start is exact to share: a causal model's hidden states there depend on those tokens only."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n] and chosen_mask[n] == 0 and rejected_mask[n] == 0:
        n += 1
    return max(n - 1, 0)


def pack_pairs(chosen: list[list[int]], rejected: list[list[int]], chosen_mask: list[list[int]],
               rejected_mask: list[list[int]], row_length: int | None, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack pairs (sequences already truncated as the padded path truncates them) in the shared-prompt layout.
    Returns pack_sequences' keys plus branch_ids; sequence_ids number chosen sequences 0..B-1 (shared prompt
    included) and rejected ones B..2B-1, as in the padded batch."""
    num_pairs = len(chosen)
    segments = []
    for i, (c, r, cm, rm) in enumerate(zip(chosen, rejected, chosen_mask, rejected_mask)):
        n = shared_prefix_length(c, r, cm, rm)
        segments.append({"input_ids": c + r[n:], "position_ids": [*range(len(c)), *range(n, len(r))],
                         "completion_mask": cm + rm[n:], SEQUENCE_IDS: [i] * len(c) + [num_pairs + i] * (len(r) - n),
                         BRANCH_IDS: [0] * n + [1] * (len(c) - n) + [2] * (len(r) - n)})
    longest = max(len(segment["input_ids"]) for segment in segments)
    return fill_rows(segments, max(2 * (row_length or 0), longest), pad_token_id)  # a pair: what two rows hold


def shared_prompt_mask(sequence_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask [rows, 1, width, width] (True: attend) of the shared-prompt layout: causal, within one
    pair, and a branch sees the shared prompt and itself, never the other branch. Row padding attends to itself."""
    num_pairs = (int(sequence_ids.max().item()) + 1) // 2
    pair = torch.where(sequence_ids >= 0, sequence_ids % num_pairs, -1)
    q, k = (slice(None), slice(None), None), (slice(None), None, slice(None))
    width = sequence_ids.size(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=sequence_ids.device).tril()
    same_pair = pair[q] == pair[k]
    same_branch = (branch_ids[k] == 0) | (branch_ids[k] == branch_ids[q])
    return (causal & same_pair & same_branch)[:, None]


def model_attention_mask(inputs: dict, attn_implementation: str | None, dtype: torch.dtype):
    """The shared-prompt mask in the form the attention implementation reads: sdpa takes the boolean mask, eager
    adds it to its scores (0 or the dtype's minimum), flex_attention takes a BlockMask (GPU path, not run on CPU)."""
    sequence_ids, branch_ids = inputs[SEQUENCE_IDS], inputs[BRANCH_IDS]
    if attn_implementation == "flex_attention":
        num_pairs = (int(sequence_ids.max().item()) + 1) // 2
        pair = torch.where(sequence_ids >= 0, sequence_ids % num_pairs, -1)

        def mask_mod(b, h, q_idx, kv_idx):
            branch = branch_ids[b, kv_idx]
            return ((kv_idx <= q_idx) & (pair[b, q_idx] == pair[b, kv_idx])
                    & ((branch == 0) | (branch == branch_ids[b, q_idx])))

        rows, width = sequence_ids.shape
        return create_block_mask(mask_mod, rows, None, width, width, device=sequence_ids.device)
    mask = shared_prompt_mask(sequence_ids, branch_ids)
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def pack_padded_batch(batch: dict, row_length: int | None, pad_token_id: int, prefix_sharing: bool) -> dict:
    """A padded preference batch (TRL's collator: 2B rows, chosen first, already truncated) unpadded and packed in
    place: padding-free rows, or the shared-prompt layout. Keys other than the model inputs are kept."""
    keep = batch.pop("attention_mask").bool()
    ids = [row[m].tolist() for row, m in zip(batch["input_ids"], keep)]
    completion = [row[m].tolist() for row, m in zip(batch["completion_mask"], keep)]
    if prefix_sharing:
        pairs = len(ids) // 2
        batch.update(pack_pairs(ids[:pairs], ids[pairs:], completion[:pairs], completion[pairs:], row_length,
                                pad_token_id))
    else:
        batch.update(pack_sequences(ids, completion, row_length, pad_token_id))
    return batch


def logical_token_count(inputs: dict) -> torch.Tensor:
    """Tokens of the batch's sequences as the padded path holds them (a shared prompt counts for both sequences):
    each sequence's length is its last position + 1."""
    sequence_ids = inputs[SEQUENCE_IDS]
    num_sequences = int(sequence_ids.max().item()) + 1
    last = inputs["position_ids"].new_full((num_sequences + 1,), -1).scatter_reduce(
        0, (sequence_ids % (num_sequences + 1)).reshape(-1), inputs["position_ids"].reshape(-1), reduce="amax")
    return (last[:num_sequences] + 1).sum()


@dataclass
class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, also carrying the per-pair reward margin that madpo needs. With padding_free, the
    padded batch TRL builds (and truncates) is unpadded and packed into rows (packing.py)."""

    padding_free: bool = False
    prefix_sharing: bool = False

    @classmethod
    def for_config(cls, config, pad_token_id: int) -> "PreferenceCollator":
        """The collator of a run's layout (the trainer's, and the evaluation report's): `config` is a PreferenceConfig
        or anything with its max_length, truncation_mode, padding_free and prefix_sharing."""
        return cls(pad_token_id=pad_token_id, max_length=config.max_length, truncation_mode=config.truncation_mode,
                   pad_to_multiple_of=getattr(config, "pad_to_multiple_of", None), padding_free=config.padding_free,
                   prefix_sharing=getattr(config, "prefix_sharing", False))

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        if self.padding_free:  # the kept tokens are TRL's (it truncated each sequence above)
            pack_padded_batch(batch, self.max_length, self.pad_token_id, self.prefix_sharing)
        if MARGIN_COLUMN in examples[0]:
            batch[MARGIN_COLUMN] = torch.tensor([float(e[MARGIN_COLUMN]) for e in examples])
        if ROW_ID_COLUMN in examples[0]:
            batch[ROW_ID_COLUMN] = [e[ROW_ID_COLUMN] for e in examples]
        return batch

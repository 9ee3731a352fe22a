"""Padding-free DPO: pack a batch's chosen and rejected sequences into rows without padding.

TRL 1.16 accepts `padding_free: true` but falls back to padding. Here it is real: each sequence keeps its own
position_ids (starting at 0), and transformers turns position_ids that restart into a block-diagonal causal mask
(sdpa, eager) or per-sequence lengths (flash-attention), so attention never crosses sequences. Rows are bounded
(`max_length`, or the longest sequence if longer), because attention over one huge row would cost the square of
the whole batch.
"""

from __future__ import annotations

import torch

from .names import SEQUENCE_IDS


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sequence indices into rows whose total length is at most `capacity` (longest sequences first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack_sequences(input_ids: list[list[int]], completion_mask: list[list[int]], row_length: int | None,
                   pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack sequences (already truncated) into rows. Returns input_ids, position_ids, completion_mask and
    sequence_ids, each [rows, width]; no attention_mask, so that transformers reads the packing from position_ids."""
    lengths = [len(ids) for ids in input_ids]
    capacity = max(row_length or 0, max(lengths))
    rows = first_fit_decreasing(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    out_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    completion = torch.zeros(shape, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in sorted(row):  # keep batch order inside a row (deterministic, easy to read)
            end = start + lengths[i]
            out_ids[r, start:end] = torch.tensor(input_ids[i])
            positions[r, start:end] = torch.arange(lengths[i])
            completion[r, start:end] = torch.tensor(completion_mask[i])
            sequence_ids[r, start:end] = i
            start = end
        positions[r, start:] = torch.arange(width - start)  # the row's tail padding is a block of its own
    return {"input_ids": out_ids, "position_ids": positions, "completion_mask": completion, SEQUENCE_IDS: sequence_ids}


def packed_sequence_logps(model, inputs: dict, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Summed completion log-probs and completion lengths per sequence (in batch order), and the forward outputs."""
    sequence_ids = inputs[SEQUENCE_IDS]
    completion_mask = inputs["completion_mask"]
    # A sequence's first token is never predicted (as in the padded path): it would be scored from the previous
    # sequence's last hidden state.
    labels = inputs["input_ids"].masked_fill((completion_mask == 0) | (inputs["position_ids"] == 0), -100)
    outputs = model(
        input_ids=inputs["input_ids"],
        position_ids=inputs["position_ids"],
        labels=labels,
        use_cache=False,  # with a cache, transformers would not read packing from position_ids
        fused_lm_head=True,
        **forward_kwargs,
    )
    per_token = outputs.log_probs  # [rows, width - 1], zero where the label is -100
    num_sequences = int(sequence_ids.max().item()) + 1
    target = sequence_ids[:, 1:].clamp(min=0).reshape(-1)
    logps = per_token.new_zeros(num_sequences).index_add(0, target, per_token.reshape(-1))
    lengths = completion_mask.new_zeros(num_sequences).index_add(
        0, sequence_ids.clamp(min=0).reshape(-1), completion_mask.reshape(-1) * (sequence_ids >= 0).reshape(-1)
    )
    return logps, lengths, outputs

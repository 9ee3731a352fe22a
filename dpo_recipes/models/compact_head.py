"""The LM head on the scored positions only, on a CPU.

TRL's fused LM head (`add_fused_lm_head`) gives per-token log-probs without building the [tokens x vocabulary]
logits. On a GPU it projects only the positions whose next token is scored; elsewhere it projects every position
(prompt and padding included, so that compiled tile shapes stay fixed) and folds each tile in several torch passes.
On a CPU that head was about a third of a SmolLM2 DPO step (bench/results/speed.md). `add_compact_head` keeps TRL's
contract (`model(..., labels=labels, fused_lm_head=True)` returns a `FusedCausalLMOutput`, every per-token field zero
where the label is -100) and computes it the plain way on the scored positions alone: the model's own forward with
`logits_to_keep` set to those positions (so the model's logit scaling and soft-capping apply as in generation), then
one fp32 log-softmax. Numerically the same log-probs (the tests compare the two); the logits of the scored positions
are built, so a batch whose scored logits would exceed `MAX_LOGITS` elements goes to TRL's head instead, as do the
cases this path does not cover (MoE router logits, pre-shifted labels, a model on another device).
"""

from __future__ import annotations

import types

import torch
from trl.trainer.utils import FusedCausalLMOutput

METRIC_ROWS = 256  # scored positions per block of the no-grad metrics
MAX_LOGITS = 1 << 27  # scored positions x vocabulary: 512 MB of fp32 logits; three such at the peak (make estimate)


def _compact_log_probs(forward, outputs: tuple[str, ...], temperature: float, kwargs: dict, labels: torch.Tensor,
                       mask: torch.Tensor):
    """Per-token fields at [rows, width - 1] (position t scores token t + 1; `mask`: where labels[:, 1:] is scored)
    from the logits of the scored positions alone: `logits_to_keep` as a boolean mask over [rows, width] makes
    transformers hand the head only those."""
    keep = torch.cat([mask, mask.new_zeros(mask.size(0), 1)], dim=1)  # the last position scores nothing
    logits = forward(logits_to_keep=keep, **kwargs).logits.float()
    logits = logits.reshape(-1, logits.size(-1))  # [scored positions, vocabulary]
    if temperature != 1.0:
        logits = logits / temperature
    log_softmax = logits.log_softmax(dim=-1)
    targets = labels[:, 1:][mask]
    token = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def spread(values):  # [scored positions] -> [rows, width - 1], zero where nothing is scored
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    metrics = {"entropy": lambda lsm, lg, tg: -(lsm.exp() * lsm).sum(-1),
               "log_sum_sq_probs": lambda lsm, lg, tg: torch.logsumexp(2 * lsm, dim=-1),
               "mean_logits": lambda lsm, lg, tg: lg.mean(-1),
               "is_top1": lambda lsm, lg, tg: lg.argmax(-1) == tg}
    fields = {"log_probs": spread(token)}
    with torch.no_grad():  # a block of rows at a time: the temporaries stay small beside the logits
        for name in (n for n in metrics if n in outputs):
            fields[name] = spread(torch.cat([metrics[name](*block) for block in zip(
                log_softmax.split(METRIC_ROWS), logits.split(METRIC_ROWS), targets.split(METRIC_ROWS))]))
    loss = -fields["log_probs"].sum() / mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, label_mask=mask, **fields)


def add_compact_head(model, outputs: tuple[str, ...] = ("log_probs",), temperature: float = 1.0) -> None:
    """Serve `fused_lm_head=True` calls of `model` (on a CPU) from the scored positions' logits; every other call, and
    every case listed in the module's docstring, goes to the forward already there (TRL's fused head, whose own
    non-fused path is the model's forward). `outputs`: the per-token fields to compute, as `add_fused_lm_head`'s."""
    previous = model.forward
    vocab = model.config.get_text_config().vocab_size

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, **kwargs):
        compact = (fused_lm_head and labels is not None and shift_labels is None and not args
                   and not kwargs.get("output_router_logits") and kwargs.get("num_items_in_batch") is None
                   and self.get_output_embeddings().weight.device.type == "cpu")
        mask = labels[:, 1:] != -100 if compact else None
        if not compact or int(mask.sum()) * vocab > MAX_LOGITS:
            return previous(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        return _compact_log_probs(previous, outputs, temperature, {**kwargs, "use_cache": False}, labels, mask)

    model.forward = types.MethodType(forward, model)

"""bf16 weights on a CPU with the log-probs in fp32.

With `dtype: bfloat16` the transformer's matmuls run in bf16 (twice fp32's speed on a CPU with AVX512-BF16). Its
output logits would be bf16 too: 8 significant bits, so a logit near 20 is rounded to a multiple of 0.125, and every
token's log-prob (the DPO loss, the KL estimate of the evaluation report) inherits that error. Here the LM head runs
in fp32: the backbone's last hidden states are cast to fp32 before it, and so is its weight (exactly), so TRL's fused
LM head (which computes in its input's dtype when autocast is off) and generate() both see fp32 logits. The LoRA
parameters are fp32 already (PEFT's autocast_adapter_dtype), and so are their optimizer state and the loss.

Only for a model that computes on the CPU in bf16 or fp16; on a GPU, `bf16: true` (autocast) decides.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

HALF = (torch.bfloat16, torch.float16)


def _hidden_states_to_fp32(module, args, output):
    output.last_hidden_state = output.last_hidden_state.float()
    return output


def _fp32_linear(self, x):
    """The head in fp32. The fp32 copy of the weight is kept between calls (a decode step would otherwise cast the
    whole vocabulary's weight again for one token: 40% of bf16 generation's time, measured) and made again whenever
    the weight is another tensor or was changed in place (its version counter)."""
    weight = self.weight
    key = (weight.data_ptr(), weight._version, weight.dtype)
    if getattr(self, "_fp32_key", None) != key:
        self._fp32_weight, self._fp32_key = weight.detach().float(), key
    bias = None if self.bias is None else self.bias.float()
    if torch.is_grad_enabled() and weight.requires_grad:  # a trained head: gradients must reach the weight
        return F.linear(x.float(), weight.float(), bias)
    return F.linear(x.float(), self._fp32_weight, bias)


def fp32_lm_head(model) -> bool:
    """Run `model`'s LM head in fp32 when its weights are bf16 / fp16 on the CPU; True when it did. The weight stays
    as it is (tied to the input embeddings in many models) and is cast tile by tile (TRL's fused head) or per call."""
    head = model.get_output_embeddings()
    if model.dtype not in HALF or not isinstance(head, torch.nn.Linear) or head.weight.device.type != "cpu":
        return False
    head.forward = types.MethodType(_fp32_linear, head)
    model.base_model.register_forward_hook(_hidden_states_to_fp32)  # what TRL's fused LM head reads
    return True


def fp32_on_cpu(model) -> bool:
    """Cast a bf16 / fp16 model on the CPU to fp32 in place (exactly); True when it did. For greedy replies that must
    not depend on their batch: in bf16 the padding a prompt shares with the others of its batch changes the rounding
    and flips near-ties (16 against 64 at a time changed 17 of the demo's 30 probe replies); in fp32 batched greedy
    replies equal one-at-a-time ones (tests/test_generation.py)."""
    if model.dtype not in HALF or next(model.parameters()).device.type != "cpu":
        return False
    model.float()
    return True


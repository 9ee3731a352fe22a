"""bf16 weights on a CPU with the log-probs in fp32.

With `dtype: bfloat16` the transformer's matmuls run in bf16 (twice fp32's speed on a CPU with AVX512-BF16). Its
output logits would be bf16 too: 8 significant bits, so a logit near 20 is rounded to a multiple of 0.125, and every
token's log-prob (the DPO loss, the KL estimate of the evaluation report) inherits that error. Here the LM head runs
in fp32: the backbone's last hidden states are cast to fp32 before it, and so is its weight (exactly), so TRL's fused
LM head (which computes in its input's dtype when autocast is off) and generate() both see fp32 logits. The LoRA
parameters are fp32 already (PEFT's autocast_adapter_dtype), and so are their optimizer state and the loss.

For training (`half_precision_training`, called by the trainer once PEFT has frozen the base), two more steps, as
autocast does it on a GPU: LoRA's two small matmuls run in bf16 on the bf16 input (PEFT would copy every adapted
layer's input to fp32 first), their fp32 weights cast per call so that gradients and the optimizer stay fp32; and a
frozen head keeps its weight in fp32 (exactly; 4 bytes per vocabulary entry and hidden unit), so that TRL's fused
head stops casting the whole vocabulary's weight on every forward and backward.

Only for a model that computes on the CPU in bf16 or fp16; on a GPU, `bf16: true` (autocast) decides.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear

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


def _linear_in_input_dtype(self, x):
    """A LoRA matrix (fp32) applied in its input's precision; the cast is differentiable, so the gradient reaches the
    fp32 weight in fp32."""
    return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def half_adapter_matmuls(model) -> int:
    """Plain LoRA layers over bf16 / fp16 base weights on the CPU compute their adapter in the base's precision (the
    input is not copied to fp32; the fp32 A and B are cast per call). Returns how many layers changed; variants such as
    DoRA keep PEFT's path."""
    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear) or module.lora_variant:
            continue
        weight = module.get_base_layer().weight
        if weight.dtype not in HALF or weight.device.type != "cpu":
            continue
        module.cast_input_dtype_enabled = False
        for layer in [*module.lora_A.values(), *module.lora_B.values()]:
            layer.forward = types.MethodType(_linear_in_input_dtype, layer)
        changed += 1
    return changed


def fp32_frozen_head(model) -> bool:
    """Hold a frozen bf16 / fp16 LM head's weight in fp32 on the CPU (an exact copy; a tied head is untied, and nothing
    trains either side). True when it did. A head that trains keeps its weight and its per-call cast."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return False
    weight = head.weight
    if weight.requires_grad or weight.dtype not in HALF or weight.device.type != "cpu":
        return False
    head.weight = torch.nn.Parameter(weight.detach().float(), requires_grad=False)
    return True


def half_precision_training(model, adapter_matmuls: bool = True) -> dict:
    """The training steps above for a (PEFT) model whose base is frozen (the adapter's matmuls only when
    `adapter_matmuls`); what each changed, for the run record."""
    return {"adapter_layers_in_half": half_adapter_matmuls(model) if adapter_matmuls else 0,
            "fp32_head_weight": fp32_frozen_head(model)}

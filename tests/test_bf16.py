"""bf16 compute on CPU (recipes/demo-smollm2, recipes/smollm2-135m): base weights and matmuls in bf16, the LoRA
parameters, their optimizer state, the per-token log-softmax and the loss in fp32, so that a fresh adapter still gives
exactly ln 2. How far 20 bf16 steps stay from fp32: tests/e2e/test_bf16_training.py."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpo_recipes.models.precision import fp32_lm_head, fp32_on_cpu
from tests.helpers import bf16_trainer


def test_bf16_base_with_fp32_adapter_and_loss_starts_at_ln2(tiny_llama, tmp_path):
    trainer = bf16_trainer(tiny_llama, tmp_path)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    frozen = [p for n, p in trainer.model.named_parameters()
              if not p.requires_grad and "weight" in n and p.ndim == 2 and "lm_head" not in n]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # PEFT's autocast_adapter_dtype
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the head: the next test
    trainer.train()
    first = next(e for e in trainer.state.log_history if "loss" in e)
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)
    state = [s for group in trainer.optimizer.state.values() for s in group.values() if torch.is_tensor(s) and s.ndim]
    assert state and all(s.dtype == torch.float32 for s in state)


def test_lm_head_of_a_bf16_model_computes_in_fp32(tiny_llama):
    """The logits (generate, the KL samples) and the fused head's log-probs (training, the report) come from the bf16
    backbone's hidden states and the head's weight, both taken exactly to fp32, not rounded to bf16."""
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9, 120, 77]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        bf16_logits = model(input_ids=ids).logits
        assert fp32_lm_head(model)
        logits = model(input_ids=ids).logits
        add_fused_lm_head(model)
        fused = model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs
    assert bf16_logits.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = hidden.float() @ model.lm_head.weight.float().T
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    want = torch.log_softmax(expected[0, :-1].double(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(fused[0].double(), want, rtol=0, atol=1e-5)
    assert not fp32_lm_head(AutoModelForCausalLM.from_pretrained(tiny_llama))  # fp32 weights: nothing to do


def test_fp32_head_keeps_its_weight_copy_current(tiny_llama):
    """The head's fp32 weight is cast once and kept; a change of the weight in place (an optimizer step) makes a new
    copy, and a head that is trained gets its gradient through the cast."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    assert fp32_lm_head(model)
    head, x = model.lm_head, torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        first = head(x)
        copy = head._fp32_weight
        assert head(x).equal(first) and head._fp32_weight is copy  # kept between calls
        head.weight.mul_(2)  # in place: the version counter moves
        torch.testing.assert_close(head(x), 2 * first, rtol=1e-6, atol=1e-6)
    head.weight.requires_grad_(True)
    head(x).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_fp32_on_cpu_casts_a_bf16_model_exactly_and_leaves_fp32_alone(tiny_llama):
    """The report's probes run in fp32 on a CPU: the cast keeps every bf16 weight's value."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert fp32_on_cpu(model) and model.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.equal(before[name].float()) for name, p in model.named_parameters())
    assert not fp32_on_cpu(model)  # already fp32


def test_training_runs_the_adapter_in_bf16_and_holds_the_frozen_head_in_fp32(tiny_llama, tmp_path):
    """The trainer's two CPU steps (precision.half_precision_training): each adapted layer's LoRA matmuls take the
    bf16 input as it is and give the fp32 A and B their gradients in fp32; the frozen head's weight is an exact fp32
    copy of its bf16 weight. An fp32 model is left as it was."""
    from peft.tuners.lora import Linear as LoraLinear

    trainer = bf16_trainer(tiny_llama, tmp_path)
    assert trainer.cpu_half_precision == {"adapter_layers_in_half": 3 * 2, "fp32_head_weight": True}  # 3 modules x 2 layers
    model = trainer.model
    head = model.get_output_embeddings()
    loaded = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).lm_head.weight
    assert head.weight.dtype == torch.float32 and not head.weight.requires_grad and loaded.dtype == torch.bfloat16
    assert head.weight.equal(loaded.float())

    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    with torch.no_grad():
        B.weight.normal_()  # a trained adapter (a fresh one adds exactly 0)
    x = torch.randn(5, A.in_features, dtype=torch.bfloat16)
    out = layer(x)
    expected = layer.get_base_layer()(x) + (x @ A.weight.bfloat16().T @ B.weight.bfloat16().T) * layer.scaling["default"]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert A.weight.grad.dtype == B.weight.grad.dtype == torch.float32 and A.weight.grad.abs().sum() > 0

    fp32 = bf16_trainer(tiny_llama, tmp_path / "fp32", dtype=torch.float32)
    assert fp32.cpu_half_precision == {"adapter_layers_in_half": 0, "fp32_head_weight": False}
    assert all(m.cast_input_dtype_enabled for m in fp32.model.modules() if isinstance(m, LoraLinear))
    # cpu_adapter_matmuls_in_half: false keeps PEFT's fp32 adapter matmuls (runs that must match earlier ones)
    peft_way = bf16_trainer(tiny_llama, tmp_path / "peft", cpu_adapter_matmuls_in_half=False)
    assert peft_way.cpu_half_precision == {"adapter_layers_in_half": 0, "fp32_head_weight": True}
    layers = [m for m in peft_way.model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)

"""The FLOP count behind bench/results/speed.md's "fraction of the bf16 matmul peak" (bench/bench_training.py
step_flops), checked by hand on a tiny Llama with a LoRA adapter."""

import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_training  # noqa: E402


def test_step_flops_counts_three_passes_of_the_matmul_weights_the_head_on_scored_tokens_plus_attention(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    cfg = model.config
    d, layers, kv = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * cfg.intermediate_size  # q, k + v, o, gate + up + down
    weights, head = layers * per_layer, d * cfg.vocab_size
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    padded = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
              "completion_mask": torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])}
    packed = {"sequence_ids": torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]]),
              "completion_mask": torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0]])}
    for batch in (padded, packed):
        count = bench_training.step_flops(lora, batch)
        assert count["matmul_weights"] == weights  # LoRA's own A and B left out, and the head
        assert count["head_weights"] == head
        assert count["tokens"] == 7 and count["scored_tokens"] == 4
        attention = layers * 4 * d * (3 * 3 / 2 + 4 * 4 / 2)
        assert count["flops"] == 6 * weights * 7 + 6 * head * 4 + 4 * attention

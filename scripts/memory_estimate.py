"""Per-GPU memory estimate of each GPU recipe, from the model's architecture and the recipe's settings.

    python scripts/memory_estimate.py [recipe ...]

Architecture numbers are those of each model's config.json on the Hugging Face hub. What is counted:
- weights, by dtype: bf16 2 bytes/param; QLoRA nf4 0.5 byte/param for the quantised linear layers plus the
  quantisation constants (double quantisation: 0.127 bit/param, QLoRA paper sec. 3), embeddings, norms and lm_head
  stay bf16 (bitsandbytes does not quantise them);
- trainable state: weights + gradients + AdamW's two moments (+ an fp32 master copy under DeepSpeed bf16), divided
  by the number of GPUs for what the ZeRO stage shards;
- the reference model: none with LoRA (the base with adapters disabled), a second bf16 copy for full fine-tuning
  (sharded by ZeRO-3);
- activations with gradient checkpointing, for the worst case of chosen and rejected both at max_length: each
  layer's input kept (2 bytes x hidden per token) plus one layer recomputed at a time, ~34 bytes x hidden per token
  (Korthikanti et al. 2022, without the attention score matrix, which SDPA does not store). The fused LM head of
  TRL does not build the (tokens x vocab) logits. This is an estimate: allocator fragmentation, the CUDA context
  (~0.5-1 GB) and DeepSpeed's communication buckets come on top.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

GB = 1e9


@dataclass
class Arch:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool
    qkv_bias: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def params(self) -> dict[str, int]:
        shapes = self.linear_shapes()
        linear = self.layers * sum(a * b for a, b in shapes.values())
        bias = self.layers * (shapes["q_proj"][1] + shapes["k_proj"][1] + shapes["v_proj"][1]) if self.qkv_bias else 0
        norms = self.layers * 2 * self.hidden + self.hidden
        embed = self.vocab * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return {"linear": linear, "other": bias + norms + embed + head}

    def lora_params(self, r: int, targets: list[str]) -> int:
        shapes = self.linear_shapes()
        return self.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# config.json of meta-llama/Meta-Llama-3-8B-Instruct, Qwen/Qwen2.5-7B-Instruct, Qwen/Qwen2.5-0.5B-Instruct
LLAMA3_8B = Arch(vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, tied=False,
                 qkv_bias=False)
QWEN25_7B = Arch(vocab=152064, hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, tied=False,
                 qkv_bias=True)
QWEN25_05B = Arch(vocab=151936, hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, tied=True,
                  qkv_bias=True)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Setup:
    arch: Arch
    gpus: int
    micro_batch: int  # pairs per GPU per forward
    max_length: int
    mode: str  # qlora | lora-zero3 | full-zero3 | full-zero3-offload | full-single
    lora_r: int = 0


RECIPES = {
    "llama3-qlora": Setup(LLAMA3_8B, gpus=1, micro_batch=2, max_length=1024, mode="qlora", lora_r=16),
    "llama3-lora-zero3": Setup(LLAMA3_8B, gpus=8, micro_batch=4, max_length=1024, mode="lora-zero3", lora_r=16),
    "qwen2.5-7b-full-zero3": Setup(QWEN25_7B, gpus=8, micro_batch=8, max_length=1024, mode="full-zero3"),
    "qwen2.5-7b-full-zero3-offload": Setup(QWEN25_7B, gpus=8, micro_batch=4, max_length=1024,
                                           mode="full-zero3-offload"),
    "qwen2.5-0.5b": Setup(QWEN25_05B, gpus=1, micro_batch=4, max_length=1024, mode="full-single"),
}


def estimate(s: Setup) -> dict[str, float]:
    p = s.arch.params()
    total = p["linear"] + p["other"]
    rows: dict[str, float] = {"params_billion": total / 1e9}
    n = s.gpus
    if s.mode == "qlora":
        quant_constants = p["linear"] * 0.127 / 8
        rows["weights (nf4 linear + constants, bf16 rest)"] = p["linear"] * 0.5 + quant_constants + p["other"] * 2
        lora = s.arch.lora_params(s.lora_r, ALL_LINEAR)
        rows["lora_params_million"] = lora / 1e6
        # TRL keeps QLoRA adapters in bf16: 2 (w) + 2 (grad); paged_adamw_32bit keeps both moments in fp32: 4 + 4.
        rows["LoRA weights+grads (bf16) + 32-bit AdamW"] = lora * 12
    elif s.mode == "lora-zero3":
        rows["weights (bf16, ZeRO-3 sharded)"] = total * 2 / n
        lora = s.arch.lora_params(s.lora_r, ALL_LINEAR)
        rows["lora_params_million"] = lora / 1e6
        # bf16 adapter + bf16 grad + DeepSpeed's fp32 master copy and fp32 AdamW moments: 16 bytes, sharded.
        rows["LoRA weights+grads+fp32 master+AdamW"] = lora * 16 / n
    elif s.mode == "full-zero3":
        rows["weights+grads+fp32 master+AdamW (16 B/param, /GPUs)"] = total * 16 / n
        rows["reference model (bf16, ZeRO-3 sharded)"] = total * 2 / n
    elif s.mode == "full-zero3-offload":
        # Weights live in CPU RAM and are gathered a layer at a time: at most stage3_max_live_parameters (1e9)
        # bf16 parameters on a GPU, for the policy and for the reference model.
        rows["gathered weights (<= 1e9 live params, bf16)"] = min(total, 1e9) * 2
        rows["host RAM per machine: fp32 master+AdamW (12 B/param)"] = total * 12
        rows["host RAM per machine: bf16 weights of policy and reference"] = total * 2 * 2
        rows["host RAM per machine: fp32 gradient partitions"] = total * 4
    elif s.mode == "full-single":
        # Weights in fp32 (bf16 autocast): 4 (w) + 4 (grad) + 8 (AdamW) bytes, and an fp32 reference copy.
        rows["weights+grads+AdamW (fp32)"] = total * 16
        rows["reference model (fp32)"] = total * 4
    if s.mode in ("lora-zero3", "full-zero3"):
        # ZeRO-3 gathers each layer's full bf16 weights for its forward/backward; stage3_max_live_parameters (1e9)
        # bounds what may be live at once.
        rows["gathered weights (<= 1e9 live params, bf16)"] = min(total, 1e9) * 2
    tokens = 2 * s.micro_batch * s.max_length  # chosen + rejected, both at max_length (worst case)
    act = tokens * s.arch.hidden * 2 * s.arch.layers + tokens * s.arch.hidden * 34
    rows[f"activations ({tokens} tokens, checkpointed)"] = act
    gpu = sum(v for k, v in rows.items() if not k.startswith(("host", "params", "lora_params")))
    rows["GPU total (estimate)"] = gpu
    return rows


def main(names: list[str]) -> None:
    for name in names or RECIPES:
        setup = RECIPES[name]
        print(f"{name}  ({setup.gpus} GPU(s), micro-batch {setup.micro_batch} pairs, max_length {setup.max_length})")
        for key, value in estimate(setup).items():
            if key in ("params_billion",):
                print(f"  {'parameters':58s} {value:8.2f} B")
            elif key == "lora_params_million":
                print(f"  {'LoRA parameters (r=' + str(setup.lora_r) + ', all linear layers)':58s} {value:8.1f} M")
            else:
                print(f"  {key:58s} {value / GB:8.2f} GB")


if __name__ == "__main__":
    main(sys.argv[1:])

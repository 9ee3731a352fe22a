"""Predicted peak memory per GPU of a recipe, before anything is launched, and whether it fits.

    make estimate RECIPE=<name> [GPUS=n] [GPU_MEM=GiB] [VARIANT=<loss>]
    python -m dpo_recipes.commands.estimate <recipe> [--gpus n] [--gpu_mem GiB] [--variant v]

Inputs: the recipe's config.yaml (and variant), its accelerate.yaml and DeepSpeed JSON (processes, ZeRO stage,
offload), and the model's architecture: its config.json when it is on this machine (a local folder or the Hugging
Face cache), else the built-in table below. What is counted, per GPU:

- weights: dtype bytes per parameter; 4-bit NF4 stores the decoder's linear layers in 0.5 byte/param plus the
  quantisation constants (one fp32 absmax per 64 weights = 0.5 bit/param, or 0.127 bit/param with double
  quantisation, QLoRA paper sec. 3); embeddings, norms and the LM head stay in the compute dtype;
- trainable states: LoRA or all parameters, their gradients and AdamW's moments; TRL keeps QLoRA adapters in bf16,
  PEFT otherwise in fp32; without DeepSpeed the moments take the parameter's dtype (bitsandbytes' 32-bit / 8-bit
  optimizers: 8 / 2 bytes per parameter); under DeepSpeed the model states follow DeepSpeed's own estimators
  (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`: 16-bit weights plus 18 bytes
  per trainable parameter sharded by the ZeRO stage, 4 bytes x the largest layer gathered under ZeRO-3, nothing but
  that with optimizer and parameter offload);
- the reference model: none with PEFT (the base with adapters disabled); for a full fine-tune a second frozen copy:
  its dtype without DeepSpeed, bf16 sharded under ZeRO-3 (in CPU RAM with parameter offload), whole under ZeRO-1/2
  (TRL runs it at stage 0);
- activations for one micro-batch of `per_device_train_batch_size` pairs, chosen and rejected both at `max_length`
  (the worst case), with and without gradient checkpointing: per layer and token, the two RMSNorms (fp32 input
  copy + output), the attention's q, k, v and output, the MLP's gate, up, activation and product, LoRA dropout's
  input copies, the eager attention matrix when eager attention is used; with checkpointing only each layer's
  input is kept and one layer is recomputed at a time; one more layer's worth covers the backward pass;
- TRL's fused LM head (no tokens x vocabulary logits): its projection tiles and, for a full fine-tune, its fp32
  weight-gradient buffer; on a CPU without DeepSpeed the compact head instead (models/compact_head.py): fp32
  logits of the scored tokens (every token, the worst case, up to its cap), three of that size at the peak (in the
  backward: the log-softmax kept from the forward and two gradients); the 4-bit dequantisation buffer; DeepSpeed's
  communication buckets;
- the CUDA context and library workspaces: 1 GiB, assumed (it varies with driver and GPU).

Allocator fragmentation comes on top: a total within 10% of the GPU is reported as tight. docs/evaluation.md
compares these estimates with measured peaks and published figures.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml
from huggingface_hub import try_to_load_from_cache

from dpo_recipes.cli import CommandParser
from dpo_recipes.train.config import DATACLASSES, read_config_layers
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.models.compact_head import MAX_LOGITS
from dpo_recipes.models.families import FAMILIES, SPLIT_LINEAR, family_of, split_projections, unknown_family
from dpo_recipes.models.loading import CACHE_DIR
from dpo_recipes.names import REPO_ROOT
from dpo_recipes.models.pretrained import is_pretrained, materialise
from dpo_recipes.models.tiny import build_tiny
from .variants import variant_files

GiB = 1024**3
CUDA_CONTEXT = 1 * GiB  # assumed: CUDA context, cuBLAS / NCCL workspaces
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, None: 4}
ALL_LINEAR = SPLIT_LINEAR  # the projections linear_shapes names
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's default for every family of families.py but phi3 (none)
LM_HEAD_TOKENS, LM_HEAD_VOCAB = 4096, 32768  # TRL's fused LM head tile (kernels/chunked_logprob.py)
COMMON_GPUS = (24, 40, 80)


@dataclasses.dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    head_dim: int | None = None

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def params(self) -> dict[str, int]:
        """Parameters by kind: the decoder's linear weights (what 4-bit quantises) and everything else."""
        shapes = self.linear_shapes()
        linear = self.layers * sum(a * b for a, b in shapes.values())
        bias = self.layers * (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        norms = (2 * self.layers + 1) * self.hidden
        embed = self.vocab * self.hidden
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return {"linear": linear, "other": bias + norms + embed + head, "embedding": embed, "lm_head": head,
                "total": linear + bias + norms + embed + head}

    def largest_layer(self) -> int:
        """Parameters of the largest single module (DeepSpeed gathers one at a time under ZeRO-3)."""
        return max([self.vocab * self.hidden] + [a * b for a, b in self.linear_shapes().values()])

    def lora_params(self, r: int, targets) -> int:
        shapes = self.linear_shapes()
        return self.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# From each model's config.json on the Hugging Face Hub. Used only when the config is not on this machine.
BUILTIN = {
    "meta-llama/Meta-Llama-3-8B": Architecture(32, 4096, 14336, 32, 8, 128256, False),
    "meta-llama/Meta-Llama-3-70B": Architecture(80, 8192, 28672, 64, 8, 128256, False),
    "Qwen/Qwen2.5-7B": Architecture(28, 3584, 18944, 28, 4, 152064, False, qkv_bias=True),
    "Qwen/Qwen2.5-0.5B": Architecture(24, 896, 4864, 14, 2, 151936, True, qkv_bias=True),
    "mistralai/Mistral-7B-v0.1": Architecture(32, 4096, 14336, 32, 8, 32000, False),
    # LLaMA 33B and 65B (Touvron et al. 2023, table 2; MLP width 2/3 x 4 x hidden rounded up to 256): for checking
    # against the QLoRA figures (33B on one 24 GB GPU, 65B on one 48 GB GPU).
    "huggyllama/llama-30b": Architecture(60, 6656, 17920, 52, 52, 32000, False),
    "huggyllama/llama-65b": Architecture(80, 8192, 22016, 64, 64, 32000, False),
}
ALIASES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Meta-Llama-3-70B",
    "meta-llama/Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
}


def architecture_from_config(config: dict) -> Architecture:
    text = config.get("text_config") or config
    try:
        return Architecture(
            layers=text["num_hidden_layers"], hidden=text["hidden_size"], intermediate=text["intermediate_size"],
            heads=text["num_attention_heads"], kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
            vocab=text["vocab_size"], tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(text.get("attention_bias", getattr(family_of(text.get("model_type")), "qkv_bias", False))),
            head_dim=text.get("head_dim"),
        )
    except KeyError as err:
        raise UserError(f"config.json: no {err} (not a decoder-only transformer this estimate knows)") from None


def find_architecture(model_name_or_path: str | None, tiny_model: str | None) -> tuple[Architecture, str]:
    """The architecture and where it came from: a local config.json, the Hugging Face cache, the built-in table,
    or (no model_name_or_path) the tiny model the recipe builds."""
    if is_pretrained(model_name_or_path):
        model_name_or_path = str(materialise(model_name_or_path))
    if model_name_or_path:
        local = Path(model_name_or_path) / "config.json"
        if local.is_file():
            return architecture_from_config(json.loads(local.read_text())), str(local)
        try:

            cached = try_to_load_from_cache(model_name_or_path, "config.json")
        except Exception:  # not a valid repo id: fall through to the table
            cached = None
        if isinstance(cached, str):
            return architecture_from_config(json.loads(Path(cached).read_text())), "config.json (Hugging Face cache)"
        key = ALIASES.get(model_name_or_path, model_name_or_path)
        if key in BUILTIN:
            return BUILTIN[key], f"built-in table ({key})"
        raise UserError(f"model_name_or_path: no config.json for {model_name_or_path!r} on this machine and not in "
                        f"the built-in table ({', '.join(BUILTIN)}); download its config.json first")

    if tiny_model not in FAMILIES:
        raise UserError(unknown_family(tiny_model, "config"))
    path = build_tiny(tiny_model, CACHE_DIR / f"tiny-{tiny_model}") / "config.json"
    return architecture_from_config(json.loads(path.read_text())), f"tiny {tiny_model} model ({path.parent.name})"


@dataclasses.dataclass
class Setup:
    """What the memory depends on, from a recipe or set directly."""
    arch: Architecture
    gpus: int = 1
    nodes: int = 1
    micro_batch: int = 1  # pairs per GPU per forward
    max_length: int = 1024
    sequences_per_item: int = 2  # DPO: chosen and rejected
    dtype: str = "bfloat16"
    mixed_precision: bool = True  # bf16/fp16 activations (autocast or 16-bit weights)
    gradient_checkpointing: bool = True
    use_peft: bool = False
    lora_r: int = 16
    lora_targets: tuple = PEFT_DEFAULT_TARGETS
    lora_dropout: float = 0.0
    lora_bytes: int | None = None  # None: what TRL / PEFT use (see `adapter_bytes`)
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    double_quant: bool = False
    optim: str = "adamw_torch"
    zero_stage: int | None = None  # None: no DeepSpeed
    offload_optimizer: bool = False
    offload_param: bool = False
    eager_attention: bool = False
    on_gpu: bool = True
    compact_head: bool = False  # the CPU's compact LM head (cpu_compact_lm_head; not under DeepSpeed)

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 4)

    @property
    def act_bytes(self) -> int:
        return 2 if self.mixed_precision or self.weight_bytes == 2 else 4

    @property
    def tokens(self) -> int:
        return self.sequences_per_item * self.micro_batch * self.max_length

    def adapter_bytes(self) -> int:
        if self.lora_bytes is not None:
            return self.lora_bytes
        if self.load_in_4bit or self.load_in_8bit:
            return 2  # TRL casts QLoRA adapters to bf16 (QLoRA paper)
        if self.zero_stage == 3:
            return self.weight_bytes  # TRL keeps ZeRO-3 adapters in the base dtype
        return 4  # PEFT's autocast_adapter_dtype: fp32 adapters on a 16-bit base


def _optimizer_bytes(optim: str, param_bytes: int) -> int:
    """AdamW's two moments per parameter outside DeepSpeed."""
    if "8bit" in optim:
        return 2
    if "32bit" in optim:
        return 8
    return 2 * param_bytes  # torch AdamW keeps the moments in the parameter's dtype


def layer_activation_bytes(s: Setup) -> float:
    """Bytes autograd keeps per token and decoder layer for the backward pass (no checkpointing). The terms follow
    the tensors PyTorch saves in a Llama / Qwen2 / Mistral layer (counted with saved-tensor hooks in
    tests/test_estimate.py)."""
    a, f, arch = s.act_bytes, 4, s.arch
    h, kv, q, i = arch.hidden, arch.kv_dim, arch.q_dim, arch.intermediate
    full_ft = not s.use_peft
    # Two RMSNorms: the fp32 copy of the input and the output the projections read; a full fine-tune also keeps
    # the normalised input for the norm weight's gradient. Autocast over fp32 weights keeps the fp32 outputs too.
    norms = 2 * (f + a) * h + (2 * a * h if full_ft else 0)
    if s.weight_bytes == 4 and a == 2:
        norms += 2 * f * h + (2 * (f - a) * h if full_ft else 0)
    attention = a * (2 * q + 2 * kv)  # q, k, v after RoPE and the attention output
    mlp = 4 * a * i  # gate, up, act(gate), act(gate) * up (down_proj's input)
    lora = 0.0
    if s.use_peft:
        shapes, lb = arch.linear_shapes(), s.adapter_bytes()
        if lb != a:  # the adapter casts its input to its own dtype: one copy per distinct input
            inputs = {"attn_in": ("q_proj", "k_proj", "v_proj"), "o_in": ("o_proj",), "mlp_in": ("gate_proj", "up_proj"),
                      "down_in": ("down_proj",)}
            lora += lb * sum(shapes[names[0]][0] for names in inputs.values() if set(names) & set(s.lora_targets))
        if s.lora_dropout > 0:  # each adapted projection drops out its own copy of the input, with a 1-byte mask
            lora += sum(shapes[t][0] for t in s.lora_targets) * (lb + 1)
    eager = a * arch.heads * s.max_length if s.eager_attention else 0  # attention probabilities
    return norms + attention + mlp + lora + eager


def outside_layers_bytes(s: Setup) -> float:
    """Per token outside the decoder layers: the final norm (fp32 input copy and output) and the LM head's input."""
    return (4 + 2 * s.act_bytes) * s.arch.hidden + 16


def estimate(s: Setup) -> dict:
    """Per-GPU bytes by component, with and without gradient checkpointing, and host RAM when offloading."""
    arch, p = s.arch, s.arch.params()
    n, psi = s.gpus, p["total"]
    rows: list[tuple[str, float]] = []
    host: list[tuple[str, float]] = []
    quantised = s.load_in_4bit or s.load_in_8bit

    # Weights of the policy (for PEFT: the frozen base the adapters sit on)
    if s.load_in_4bit:
        constants = (0.127 if s.double_quant else 0.5) / 8
        shards = n if s.zero_stage == 3 else 1  # ZeRO-3 shards the 4-bit weights (bnb_4bit_quant_storage = dtype)
        rows.append((f"base weights (NF4 {0.5 + constants:.3f} B/param linear, {s.dtype} rest"
                     + (", ZeRO-3 sharded)" if shards > 1 else ")"),
                     (p["linear"] * (0.5 + constants) + p["other"] * s.weight_bytes) / shards))
    elif s.load_in_8bit:
        rows.append((f"base weights (int8 linear, {s.dtype} rest)", p["linear"] * 1 + p["other"] * s.weight_bytes))

    trainable = arch.lora_params(s.lora_r, s.lora_targets) if s.use_peft else psi
    if s.zero_stage is None:
        if not quantised:
            label = "base weights" if s.use_peft else "weights"
            rows.append((f"{label} ({s.dtype})", psi * s.weight_bytes))
        pb = s.adapter_bytes() if s.use_peft else s.weight_bytes
        opt = _optimizer_bytes(s.optim, pb)
        if s.use_peft:
            rows.append((f"LoRA ({_count(trainable)} params): weights + gradients + AdamW, {2 * pb + opt} B/param",
                         trainable * (2 * pb + opt)))
        else:
            rows.append((f"gradients + AdamW ({pb + opt} B/param)", trainable * (pb + opt)))
        if s.gpus > 1:  # DDP keeps a second gradient copy in its communication buckets
            rows.append(("DDP gradient buckets", trainable * pb))
    else:
        # DeepSpeed's own estimators for the trainable model states; frozen base weights in bf16, sharded by ZeRO-3.
        if s.use_peft and not quantised:
            rows.append(("base weights (bf16" + (", ZeRO-3 sharded)" if s.zero_stage == 3 else ")"),
                         psi * 2 / (n if s.zero_stage == 3 else 1)))
        rows.append((("LoRA" if s.use_peft else "model") + f" states, DeepSpeed ZeRO-{s.zero_stage}"
                     + (" + offload" if s.offload_optimizer else ""),
                     deepspeed_model_states(trainable, n, s.zero_stage, s.offload_optimizer, s.offload_param)))
        if s.zero_stage == 3:
            rows.append(("ZeRO-3 gathered layer (4 B x largest layer)", 4 * arch.largest_layer()))
        host += deepspeed_host_ram(trainable, n, s.nodes, s.zero_stage, s.offload_optimizer, s.offload_param)

    # The reference model
    if s.use_peft:
        rows.append(("reference model (adapters disabled: no copy)", 0))
    elif s.zero_stage == 3:
        if s.offload_param:
            rows.append(("reference model (bf16, offloaded to CPU)", 0))
            host.append(("reference model (bf16)", psi * 2 / s.nodes))
        else:
            rows.append(("reference model (bf16, ZeRO-3 sharded)", psi * 2 / n))
    elif s.zero_stage is not None:
        rows.append(("reference model (bf16, whole: TRL runs it at ZeRO stage 0)", psi * 2))
    else:
        rows.append((f"reference model ({s.dtype} copy)", psi * s.weight_bytes))

    # Activations and working buffers
    per_layer = layer_activation_bytes(s)
    t = s.tokens
    outside = t * outside_layers_bytes(s)
    full = arch.layers * t * per_layer + t * per_layer + outside
    checkpointed = arch.layers * t * s.act_bytes * arch.hidden + 2 * t * per_layer + outside
    head_tokens = min(t, LM_HEAD_TOKENS)
    head = head_tokens * min(arch.vocab, LM_HEAD_VOCAB) * s.act_bytes  # TRL's tiles
    if s.compact_head:  # a batch over the cap goes to TRL's head, one just under it peaks at the cap
        head = max(head, 3 * 4 * min(t * arch.vocab, MAX_LOGITS))
    buffers = head + t * arch.hidden * 4
    if not s.use_peft:  # the fused head accumulates the LM head's gradient in fp32
        buffers += arch.vocab * arch.hidden * 4
    if quantised:  # one projection dequantised at a time
        buffers += max(a * b for a, b in arch.linear_shapes().values()) * s.act_bytes
    if s.zero_stage is not None:  # reduce bucket and prefetch / all-gather bucket, 16-bit
        buckets = arch.hidden**2 + (0.9 * arch.hidden**2 if s.zero_stage == 3 else 5e8)
        rows.append(("DeepSpeed communication buckets", buckets * 2))
    rows.append(("LM head " + ("logits (compact head, fp32)" if s.compact_head else "tiles") + " and working buffers",
                 buffers))
    if s.on_gpu:
        rows.append(("CUDA context and workspaces (assumed)", CUDA_CONTEXT))
    base_total = sum(v for _, v in rows)
    return {
        "rows": rows,
        "activations": {"checkpointed": checkpointed, "full": full},
        "total": {"checkpointed": base_total + checkpointed, "full": base_total + full},
        "host": host,
        "params": p,
        "trainable": trainable,
        "tokens": t,
    }


def deepspeed_model_states(trainable: int, gpus: int, stage: int, offload_optimizer: bool,
                           offload_param: bool) -> float:
    """GPU bytes of the trainable parameters' states as DeepSpeed estimates them (largest layer counted apart)."""
    if stage == 3:
        if offload_optimizer and offload_param:
            return 0.0
        if offload_optimizer:
            return 2 * trainable / gpus
        return 18 * trainable / gpus
    if offload_optimizer:  # ZeRO-1/2 with the optimizer offloaded: the 16-bit weights stay
        return 2 * trainable
    return 2 * trainable + 18 * trainable / gpus


def deepspeed_host_ram(trainable: int, gpus: int, nodes: int, stage: int, offload_optimizer: bool,
                       offload_param: bool) -> list[tuple[str, float]]:
    """CPU RAM per machine for offloaded states, as DeepSpeed's estimator counts it: the states, then its 1.5x
    buffer factor (estimate_zero*_model_states_mem_needs, additional_buffer_factor=1.5) as a row of its own."""
    if not offload_optimizer:
        return []
    per_param = 18 if (stage == 3 and offload_param) else 16
    states = trainable * per_param / nodes
    return [(f"offloaded model states ({per_param} B/param)", states),
            ("DeepSpeed's buffer factor (x1.5 of the offloaded states)", 0.5 * states)]


# ---------------------------------------------------------------------------------------------------------------
# Recipes


def _defaults() -> dict:
    values = {}
    for cls in DATACLASSES:
        for f in dataclasses.fields(cls):
            if f.init and f.name not in values:
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                values[f.name] = default
    return values


def recipe_setup(recipe: str, variant: str | None = None, gpus: int | None = None,
                 root: Path = REPO_ROOT) -> tuple[Setup, dict]:
    """The Setup of recipes/<recipe> (config.yaml, variant, accelerate.yaml, DeepSpeed JSON), and a description."""
    recipes = sorted(p.name for p in (root / "recipes").iterdir() if (p / "config.yaml").is_file())
    recipe_dir = root / "recipes" / recipe
    if recipe not in recipes:
        raise UserError(f"unknown recipe {recipe!r}; recipes: {', '.join(recipes)}")
    files = [recipe_dir / "config.yaml"] + (variant_files(recipe_dir, variant) if variant else [])
    config = {**_defaults(), **read_config_layers(files)}
    launcher = yaml.safe_load((recipe_dir / "accelerate.yaml").read_text()) or {}
    zero_stage, offload_opt, offload_param = None, False, False
    if launcher.get("distributed_type") == "DEEPSPEED":
        ds = launcher.get("deepspeed_config") or {}
        ds_file = ds.get("deepspeed_config_file")
        zero = json.loads((root / ds_file).read_text()).get("zero_optimization", {}) if ds_file else {
            "stage": ds.get("zero_stage"),
            "offload_optimizer": {"device": ds.get("offload_optimizer_device")},
            "offload_param": {"device": ds.get("offload_param_device")}}
        zero_stage = int(zero.get("stage") or 0)
        offload_opt = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
        offload_param = (zero.get("offload_param") or {}).get("device") in ("cpu", "nvme")
    nodes = int(launcher.get("num_machines", 1) or 1)
    processes = int(launcher.get("num_processes", 1) or 1)
    if gpus:  # GPUS=n: as many machines as it takes at the launcher's GPUs per machine
        per_node = max(1, processes // nodes)
        nodes = -(-gpus // per_node)
    arch, source = find_architecture(config.get("model_name_or_path"), config.get("tiny_model"))
    targets = config.get("lora_target_modules")
    if targets in (None, []):
        targets = PEFT_DEFAULT_TARGETS
    elif targets == "all-linear" or targets == ["all-linear"]:
        targets = ALL_LINEAR
    else:  # a fused projection's adapter is counted as its parts' (r x hidden more per extra part: a bound)
        targets = split_projections([targets] if isinstance(targets, str) else targets)
    bf16 = config.get("bf16")
    # transformers' current name, then its deprecated one, then TRL's default (on).
    checkpointing = next((config[k] for k in ("activation_checkpointing", "gradient_checkpointing")
                          if config.get(k) is not None), True)
    # TRL's disable_dropout (default true) sets every dropout to p=0, LoRA's included: no masks are kept then.
    lora_dropout = 0.0 if config.get("disable_dropout", True) else float(config.get("lora_dropout") or 0.0)
    on_gpu = not (config.get("use_cpu") or launcher.get("use_cpu"))
    mixed = bool(config.get("fp16")) or (bf16 if bf16 is not None else not config.get("use_cpu"))
    setup = Setup(
        arch=arch, gpus=gpus or processes, nodes=nodes,
        micro_batch=int(config["per_device_train_batch_size"]), max_length=int(config["max_length"] or 1024),
        dtype=str(config.get("dtype") or "float32"), mixed_precision=bool(mixed),
        gradient_checkpointing=bool(checkpointing),
        use_peft=bool(config.get("use_peft")), lora_r=int(config.get("lora_r") or 16),
        lora_targets=tuple(targets), lora_dropout=lora_dropout,
        load_in_4bit=bool(config.get("load_in_4bit")), load_in_8bit=bool(config.get("load_in_8bit")),
        double_quant=bool(config.get("use_bnb_nested_quant")), optim=str(config.get("optim")),
        zero_stage=zero_stage, offload_optimizer=offload_opt, offload_param=offload_param,
        eager_attention=config.get("attn_implementation") == "eager",
        on_gpu=on_gpu,
        compact_head=not on_gpu and zero_stage is None and config.get("cpu_compact_lm_head", True) is not False,
    )
    model = config.get("model_name_or_path") or f"tiny_model: {config.get('tiny_model')}"
    return setup, {"recipe": recipe, "variant": variant, "model": model, "source": source}


def format_estimate(setup: Setup, result: dict, about: dict, gpu_mem: float | None) -> str:
    s = setup
    method = ("QLoRA" if s.load_in_4bit else "LoRA") if s.use_peft else "full fine-tune"
    dist = (f"DeepSpeed ZeRO-{s.zero_stage}" + (" + offload" if s.offload_optimizer else "")
            if s.zero_stage is not None else ("DDP" if s.gpus > 1 else "single process"))
    total = result["total"]["checkpointed" if s.gradient_checkpointing else "full"]
    unit, scale = ("GiB", GiB) if total >= GiB else ("MiB", 1024**2)
    where = "GPU" if s.on_gpu else "process"
    lines = [
        f"{about['recipe']}{' + ' + about['variant'] if about['variant'] else ''}: {about['model']} "
        f"({_count(result['params']['total'])} params; architecture from {about['source']})",
        f"{method}, {s.gpus} {where}{'' if s.gpus == 1 else 'es' if not s.on_gpu else 's'} ({dist}), {s.dtype}, "
        f"micro-batch {s.micro_batch} "
        f"pairs x {s.sequences_per_item} x {s.max_length} tokens = {result['tokens']} tokens, optim {s.optim}",
        "",
        f"  {'per ' + where + ('' if s.on_gpu else ' (CPU RAM)'):60s} {unit:>8s}",
    ]
    for label, value in result["rows"]:
        lines.append(f"  {label:60s} {value / scale:8.2f}")
    recipe_gc = "checkpointed" if s.gradient_checkpointing else "full"
    for key, label in (("checkpointed", "gradient checkpointing on"), ("full", "gradient checkpointing off")):
        mark = "  <- recipe" if key == recipe_gc else ""
        lines.append(f"  {'activations, ' + label:60s} {result['activations'][key] / scale:8.2f}")
        lines.append(f"  {'TOTAL, ' + label:60s} {result['total'][key] / scale:8.2f}{mark}")
    for label, value in result["host"]:
        lines.append(f"  {'CPU RAM per machine: ' + label:60s} {value / scale:8.2f}")
    if result["host"]:
        host_total = sum(value for _, value in result["host"])
        lines.append(f"  {'CPU RAM per machine: TOTAL (plus the OS and data loading)':60s} {host_total / scale:8.2f}")
    if not s.on_gpu and not gpu_mem:
        return "\n".join(lines + ["", f"a CPU recipe: {total / GiB:.2f} GiB of RAM per process (no GPU)"])
    sizes = [gpu_mem] if gpu_mem else list(COMMON_GPUS)
    lines += ["", f"fits ({total / GiB:.1f} GiB with the recipe's setting): "
              + "; ".join(f"{g:g} GiB {fit_verdict(total, g * GiB)}" for g in sizes)]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def fit_verdict(total: float, capacity: float) -> str:
    if total > capacity:
        return f"no (over by {(total - capacity) / GiB:.1f} GiB)"
    if total > 0.9 * capacity:
        return f"tight ({(capacity - total) / GiB:.1f} GiB left; fragmentation may not fit)"
    return f"yes ({(capacity - total) / GiB:.1f} GiB left)"


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m dpo_recipes.commands.estimate", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in all (default: the launcher's processes)")
    parser.add_argument("--gpu_mem", type=float, default=None, help="memory of one GPU in GiB (default: 24, 40, 80)")
    parser.add_argument("--variant", default=None, help="a loss variant (variants/<name>.yaml, then the recipe's own)")
    args = parser.parse_args(argv)
    if args.gpus is not None and args.gpus < 1:
        raise UserError(f"GPUS must be >= 1, got {args.gpus}")
    if args.gpu_mem is not None and args.gpu_mem <= 0:
        raise UserError(f"GPU_MEM must be > 0 GiB, got {args.gpu_mem:g}")
    setup, about = recipe_setup(args.recipe, args.variant, args.gpus)
    result = estimate(setup)
    print(format_estimate(setup, result, about, args.gpu_mem))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

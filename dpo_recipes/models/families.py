"""The model families this project knows, in one table: the tiny models (tiny.py), `make smoke` (smoke.py), the memory
estimate (estimate.py) and the recipe tests all read it. Adding a family is adding a row here (and a line to the
table in docs/recipes.md): its transformers model type and class, its special tokens and a chat template with its
turn structure.

Every class is checked to exist in the pinned transformers and every family trains two tiny steps
(tests/test_families.py, tests/e2e/test_tiny_families.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Chat templates written for the tiny tokenizers; each renders the same turn structure as its real family.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
    "{% else %}{{ m['content'] + '\n\n' }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (  # Gemma calls the assistant 'model'
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + m['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPLIT_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """One model family: what a tiny model of it is built from, and what the estimate needs to know of it."""

    model_type: str  # transformers' model_type (AutoConfig.for_model)
    model_class: str  # the transformers class AutoModelForCausalLM builds for it
    bos: str | None
    eos: str  # the end of a turn: generation stops there
    pad: str
    extra: tuple[str, ...]  # the template's other special tokens
    template: str
    linear: tuple[str, ...] = SPLIT_LINEAR  # the decoder layer's linear modules (LoRA's all-linear)
    fused: dict = field(default_factory=dict)  # a fused linear module -> the split projections it holds
    qkv_bias: bool = False  # q/k/v projections with a bias when config.json does not say (attention_bias)
    config: dict = field(default_factory=dict)  # tiny-model config keys beyond the common ones


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM", "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
                    ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"), LLAMA3_TEMPLATE),
    "mistral": Family("mistral", "MistralForCausalLM", "<s>", "</s>", "<unk>", ("[INST]", "[/INST]"),
                      MISTRAL_TEMPLATE),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>",),
                    CHATML_TEMPLATE, qkv_bias=True),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>",),
                    CHATML_TEMPLATE),  # Qwen3's turns without its thinking blocks
    "gemma2": Family("gemma2", "Gemma2ForCausalLM", "<bos>", "<end_of_turn>", "<pad>", ("<start_of_turn>", "<eos>"),
                     GEMMA_TEMPLATE, config={"query_pre_attn_scalar": 16, "sliding_window": 64}),
    "gemma3": Family("gemma3_text", "Gemma3ForCausalLM", "<bos>", "<end_of_turn>", "<pad>",
                     ("<start_of_turn>", "<eos>"), GEMMA_TEMPLATE,
                     config={"query_pre_attn_scalar": 16, "sliding_window": 64}),
    "phi3": Family("phi3", "Phi3ForCausalLM", "<s>", "<|end|>", "<|endoftext|>",
                   ("<|user|>", "<|assistant|>", "<|system|>"), PHI3_TEMPLATE,
                   linear=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
                   fused={"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}),
}
# The families `make smoke` can train in place of a recipe's model (every one: each has a tiny model).
SMOKE_FAMILIES = tuple(FAMILIES)


def family_of(model_type: str | None) -> Family | None:
    """The family of a transformers model_type (a config.json's), if this table has it."""
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def split_projections(modules) -> list[str]:
    """LoRA target modules with each fused one (phi3's qkv_proj, gate_up_proj) as the projections it holds."""
    fused = {name: parts for family in FAMILIES.values() for name, parts in family.fused.items()}
    return [part for module in modules for part in fused.get(module, (module,))]


def unknown_family(name, where: str) -> str:
    """The one line for a tiny_model that is not a family here."""
    if name is None:
        return f"{where}: set tiny_model ({', '.join(FAMILIES)}), the family of the tiny model trained in its place"
    return f"{where}: tiny_model {name!r} is not a family of dpo_recipes/models/families.py ({', '.join(FAMILIES)})"

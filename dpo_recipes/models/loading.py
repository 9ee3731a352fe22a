"""Model, tokenizer and adapter loading from a ModelConfig (TRL's fields), with the project's safety defaults:
weights in safetensors only, no remote code unless the recipe turns it on."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, get_peft_config, get_quantization_config

from dpo_recipes.errors import UserError
from .precision import fp32_lm_head
from .pretrained import CACHE_DIR, is_pretrained, materialise
from .tiny import FAMILIES, build_tiny


def resolve_model_path(model_args: ModelConfig, tiny_model: str | None) -> str:
    """The model to load: `model_name_or_path` if given (a project model such as smollm2-135m-instruct becomes its
    local folder, dpo_recipes/models/pretrained.py), else a tiny model of `tiny_model`'s family built locally."""
    if is_pretrained(model_args.model_name_or_path):
        return str(materialise(model_args.model_name_or_path))
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    if tiny_model not in FAMILIES:
        raise UserError(f"config: tiny_model must be one of {sorted(FAMILIES)}, got {tiny_model!r}")
    return str(build_tiny(tiny_model, CACHE_DIR / f"tiny-{tiny_model}"))


def load_tokenizer(path: str, model_args: ModelConfig, trust_remote_code: bool, chat_template_path: str | None):
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:  # not found, offline, no access: say which and why, in one line
        raise UserError(f"{path}: cannot load the tokenizer: {str(err).strip().splitlines()[0]}") from None
    if chat_template_path:
        template = Path(chat_template_path)
        if not template.is_file():
            raise UserError(f"{template}: chat_template_path not found")
        tokenizer.chat_template = template.read_text()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, model_args: ModelConfig, trust_remote_code: bool):
    """The policy model, quantised when asked (QLoRA), and the LoRA config for the trainer (None for full FT)."""
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        quantization_config.bnb_4bit_compute_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=model_args.model_revision,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantization_config,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle .bin weights
        )
    except OSError as err:  # not found, offline, no safetensors weights: one line
        raise UserError(f"{path}: cannot load the model: {str(err).strip().splitlines()[0]}") from None
    except (ValueError, ImportError) as err:  # an attention the model class or this machine lacks: name the key
        if model_args.attn_implementation is None or "attention" not in str(err).lower():
            raise
        first = str(err).strip().split(". ")[0].splitlines()[0]
        raise UserError(f"config: attn_implementation {model_args.attn_implementation!r}: {first}; set "
                        "attn_implementation: eager (or another the model supports)") from None
    fp32_lm_head(model)  # bf16 weights on a CPU: the log-probs still in fp32 (precision.py)
    return model, get_peft_config(model_args)


def check_shared_prompt_support(path: str, model_args: ModelConfig, trust_remote_code: bool, max_length: int | None):
    """prefix_sharing hands the model a 4D attention mask. Stop, before the weights load, when the model's forward
    would not read it (its mask is not built by transformers' masking_utils) or would read it wrongly (a
    sliding window shorter than the sequences: a 4D mask replaces the window)."""
    try:
        config = AutoConfig.from_pretrained(path, revision=model_args.model_revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load the model config: {str(err).strip().splitlines()[0]}") from None
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    source = inspect.getsource(sys.modules[model_class.__module__]) if model_class is not None else ""
    if "masking_utils import" not in source:  # create_causal_mask and kin hand a 4D mask through unchanged
        raise UserError(f"{path}: prefix_sharing needs a model whose forward takes a 4D attention mask "
                        f"(built by transformers' masking_utils); {config.model_type}'s does not")
    text = config.get_text_config()
    window = getattr(text, "sliding_window", None)
    uses_window = window is not None and (getattr(text, "use_sliding_window", True)
                                          or "sliding_attention" in (getattr(text, "layer_types", None) or []))
    if uses_window and (max_length is None or window < max_length):
        raise UserError(f"{path}: prefix_sharing cannot keep {config.model_type}'s sliding window ({window} tokens) "
                        f"with max_length {max_length}; set max_length <= {window} or turn prefix_sharing off")

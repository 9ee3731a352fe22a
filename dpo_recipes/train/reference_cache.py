"""Reference log-probs computed once and kept on disk.

With `precompute_ref_log_probs: true`, TRL runs the frozen reference over the data once before training. Its own
cache is keyed on the tokenized dataset and the weights, but not on `max_length` or `truncation_mode`, which the
collator applies later, so a run with another max_length would silently reuse the wrong values. Here the key is a
hash of everything the values depend on, and the values live in one safetensors file per key, so a second run with
the same key does no reference forward pass at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpo_recipes.names import REPO_ROOT

DEFAULT_CACHE_DIR = Path(os.environ.get("DPO_RECIPES_CACHE", REPO_ROOT / ".cache")) / "ref_logps"


def reference_weights_hash(model, adapters_disabled: bool) -> str:
    """sha256 of the reference's weights. When the reference is the base model with adapters disabled, the adapter
    weights do not change its log-probs, so they are left out (a new seed or LoRA rank still hits the cache)."""
    h = hashlib.sha256()
    h.update(str(getattr(model.config, "_name_or_path", "")).encode())
    named = sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0])
    for name, tensor in named:
        if adapters_disabled and "lora_" in name:
            continue
        if hasattr(tensor, "ds_id"):  # DeepSpeed ZeRO-3 keeps only a shard here: gather the whole parameter
            import deepspeed  # only here: DeepSpeed is optional, and only ZeRO-3 runs reach this line

            with deepspeed.zero.GatheredParameters(tensor):
                tensor = tensor.detach().cpu().clone()
        tensor = tensor.detach().cpu()
        h.update(name.encode() + str(tensor.dtype).encode())
        if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            tensor = tensor.float()
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (backend.to_str() if backend is not None else repr(tokenizer.get_vocab())) + str(tokenizer.chat_template)
    return hashlib.sha256(text.encode()).hexdigest()


def token_ids_hash(dataset, columns=("prompt_ids", "chosen_ids", "rejected_ids")) -> str:
    """sha256 of the tokenized pairs themselves. The dataset's own fingerprint would also change with unrelated
    settings (TRL's filter closes over the whole config, output_dir included), and miss the cache for nothing."""
    h = hashlib.sha256()
    for table in dataset.select_columns(list(columns)).with_format("arrow").iter(batch_size=8192):
        for name in columns:
            ids = table.column(name).combine_chunks()
            h.update(ids.value_lengths().to_numpy(zero_copy_only=False).tobytes())
            h.update(ids.flatten().to_numpy(zero_copy_only=False).astype("int64").tobytes())
    return h.hexdigest()


def cache_key(*, weights: str, tokenizer: str, data_fingerprint: str, args, layout: dict,
              attn_implementation: str | None) -> str:
    """Everything the reference log-probs depend on. `layout`: the batch layout (padding_free, prefix_sharing), which
    changes the kernels' rounding, not the values' meaning."""
    parts = {
        "weights": weights,
        "tokenizer": tokenizer,
        "data": data_fingerprint,
        "max_length": args.max_length,
        "truncation_mode": args.truncation_mode,
        "ld_alpha": args.ld_alpha,
        **{f"layout_{name}": bool(value) for name, value in sorted(layout.items())},
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "attn_implementation": attn_implementation,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load(cache_dir: Path, key: str) -> tuple[list[float], list[float]] | None:
    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file():
        return None
    tensors = load_file(path)
    return tensors["ref_chosen_logps"].tolist(), tensors["ref_rejected_logps"].tolist()


def save(cache_dir: Path, key: str, chosen: list[float], rejected: list[float]) -> Path:
    path = Path(cache_dir) / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: two writers of one key never share a file
    save_file({"ref_chosen_logps": torch.tensor(chosen), "ref_rejected_logps": torch.tensor(rejected)}, str(tmp))
    os.replace(tmp, path)  # atomic: a kill mid-write never leaves a torn cache entry
    return path

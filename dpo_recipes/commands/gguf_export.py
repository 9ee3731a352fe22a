"""Export a run as one GGUF file for llama.cpp and ollama: weights, tokenizer, chat template, generation settings.

    make export RUN=<run dir> OUT=<file.gguf> [ARGS="--outtype f32|f16|bf16|q8_0 --force --check"]
    python -m dpo_recipes.commands.gguf_export RUN OUT [--outtype T] [--force] [--check]

A LoRA / QLoRA run is merged first, in float32, by the same code as `make merge` (dpo_recipes/commands/merge.py); a full
fine-tune is read from its folder. The file is written with the `gguf` package's writer under llama.cpp's names
(its tensor name map for the architecture) and layouts: for Llama, llama.cpp stores the query and key projections with
the two halves of each head's rotary dimensions interleaved (`permute_for_llama`); Qwen2 needs no such change.
One-dimensional tensors (norms, biases) stay float32 whatever the type, as llama.cpp's own converter keeps them; a
q8_0 matrix whose rows are not a multiple of 32 values falls back to f16. `--check` reads the file back with
transformers and compares it with the run (dpo_recipes/commands/gguf_check.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

from dpo_recipes.cli import CommandParser
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.train.config import read_run_config
from .gguf_check import check_export, summary
from .merge import adapter_model
from dpo_recipes.models.loading import resolve_model_path

# --outtype -> (tensor type of the matrices, the file type llama.cpp reads from general.file_type)
OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
DEFAULT_OUTTYPE = "f16"  # half the bytes of f32, read by every llama.cpp backend; differences in docs/export.md
# transformers model_type -> llama.cpp architecture
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
# How llama.cpp names the pre-tokenizer (the regex that splits text before BPE) of a byte-level BPE tokenizer: the
# plain GPT-2 split, or a Split regex that transformers' GGUF reader knows under these names.
GPT2_PRE = "gpt-2"
PRE_TOKENIZERS = {GGUF_PRE_TOKENIZER_SPLITS[name]: name for name in ("llama-bpe", "qwen2")}
SAMPLING = {"temperature": "add_sampling_temp", "top_p": "add_sampling_top_p", "top_k": "add_sampling_top_k",
            "min_p": "add_sampling_min_p", "repetition_penalty": "add_sampling_penalty_repeat"}


def run_kind(run_dir: Path) -> str:
    """'LoRA' (an adapter on a base model) or 'full' (a fine-tune's own weights); one line if neither is saved."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if (run_dir / "adapter_config.json").is_file() and (run_dir / "adapter_model.safetensors").is_file():
        return "LoRA"
    if (run_dir / "config.json").is_file() and list(run_dir.glob("model*.safetensors")):
        return "full"
    raise UserError(f"{run_dir}: no weights (neither adapter_model.safetensors nor config.json with "
                    "model.safetensors); has the run saved its model?")


def model_config(run_dir: Path, kind: str):
    """The model's transformers config, read before any weights are (a refusal costs nothing)."""
    if kind == "full":
        return AutoConfig.from_pretrained(run_dir)
    script_args, _, model_args = read_run_config(run_dir)
    return AutoConfig.from_pretrained(resolve_model_path(model_args, script_args.tiny_model))


def load_trained(run_dir: Path, kind: str):
    """The run's model in float32: the adapter merged into its base as `make merge` does, or the full weights."""
    if kind == "LoRA":
        return adapter_model(run_dir, "float32").merge_and_unload(safe_merge=True).eval()
    return AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32, use_safetensors=True).eval()


def architecture(config) -> gguf.MODEL_ARCH:
    """The llama.cpp architecture of a transformers config, or one line saying why it cannot be exported."""
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise UserError(f"model_type {config.model_type!r}: GGUF export supports {', '.join(ARCHITECTURES)} only")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"rope_type {rope['rope_type']!r}: GGUF export writes plain RoPE only")
    if config.hidden_act != "silu":
        raise UserError(f"hidden_act {config.hidden_act!r}: llama.cpp's {config.model_type} expects silu")
    biases = getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    if arch == gguf.MODEL_ARCH.LLAMA and biases:
        raise UserError("a Llama model with attention or MLP biases: GGUF export writes Llama without biases")
    return arch


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute_for_llama(weight: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' query/key rows (per head: the first half of the rotary dimensions, then the second) in llama.cpp's
    order (per head: the two halves interleaved, pair by pair). transformers' GGUF reader undoes it."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model, arch: gguf.MODEL_ARCH):
    """(llama.cpp name, float32 array) of every weight, in llama.cpp's layout."""
    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp (and transformers' reader) use token_embd for the output when output is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"tensor {hf_name}: no llama.cpp name for it in {gguf.MODEL_ARCH_NAMES[arch]}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and name.endswith(".attn_q.weight"):
            data = permute_for_llama(data, config.num_attention_heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and name.endswith(".attn_k.weight"):
            data = permute_for_llama(data, config.num_key_value_heads)
        yield name, data


def tensor_type(data: np.ndarray, outtype: str) -> gguf.GGMLQuantizationType:
    qtype = OUTTYPES[outtype][0]
    if data.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and not gguf.quants.Q8_0.can_quantize(data):
        return gguf.GGMLQuantizationType.F16
    return qtype


def pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's split before BPE; one line if it is not a byte-level BPE it can name."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre, normalizer = spec["model"], spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    decoder = (spec.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise UserError("tokenizer: GGUF export writes byte-level BPE tokenizers only (Llama 3, Qwen2, SmolLM2)")
    if normalizer not in (None, {"type": "NFC"}):
        raise UserError(f"tokenizer: normalizer {normalizer.get('type')!r} has no llama.cpp counterpart")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return GPT2_PRE
    steps = pre.get("pretokenizers", [])
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)
            and steps[0].get("pattern", {}).get("Regex") in PRE_TOKENIZERS):
        return PRE_TOKENIZERS[steps[0]["pattern"]["Regex"]]
    raise UserError("tokenizer: its pre-tokenizer is not one llama.cpp names here (GPT-2, Llama 3, Qwen2)")


def vocabulary(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens in id order as the tokenizer spells them (byte-level) and llama.cpp's token types; ids the tokenizer
    lacks up to the model's vocabulary size are padding, as llama.cpp's converter writes them."""
    by_id = {i: t for t, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= n_vocab:
        raise UserError(f"tokenizer: {max(by_id) + 1} tokens, more than the model's {n_vocab} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    return tokens, types


def adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding text puts BOS in front / EOS at the end, read from what the tokenizer does."""
    ids = tokenizer("a").input_ids
    return (tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id,
            tokenizer.eos_token_id is not None and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, n_vocab: int) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens, types = vocabulary(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for kind in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    add_bos, add_eos = adds_special(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def add_hyperparameters(writer: gguf.GGUFWriter, config) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_rope_freq_base(float((config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def add_generation_settings(writer: gguf.GGUFWriter, generation_config) -> dict:
    """The sampling settings of the model's generation config, when it samples (llama.cpp's general.sampling.*)."""
    written = {}
    if generation_config is not None and generation_config.do_sample:
        for key, method in SAMPLING.items():
            value = getattr(generation_config, key, None)
            if value is not None:
                getattr(writer, method)(value)
                written[key] = value
    return written


def export(run_dir: str | Path, out: str | Path, outtype: str = DEFAULT_OUTTYPE, force: bool = False) -> dict:
    """Write the run at `run_dir` as the GGUF file `out`; returns what was written."""
    run_dir, out = Path(run_dir), Path(out)
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype: must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    if out.suffix != ".gguf":
        raise UserError(f"{out}: OUT must be a file ending in .gguf")
    if out.exists() and not force:
        raise UserError(f"{out}: exists; choose a new OUT or pass --force")
    kind = run_kind(run_dir)
    arch = architecture(model_config(run_dir, kind))
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    pre_tokenizer(tokenizer)  # refuse a tokenizer llama.cpp cannot be told about before loading the weights
    model = load_trained(run_dir, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(run_dir.resolve().name)
    writer.add_file_type(OUTTYPES[outtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hyperparameters(writer, model.config)
    add_tokenizer(writer, tokenizer, model.config.vocab_size)
    sampling = add_generation_settings(writer, model.generation_config)
    types = {}
    for name, data in gguf_tensors(model, arch):
        qtype = tensor_type(data, outtype)
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        types[qtype.name] = types.get(qtype.name, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"run_dir": str(run_dir), "out": str(out), "kind": kind, "architecture": gguf.MODEL_ARCH_NAMES[arch],
            "outtype": outtype, "tensor_types": types, "bytes": out.stat().st_size, "sampling": sampling}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m dpo_recipes.commands.gguf_export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run folder (LoRA / QLoRA adapter or full fine-tune)")
    parser.add_argument("out", help="the GGUF file to write")
    parser.add_argument("--outtype", default=DEFAULT_OUTTYPE, help=f"one of {', '.join(OUTTYPES)} "
                        f"(default {DEFAULT_OUTTYPE})")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")
    parser.add_argument("--check", action="store_true", help="read the file back with transformers and compare")
    args = parser.parse_args(argv)
    record = export(args.run_dir, args.out, args.outtype, args.force)
    print(f"exported {args.run_dir} ({record['kind']}, {record['architecture']}) as {args.outtype} -> {args.out} "
          f"({record['bytes'] / 2**20:.1f} MiB)", flush=True)
    if args.check:
        result = check_export(args.run_dir, args.out)
        print(summary(result), flush=True)
        record["check"] = result
    return record


if __name__ == "__main__":
    main(sys.argv[1:])

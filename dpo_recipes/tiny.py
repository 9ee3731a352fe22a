"""Tiny, randomly initialised models with real tokenizers, built locally (nothing is downloaded).

The demo recipe trains one, and every recipe's smoke test swaps its real model for one of the same architecture class
and chat-template family. Building is deterministic: the same family, size and corpus give the same files.

    python -m dpo_recipes.tiny --family llama --out /tmp/tiny-llama
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from .names import REPO_ROOT


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

# family -> (transformers model_type, special tokens, chat template); special tokens: bos, eos, pad, extra.
FAMILIES = {
    "llama": (
        "llama",
        dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
             extra=["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"]),
        LLAMA3_TEMPLATE,
    ),
    "qwen2": (
        "qwen2",
        dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=["<|im_start|>"]),
        CHATML_TEMPLATE,
    ),
    "mistral": ("mistral", dict(bos="<s>", eos="</s>", pad="<unk>", extra=["[INST]", "[/INST]"]), MISTRAL_TEMPLATE),
}


def default_corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: the bundled data, so real words become real tokens."""
    texts = []
    for name in ("demo/train.jsonl", "hh-rlhf/harmless-base-test.jsonl.gz"):
        path = str(REPO_ROOT / "data" / name)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            for line in f:
                texts.append(line)
    return texts


def build_tokenizer(family: str, vocab_size: int = 1024, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (the scheme Llama 3 and Qwen use) with the family's special tokens."""
    _, special, template = FAMILIES[family]
    specials = [t for t in (special["bos"], special["eos"], special["pad"]) if t] + special["extra"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else default_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special["bos"],
        eos_token=special["eos"],
        pad_token=special["pad"],
        chat_template=template,
        model_max_length=4096,
    )


def build_model(family: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A randomly initialised causal LM of the family's architecture class, sized for a CPU."""
    model_type = FAMILIES[family][0]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_tiny(family: str, out: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny model and tokenizer to `out` (reused when already there with the same settings)."""
    out = Path(out)
    corpus = default_corpus()
    spec = {"family": family, "hidden_size": hidden_size, "num_layers": num_layers, "seed": seed,
            "corpus_sha256": hashlib.sha256("".join(corpus).encode()).hexdigest()}  # new data, new tokenizer
    stamp = out / "tiny_spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return out
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {sorted(FAMILIES)}")
    tokenizer = build_tokenizer(family, corpus=corpus)
    model = build_model(family, tokenizer, hidden_size, num_layers, seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(spec))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="llama")
    parser.add_argument("--out", required=True)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(build_tiny(a.family, a.out, a.hidden_size, a.num_layers, a.seed))


if __name__ == "__main__":
    main()

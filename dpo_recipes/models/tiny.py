"""Tiny, randomly initialised models with real tokenizers, built locally (nothing is downloaded).

The demo recipe trains one, and every recipe's smoke test swaps its real model for one of the same architecture class
and chat-template family (the table of families: families.py). Building is deterministic: the same family, size and
corpus give the same files.

    python -m dpo_recipes.models.tiny --family llama --out /tmp/tiny-llama
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from dpo_recipes.cli import CommandParser
from dpo_recipes.errors import exit_on_user_error
from dpo_recipes.names import REPO_ROOT

from .families import FAMILIES


def supports_sdpa(family: str) -> bool:
    """Whether the family's transformers class has SDPA attention (Gemma 2's soft-capping has none: eager instead)."""
    return getattr(transformers, FAMILIES[family].model_class)._supports_sdpa


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
    spec = FAMILIES[family]
    specials = [t for t in (spec.bos, spec.eos, spec.pad) if t] + list(spec.extra)
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
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=spec.template,
        model_max_length=4096,
    )


def build_model(family: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A randomly initialised causal LM of the family's architecture class, sized for a CPU."""
    spec = FAMILIES[family]
    heads = 4
    config = AutoConfig.for_model(
        spec.model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        head_dim=hidden_size // heads,  # some families default to a fixed head size (Gemma 256, Qwen3 128)
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **spec.config,
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


@exit_on_user_error
def main() -> None:
    parser = CommandParser(prog="python -m dpo_recipes.models.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="llama")
    parser.add_argument("--out", required=True)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(build_tiny(a.family, a.out, a.hidden_size, a.num_layers, a.seed))


if __name__ == "__main__":
    main()

"""Read a GGUF export back with transformers' GGUF reader and compare it with the run it came from.

    python -m dpo_recipes.commands.gguf_check RUN FILE.gguf [--prompts 4] [--max_new_tokens 24] [--json result.json]

The reference is the run as it trained: for a LoRA / QLoRA run its base model in float32 with the adapter applied by
PEFT (not merged), for a full fine-tune its own folder. Compared on held-out prompts of the demo data
(data/demo/test.jsonl): the tokenizer's ids (plain text and chat-template rendering), chat template and special
tokens; the largest |logit difference| over prompt-and-reply conversations, to the adapter model and (LoRA) to PEFT's
merge of it in float32, the weights the file should hold; how often the next-token argmax agrees; greedy replies
token for token.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_recipes.cli import CommandParser
from dpo_recipes.errors import UserError, exit_on_user_error
from .merge import adapter_model
from dpo_recipes.names import REPO_ROOT
from dpo_recipes.report.run_record import write_json

PROMPTS_FILE = REPO_ROOT / "data" / "demo" / "test.jsonl"
# Text the tokenizers must split alike beyond the chat turns: spaces, digits, punctuation, accents, non-Latin script.
PLAIN_TEXTS = ("Hello world!", "  two leading spaces\n\nand\ttabs", "In 2024, 12345 apples cost $6.78.",
               "café naïve façade, Ünïcödé", "日本語のテキスト", "don't won't it's")


def demo_rows(count: int) -> list[dict]:
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines()[:count]]
    return [{"prompt": r["prompt"], "conversation": r["prompt"] + r["chosen"]} for r in rows]


def reference_model(run_dir: Path):
    """The run as it trained, in float32: PEFT's adapter model (unmerged), or the full fine-tune."""
    if (run_dir / "adapter_config.json").is_file():
        return adapter_model(run_dir, "float32").eval()
    return AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32, use_safetensors=True).eval()


def load_gguf(path: Path):
    """(model in float32, tokenizer) as transformers' GGUF reader builds them from the file alone."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, NotImplementedError) as err:
        raise UserError(f"{path}: transformers cannot read it back: {str(err).strip().splitlines()[0]}") from None
    return model.eval(), tokenizer


def chat_ids(tokenizer, messages, generation_prompt: bool) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                         return_dict=True)["input_ids"]


def compare_tokenizers(run_tok, file_tok, rows: list[dict]) -> dict:
    texts = list(PLAIN_TEXTS) + [run_tok.apply_chat_template(r["conversation"], tokenize=False) for r in rows]
    plain = [t for t in texts if run_tok(t).input_ids != file_tok(t).input_ids]
    chat = [r["prompt"][0]["content"] for r in rows
            if chat_ids(run_tok, r["prompt"], True) != chat_ids(file_tok, r["prompt"], True)]
    specials = {k: (getattr(run_tok, k), getattr(file_tok, k)) for k in ("bos_token", "eos_token", "pad_token")}
    return {
        "texts_compared": len(texts) + len(rows),
        "ids_differ": plain + chat,
        "chat_template_equal": run_tok.chat_template == file_tok.chat_template,
        "special_tokens_differ": {k: v for k, v in specials.items() if v[0] != v[1]},
    }


def largest_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@torch.no_grad()
def greedy(model, ids: list[int], max_new_tokens: int, pad_token_id: int) -> list[int]:
    inputs = torch.tensor([ids])
    out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    return out[0, len(ids):].tolist()


@torch.no_grad()
def check_export(run_dir: str | Path, gguf_path: str | Path, prompts: int = 4, max_new_tokens: int = 24) -> dict:
    """Compare the GGUF file with its run; returns the measured differences (nothing is asserted here)."""
    run_dir, gguf_path = Path(run_dir), Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF file")
    rows = demo_rows(prompts)
    run_tok = AutoTokenizer.from_pretrained(run_dir)
    loaded, file_tok = load_gguf(gguf_path)
    reference = reference_model(run_dir)
    pad = run_tok.pad_token_id if run_tok.pad_token_id is not None else run_tok.eos_token_id
    conversations = [torch.tensor([chat_ids(run_tok, row["conversation"], False)]) for row in rows]
    from_file = [loaded(ids).logits for ids in conversations]
    wanted = [reference(ids).logits for ids in conversations]
    adapter_effect = None
    if hasattr(reference, "disable_adapter"):
        with reference.disable_adapter():
            adapter_effect = largest_diff([reference(ids).logits for ids in conversations], wanted)
    replies = []
    for row in rows:
        prompt_ids = chat_ids(run_tok, row["prompt"], True)
        want, got = (greedy(m, prompt_ids, max_new_tokens, pad) for m in (reference, loaded))
        replies.append({"prompt": row["prompt"][0]["content"], "run": run_tok.decode(want, skip_special_tokens=True),
                        "gguf": run_tok.decode(got, skip_special_tokens=True), "same_ids": want == got})
    merged = None
    if hasattr(reference, "merge_and_unload"):  # the weights the file should hold: PEFT's merge, in float32
        merged = largest_diff([reference.merge_and_unload()(ids).logits for ids in conversations], from_file)
    agree = sum((f.argmax(-1) == w.argmax(-1)).sum().item() for f, w in zip(from_file, wanted))
    return {
        "run_dir": str(run_dir),
        "file": str(gguf_path),
        "bytes": gguf_path.stat().st_size,
        "tokenizer": compare_tokenizers(run_tok, file_tok, rows),
        "max_abs_logit_diff": largest_diff(from_file, wanted),
        "max_abs_logit_diff_to_merged": merged,
        "max_abs_logit": max(w.abs().max().item() for w in wanted),
        "top1_agreement": agree / sum(w.shape[1] for w in wanted),
        "adapter_effect_max_abs_logit": adapter_effect,
        "greedy_max_new_tokens": max_new_tokens,
        "greedy_replies_equal": sum(r["same_ids"] for r in replies),
        "greedy_replies": replies,
    }


def summary(result: dict) -> str:
    tok = result["tokenizer"]
    same_tok = not tok["ids_differ"] and tok["chat_template_equal"] and not tok["special_tokens_differ"]
    return (f"check {result['file']}: tokenizer {'equal' if same_tok else 'DIFFERS'} on {tok['texts_compared']} "
            f"texts; max |logit diff| {result['max_abs_logit_diff']:.2e} (logits up to "
            f"{result['max_abs_logit']:.1f}), next-token argmax agrees at {result['top1_agreement']:.1%} of "
            f"positions; greedy replies equal {result['greedy_replies_equal']}/"
            f"{len(result['greedy_replies'])}")


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(prog="python -m dpo_recipes.commands.gguf_check", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run folder the file was exported from")
    parser.add_argument("gguf", help="the GGUF file")
    parser.add_argument("--prompts", type=int, default=4, help="held-out demo prompts to compare on")
    parser.add_argument("--max_new_tokens", type=int, default=24, help="length of the greedy replies")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    result = check_export(args.run_dir, args.gguf, args.prompts, args.max_new_tokens)
    print(summary(result), flush=True)
    if args.json:
        write_json(Path(args.json), result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

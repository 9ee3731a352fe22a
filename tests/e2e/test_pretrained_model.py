"""The offline pretrained model (dpo_recipes/models/pretrained.py) materialised for real: its folder against the GGUF file
(tokens and logits), and the same bytes from a second conversion."""

import hashlib

import pytest
import torch

from dpo_recipes.models.pretrained import find_gguf, materialise


NAME = "smollm2-135m-instruct"


def sha256s(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_materialised_folder_matches_gguf_logits_and_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl import ModelConfig

    from dpo_recipes.models.loading import resolve_model_path

    folder = materialise(NAME)  # the project cache: shared with the end-to-end test
    assert resolve_model_path(ModelConfig(model_name_or_path=NAME), None) == str(folder)
    gguf, sha = find_gguf(NAME)
    assert folder.name == f"{NAME}-{sha[:16]}"
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json",
            "README.md"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."}]
    ids = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)["input_ids"]
    assert ids.tolist() == gguf_tokenizer.apply_chat_template(messages, return_tensors="pt",
                                                              return_dict=True)["input_ids"].tolist()
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()(ids).logits
    assert ours.dtype == torch.float32 and ours.shape == (1, ids.shape[1], 49152)
    assert (ours - theirs).abs().max().item() <= 1e-5

    again = materialise(NAME, cache_dir=tmp_path)  # a second conversion, elsewhere: the same bytes
    assert sha256s(again) == sha256s(folder)

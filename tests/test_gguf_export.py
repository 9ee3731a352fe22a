"""GGUF export (dpo_recipes/commands/gguf_export.py) read back by transformers' GGUF reader (dpo_recipes/commands/gguf_check.py), on
tiny random Llama and Qwen2 models with a freshly initialised LoRA adapter whose B matrices are not zero, so the
adapter changes the logits. Training runs and `make export` are in tests/e2e/test_make_export.py."""

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from dpo_recipes.commands import gguf_export
from dpo_recipes.commands.gguf_check import check_export
from dpo_recipes.commands.gguf_export import export, main, permute_for_llama
from dpo_recipes.models.tiny import build_tiny

# Largest |logit difference| to the run's PEFT adapter model, per type, on these tiny models (logits up to about 0.7,
# the adapter moves them by about 1): f32 is the merge's float32 rounding, the others the type's rounding of random
# weights. Measured (Llama / Qwen2): f32 1.4e-6 / 9.6e-7, f16 2.7e-3 / 7.2e-4, bf16 3.4e-2 / 6.5e-3,
# q8_0 6.5e-2 / 4.7e-2. SmolLM2's own figures are in docs/export.md.
TOLERANCE = {"f32": 1e-4, "f16": 5e-3, "bf16": 5e-2, "q8_0": 1e-1}


def lora_run(folder, family, base):
    """A run folder as training leaves it (adapter, tokenizer, run_config.json) with a fresh adapter, B nonzero."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "run_config.json").write_text(json.dumps({
        "script": {"tiny_model": family}, "training": {}, "model": {"model_name_or_path": str(base)}}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {family: lora_run(root / f"{family}-run", family, build_tiny(family, root / family))
            for family in ("llama", "qwen2")}


def test_llama_permutation_is_what_transformers_reader_undoes():
    """llama.cpp's query/key row order, undone by transformers' GGUF reader, gives the rows back; it is not the
    identity (so a missing permutation would show), for queries (9 heads) and grouped keys (3 heads)."""
    rng = np.random.default_rng(0)
    for n_head, n_kv in ((9, 9), (9, 3)):
        weight = rng.standard_normal((n_kv * 8, 12)).astype(np.float32)
        stored = permute_for_llama(weight, n_kv)
        assert not np.array_equal(stored, weight)
        back = LlamaTensorProcessor()._reverse_permute_weights(stored, n_head, n_kv)
        assert np.array_equal(back, weight)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_export_reads_back_like_the_adapter_model(runs, family, outtype, tmp_path):
    """transformers loads the file; its tokenizer gives the run's ids, chat template and special tokens; its logits
    are the PEFT adapter model's within the type's tolerance, and greedy replies match for f32."""
    out = tmp_path / f"{family}.gguf"
    record = export(runs[family], out, outtype)
    assert out.is_file() and record["kind"] == "LoRA" and record["architecture"] == family
    matrices = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[outtype]
    assert matrices in record["tensor_types"] and set(record["tensor_types"]) <= {matrices, "F32"}
    result = check_export(runs[family], out, prompts=3, max_new_tokens=8)
    tokenizer = result["tokenizer"]
    assert tokenizer["ids_differ"] == [] and tokenizer["chat_template_equal"] and not tokenizer["special_tokens_differ"]
    assert result["max_abs_logit_diff"] <= TOLERANCE[outtype]
    assert result["adapter_effect_max_abs_logit"] > 1000 * TOLERANCE["f32"]  # the adapter matters: not vacuous
    if outtype == "f32":
        assert result["greedy_replies_equal"] == 3
        assert result["max_abs_logit_diff_to_merged"] <= 1e-6  # the file holds PEFT's merged weights exactly
        assert result["top1_agreement"] == 1.0
    else:
        assert result["max_abs_logit_diff"] > 0  # really stored in the smaller type


def test_without_the_permutation_llama_logits_differ(runs, tmp_path, monkeypatch):
    """The check sees a wrong layout: the same export with llama.cpp's row order left out reads back wrong."""
    monkeypatch.setattr(gguf_export, "permute_for_llama", lambda weight, n_head: weight)
    out = tmp_path / "unpermuted.gguf"
    export(runs["llama"], out, "f32")
    assert check_export(runs["llama"], out, prompts=1, max_new_tokens=2)["max_abs_logit_diff"] > 1e-3


def test_bos_flag_vocabulary_padding_and_sampling_settings_survive(tmp_path):
    """A tokenizer that adds BOS keeps doing so after the round trip; embedding rows beyond the tokenizer's
    vocabulary become llama.cpp's unused padding tokens and ids stay the same; a generation config that samples
    becomes llama.cpp's general.sampling settings."""
    base = build_tiny("llama", tmp_path / "base")
    full = tmp_path / "full"
    shutil.copytree(base, full)
    tokenizer = AutoTokenizer.from_pretrained(full)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.save_pretrained(full)
    model = AutoModelForCausalLM.from_pretrained(full)
    model.resize_token_embeddings(len(tokenizer) + 8)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9)
    model.save_pretrained(full)
    out = tmp_path / "padded.gguf"
    record = export(full, out, "f32")
    assert record["kind"] == "full" and record["sampling"] == {"temperature": 0.7, "top_p": 0.9}
    fields = gguf.GGUFReader(out).fields
    assert fields["general.sampling.temp"].contents() == pytest.approx(0.7)
    assert fields["tokenizer.ggml.token_type"].contents()[-1] == gguf.TokenType.UNUSED
    read = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    text = "Hello there, 42 planets."
    assert read(text).input_ids == AutoTokenizer.from_pretrained(full)(text).input_ids
    assert read(text).input_ids[0] == tokenizer.bos_token_id
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    assert loaded.config.vocab_size == len(tokenizer) + 8
    ids = torch.tensor([read(text).input_ids])
    with torch.no_grad():
        assert (loaded(ids).logits - model(ids).logits).abs().max().item() <= TOLERANCE["f32"]


def refusal(argv, capsys) -> str:
    capsys.readouterr()  # what the test printed before (building a tiny model)
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err
    return err


def test_refusals_are_one_line(runs, tmp_path, capsys):
    """Exit 2 with one line: an architecture llama.cpp's export here does not know, a folder without weights, an
    existing OUT without --force (left untouched), an unknown type, an OUT that is not .gguf."""
    mistral = build_tiny("mistral", tmp_path / "mistral")
    assert "model_type 'mistral': GGUF export supports llama, qwen2 only" in refusal([mistral, tmp_path / "m.gguf"],
                                                                                    capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run_config.json").write_text("{}")
    assert "no weights" in refusal([empty, tmp_path / "e.gguf"], capsys)
    assert "no such run folder" in refusal([tmp_path / "missing", tmp_path / "x.gguf"], capsys)
    taken = tmp_path / "taken.gguf"
    taken.write_text("mine")
    assert "exists; choose a new OUT or pass --force" in refusal([runs["llama"], taken], capsys)
    assert taken.read_text() == "mine"
    assert "--outtype: must be one of" in refusal([runs["llama"], tmp_path / "q.gguf", "--outtype", "q4_k"], capsys)
    assert "must be a file ending in .gguf" in refusal([runs["llama"], tmp_path / "model.bin"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if "gguf" in p.name) == ["taken.gguf"]  # no partial files
    main([str(runs["llama"]), str(taken), "--force", "--outtype", "q8_0"])
    assert taken.read_bytes()[:4] == b"GGUF"

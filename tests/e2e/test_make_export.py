"""`make export`: a trained LoRA run as one GGUF file (dpo_recipes/commands/gguf_export.py), read back by transformers' GGUF
reader and compared with the run's adapter applied by PEFT (dpo_recipes/commands/gguf_check.py): short training runs of the
demo recipe on tiny Llama and Qwen2 models, and SmolLM2-135M-Instruct with a fresh adapter."""

import json
import sys

import pytest
import torch

from dpo_recipes.commands.gguf_check import check_export
from tests.e2e.test_make_merge import train
from tests.helpers import demo_subset, run
from tests.test_gguf_export import TOLERANCE

ENV = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = demo_subset(root / "data", 16, 8)
    return {"llama": train(root / "llama", data), "qwen2": train(root / "qwen2", data, "--tiny_model", "qwen2")}


def make_export(run_dir, out, *args, check=True):
    return run(["make", "--no-print-directory", "export", f"RUN={run_dir}", f"OUT={out}",
                *([f"ARGS={' '.join(args)}"] if args else [])], env=ENV, check=check)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_make_export_reads_back_like_the_trained_adapter(runs, family, tmp_path):
    """The default type is f16; f32 gives the adapter model's logits within 1e-4 and its greedy replies (--check
    prints the comparison); q8_0 stays within its tolerance; each file is loaded by transformers alone."""
    default = tmp_path / "default.gguf"
    proc = make_export(runs[family], default)
    assert f"as f16 -> {default}" in proc.stdout and f"LoRA, {family}" in proc.stdout
    for outtype in ("f16", "f32", "q8_0"):
        out = tmp_path / f"{outtype}.gguf" if outtype != "f16" else default
        if outtype != "f16":
            proc = make_export(runs[family], out, "--outtype", outtype, "--check")
            assert f"check {out}: tokenizer equal" in proc.stdout
        result = check_export(runs[family], out, prompts=3, max_new_tokens=12)
        tok = result["tokenizer"]
        assert not tok["ids_differ"] and tok["chat_template_equal"] and not tok["special_tokens_differ"]
        assert result["max_abs_logit_diff"] <= TOLERANCE[outtype], (outtype, result["max_abs_logit_diff"])
        assert result["adapter_effect_max_abs_logit"] > 1000 * TOLERANCE["f32"]  # training moved the logits
        if outtype == "f32":
            assert result["greedy_replies_equal"] == 3
    assert (tmp_path / "q8_0.gguf").stat().st_size < default.stat().st_size < (tmp_path / "f32.gguf").stat().st_size


@pytest.mark.slow
def test_make_export_refusals(runs, tmp_path):
    """One line, exit 2, through make: OUT or RUN missing, an existing OUT without --force (kept as it was)."""
    taken = tmp_path / "taken.gguf"
    taken.write_text("mine")
    proc = make_export(runs["llama"], taken, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-2:-1] == [
        f"error: {taken}: exists; choose a new OUT or pass --force"], proc.stderr
    assert "Traceback" not in proc.stderr and taken.read_text() == "mine"
    proc = run(["make", "--no-print-directory", "export", f"RUN={runs['llama']}"], check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == "error: make export needs OUT=<new file.gguf>"
    proc = run(["make", "--no-print-directory", "export", f"OUT={taken}"], check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0].startswith("error: set RUN=")


@pytest.mark.slow
def test_smollm2_export_equals_the_adapter_model(tmp_path):
    """SmolLM2-135M-Instruct (the demo's model) with a fresh LoRA adapter whose B matrices are not zero, exported in
    f32: transformers reads back the run's tokenizer and chat template, logits within 1e-4 of the adapter model's
    and the same greedy replies to held-out demo prompts."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_recipes.commands.gguf_export import main
    from dpo_recipes.models.pretrained import materialise

    base = materialise("smollm2-135m-instruct")
    run_dir = tmp_path / "run"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"], init_lora_weights=False))
    with torch.no_grad():  # a small nonzero B: a changed model that still answers in sentences
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    model.save_pretrained(run_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(run_dir)
    (run_dir / "run_config.json").write_text(json.dumps({
        "script": {"tiny_model": "llama"}, "training": {}, "model": {"model_name_or_path": "smollm2-135m-instruct"}}))
    out = tmp_path / "smollm2.gguf"
    record = main([str(run_dir), str(out), "--outtype", "f32"])
    assert record["architecture"] == "llama" and record["tensor_types"] == {"F32": 272}  # tied: no output.weight
    result = check_export(run_dir, out, prompts=3, max_new_tokens=16)
    tok = result["tokenizer"]
    assert not tok["ids_differ"] and tok["chat_template_equal"] and not tok["special_tokens_differ"]
    assert result["max_abs_logit_diff_to_merged"] <= 1e-6  # the file holds PEFT's merged weights exactly
    # Against the unmerged adapter model: float32 rounding at SmolLM2's logit scale (up to about 40). The reference
    # is itself 1.8e-4 from the same model in float64 (docs/results/export-smollm2.json), so 1e-4 absolute is not a
    # bound any float32 file could meet; 1e-5 of the largest logit is.
    assert result["max_abs_logit_diff"] <= 1e-5 * result["max_abs_logit"]
    assert result["adapter_effect_max_abs_logit"] > 0.1
    assert result["greedy_replies_equal"] == 3, result["greedy_replies"]
    print(json.dumps({k: result[k] for k in ("max_abs_logit_diff", "adapter_effect_max_abs_logit")}), file=sys.stderr)

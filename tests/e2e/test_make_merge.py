"""`make merge`: a LoRA or QLoRA run folded into standalone weights (dpo_recipes/commands/merge.py), on real training runs of
the demo recipe (tiny Llama; QLoRA with bitsandbytes' 4-bit NF4 layers on CPU)."""

import json
import sys

import pytest
import torch

from tests.helpers import REPO, demo_subset, run

ENV = {"OMP_NUM_THREADS": "1"}
TOLERANCE = 1e-5  # largest |logit difference| allowed between the merged model and the adapter model, in float32


def train(out, data, *extra):
    run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", "--dataset_name",
         str(data), "--output_dir", str(out), "--max_steps", "3", "--learning_rate", "0.02", "--warmup_steps", "0",
         "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
         "--eval_report", "false", "--report_to", "none", *extra], env=ENV)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    data = demo_subset(root / "data", 16, 8)
    return {
        "lora": train(root / "lora", data),
        "qlora": train(root / "qlora", data, "--load_in_4bit", "true", "--use_bnb_nested_quant", "true"),
    }


def probe_ids(tokenizer):
    conversation = [{"role": "user", "content": "What is the capital of Peru?"},
                    {"role": "assistant", "content": "The capital of Peru is Lima."}]
    return tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)["input_ids"]


def logits_of(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_merged_logits_equal_the_adapter_models(runs, kind, tmp_path):
    """The merged model's logits equal those of the run's adapter applied by PEFT to the base loaded in the compute
    dtype (float32 here) within 1e-5; the adapter visibly changes the base. For QLoRA the difference to the
    adapter on the 4-bit base, the model training saw, is the 4-bit quantisation error of the base; it is printed."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    run_dir, out = runs[kind], tmp_path / "merged"
    proc = run(["make", "--no-print-directory", "merge", f"RUN={run_dir}", f"OUT={out}"], env=ENV)
    assert f"-> {out}" in proc.stdout
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "merge_info.json"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists() and not list(out.glob("*.bin"))
    with safe_open(out / "model.safetensors", "pt") as f:  # plain float32 tensors: nothing 4-bit, no LoRA left
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())
        assert not any("lora" in k for k in f.keys())

    base_path = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    ids = probe_ids(AutoTokenizer.from_pretrained(out))
    merged = logits_of(AutoModelForCausalLM.from_pretrained(out), ids)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    base_logits = logits_of(base, ids)
    adapter = logits_of(PeftModel.from_pretrained(base, run_dir), ids)
    diff = (merged - adapter).abs().max().item()
    assert diff <= TOLERANCE
    assert (merged - base_logits).abs().max().item() > 100 * TOLERANCE
    record = json.loads((out / "merge_info.json").read_text())
    expected = {"lora": "LoRA", "qlora": "QLoRA"}[kind]
    assert (record["adapter"], record["dtype"], record["base_loaded_quantized"]) == (expected, "float32", False)
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "merged into the base weights" in card
    if kind == "qlora":
        quantized = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32))
        four_bit = logits_of(PeftModel.from_pretrained(quantized, run_dir), ids)
        gap = (merged - four_bit).abs().max().item()
        print(f"QLoRA: merged vs adapter on the float32 base {diff:.2e}; vs adapter on the 4-bit base {gap:.3f} "
              f"(logits up to {merged.abs().max().item():.3f})")
        assert gap > 100 * TOLERANCE  # the 4-bit base really is another model: the comparison above is not vacuous


@pytest.mark.slow
def test_merge_in_bfloat16(runs, tmp_path):
    """--dtype bfloat16 stores bf16 weights; its logits stay within bf16 rounding of the float32 merge."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_recipes.commands.merge import merge_run

    outs = {}
    for dtype in ("float32", "bfloat16"):
        outs[dtype] = tmp_path / dtype
        merge_run(runs["lora"], outs[dtype], dtype)
    with safe_open(outs["bfloat16"] / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    ids = probe_ids(AutoTokenizer.from_pretrained(outs["float32"]))
    full = logits_of(AutoModelForCausalLM.from_pretrained(outs["float32"]), ids)
    half = logits_of(AutoModelForCausalLM.from_pretrained(outs["bfloat16"], dtype=torch.float32), ids)
    assert 0 < (full - half).abs().max().item() < 0.05


@pytest.mark.slow
def test_merge_refuses_what_it_cannot_do(runs, tmp_path, capsys):
    """One line, exit 2: a full fine-tune has no adapter; OUT is not overwritten unless --overwrite; OUT is needed."""
    from dpo_recipes.commands.merge import main

    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "run_config.json").write_text((runs["lora"] / "run_config.json").read_text())
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        ([str(full), str(tmp_path / "x")], "nothing to merge"),
        ([str(runs["lora"]), str(taken)], "is not empty"),
        ([str(tmp_path / "missing"), str(tmp_path / "y")], "no such run folder"),
        ([str(runs["lora"]), str(tmp_path / "z"), "--dtype", "float8"], "--dtype: must be one of"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith("error:") and message in err and "\n" not in err, (argv, err)
    assert (taken / "keep.txt").read_text() == "mine" and not (tmp_path / "z").exists()
    proc = run(["make", "--no-print-directory", "merge", f"RUN={runs['lora']}"], check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == "error: make merge needs OUT=<new folder for the merged model>"

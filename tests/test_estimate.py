"""The memory estimate (dpo_recipes/estimate.py) against what transformers, PyTorch, TRL, bitsandbytes and DeepSpeed
actually hold, against the peak memory of real CPU training runs, and against published figures."""

import json
import re
import sys

import pytest
import torch

from tests.helpers import REPO, run
from dpo_recipes.estimate import (
    ALL_LINEAR,
    BUILTIN,
    GiB,
    Architecture,
    Setup,
    deepspeed_model_states,
    estimate,
    layer_activation_bytes,
    outside_layers_bytes,
    recipe_setup,
)

MODEL_TYPE = {"Qwen": "qwen2", "mistralai": "mistral"}


def hf_config(arch: Architecture, model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        model_type, num_hidden_layers=arch.layers, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, vocab_size=arch.vocab,
        tie_word_embeddings=arch.tied_embeddings, max_position_embeddings=2048,
    )


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_parameter_counts_equal_the_transformers_model(name):
    """Every built-in architecture, instantiated by transformers on the meta device, has exactly the parameters
    (total, decoder linear weights, largest module) that the estimate counts."""
    from transformers import AutoModelForCausalLM

    arch = BUILTIN[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(arch, MODEL_TYPE.get(name.split("/")[0], "llama")))
    counted = arch.params()
    assert sum(p.numel() for p in model.parameters()) == counted["total"]
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in ALL_LINEAR)
    assert linear == counted["linear"]
    assert max(p.numel() for p in model.parameters()) == arch.largest_layer()


# Small architectures of different shapes (MLP ratio, grouped-query attention, biases) for the activation check.
SHAPES = {
    "llama-h256": (Architecture(4, 256, 1024, 4, 2, 1024, False), "llama"),
    "qwen2-h192": (Architecture(3, 192, 512, 6, 2, 800, True, qkv_bias=True), "qwen2"),
}
CASES = {  # Setup fields, what autograd runs
    "full fp32": dict(),
    "full bf16 weights": dict(dtype="bfloat16", mixed_precision=True),
    "full fp32 weights, bf16 autocast": dict(mixed_precision=True),
    "LoRA fp32": dict(use_peft=True),
    "LoRA fp32, dropout 0.1": dict(use_peft=True, lora_dropout=0.1),
    "LoRA on bf16 base (fp32 adapters)": dict(use_peft=True, dtype="bfloat16", mixed_precision=True),
    "LoRA on bf16 base (bf16 adapters)": dict(use_peft=True, dtype="bfloat16", mixed_precision=True, lora_bytes=2),
    "full fp32, gradient checkpointing": dict(gradient_checkpointing=True),
}


def saved_bytes(arch, model_type, case, batch, seq=64):
    """Bytes of the distinct tensors autograd saves for the backward pass of one forward (parameters excluded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    dtype = torch.bfloat16 if case.get("dtype") == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_config(hf_config(arch, model_type), dtype=dtype)
    add_fused_lm_head(model)  # as the trainer does: no (tokens x vocab) logits
    if case.get("use_peft"):
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=case.get("lora_dropout", 0.0),
                                                 target_modules=list(ALL_LINEAR)),
                               autocast_adapter_dtype=case.get("lora_bytes") != 2)  # TRL's QLoRA / ZeRO-3 choice
    if case.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, arch.vocab, (batch, seq))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = case.get("mixed_precision") and dtype == torch.float32
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(autocast)):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, fused_lm_head=True)
    return sum(seen.values())


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_activation_bytes_per_token_match_autograd(shape, case):
    """The per-token activation bytes of the estimate (layers + final norm and LM head input) agree within 5% with
    what autograd keeps: the slope of the saved bytes between two batch sizes, which removes fixed costs."""
    arch, model_type = SHAPES[shape]
    fields = dict(CASES[case])
    gc = fields.pop("gradient_checkpointing", False)
    setup = Setup(arch=arch, max_length=64, lora_r=8, lora_targets=ALL_LINEAR, on_gpu=False,
                  **{"dtype": "float32", "mixed_precision": False, **fields})
    measured = (saved_bytes(arch, model_type, CASES[case], 8) - saved_bytes(arch, model_type, CASES[case], 4)) / (4 * 64)
    if gc:  # only each layer's input is kept between the forward and the backward
        predicted = arch.layers * setup.act_bytes * arch.hidden + outside_layers_bytes(setup)
    else:
        predicted = arch.layers * layer_activation_bytes(setup) + outside_layers_bytes(setup)
    assert measured == pytest.approx(predicted, rel=0.05), (measured, predicted)


@pytest.mark.parametrize("stage,offload_opt,offload_param", [(2, False, False), (2, True, False), (3, False, False),
                                                            (3, True, False), (3, True, True)])
def test_deepspeed_model_states_follow_deepspeeds_estimators(stage, offload_opt, offload_param):
    """Full fine-tune under DeepSpeed: the model-state bytes per GPU are DeepSpeed's own estimate (its
    estimate_zero{2,3}_model_states_mem_needs), for 8 GPUs on one machine."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    arch = BUILTIN["Qwen/Qwen2.5-7B"]
    psi, gpus = arch.params()["total"], 8
    ours = deepspeed_model_states(psi, gpus, stage, offload_opt, offload_param)
    if stage == 3:
        _, theirs, largest = estimate_zero3_model_states_mem_needs(
            psi, arch.largest_layer(), num_gpus_per_node=gpus, cpu_offload=offload_opt,
            cpu_offload_params=offload_param)
        ours += 4 * arch.largest_layer()  # the estimate's "gathered layer" row
        assert largest == 4 * arch.largest_layer()
    else:
        _, theirs = estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=gpus, cpu_offload=offload_opt)
    assert ours == pytest.approx(theirs, abs=2)
    # and the estimate's rows carry exactly that
    setup = Setup(arch=arch, gpus=gpus, zero_stage=stage, offload_optimizer=offload_opt, offload_param=offload_param)
    rows = dict(estimate(setup)["rows"])
    states = next(v for k, v in rows.items() if k.startswith("model states"))
    assert states == deepspeed_model_states(psi, gpus, stage, offload_opt, offload_param)


def _trainer(tmp_path, tiny_llama, **overrides):
    """A real PreferenceTrainer on the tiny model and the bundled demo data (one optimizer step taken)."""
    from dpo_recipes.config import parse_config
    from dpo_recipes.data import load_preference_data
    from dpo_recipes.modeling import load_model, load_tokenizer
    from dpo_recipes.trainer import PreferenceTrainer

    argv = ["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--model_name_or_path", str(tiny_llama),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    script_args, training_args, model_args = parse_config(argv)
    tokenizer = load_tokenizer(str(tiny_llama), model_args, False, None)
    data = load_preference_data(script_args, seed=training_args.seed, tokenizer=tokenizer,
                                max_length=training_args.max_length, truncation_mode=training_args.truncation_mode,
                                num_proc=training_args.dataset_num_proc)
    train, evals = data.train, data.eval
    model, peft_config = load_model(str(tiny_llama), model_args, False)
    trainer = PreferenceTrainer(model=model, args=training_args, train_dataset=train.select(range(8)),
                                eval_dataset=evals.select(range(4)), processing_class=tokenizer,
                                peft_config=peft_config)
    trainer.train()
    return trainer, model_args, training_args


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_weight_and_state_bytes_equal_the_trainers(method, tmp_path, tiny_llama):
    """After a real training step, the bytes of the weights (4-bit storage and quantisation constants for QLoRA),
    the trainable parameters, their gradients and AdamW's moments equal the estimate's rows (within 1%)."""
    import bitsandbytes as bnb

    overrides = {"full": {"use_peft": "false"}, "lora": {},
                 "qlora": {"load_in_4bit": "true", "use_bnb_nested_quant": "true"}}[method]
    trainer, model_args, training_args = _trainer(tmp_path, tiny_llama, **overrides)
    from dpo_recipes.estimate import architecture_from_config

    arch = architecture_from_config(json.loads((tiny_llama / "config.json").read_text()))
    setup = Setup(arch=arch, dtype="float32", mixed_precision=False, use_peft=method != "full", lora_r=model_args.lora_r,
                  lora_targets=tuple(model_args.lora_target_modules), load_in_4bit=method == "qlora",
                  double_quant=method == "qlora", optim=training_args.optim, on_gpu=False)
    rows = estimate(setup)["rows"]
    model = trainer.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    grads = [p.grad for p in trainable if p.grad is not None] or trainable  # PEFT grads are set to None after the step
    held_states = _bytes(trainable) + _bytes(grads) + _bytes(state)
    if method == "full":
        held_states -= _bytes(trainable)  # the weights have their own row
    predicted_states = next(v for k, v in rows if "AdamW" in k)
    assert held_states == pytest.approx(predicted_states, rel=0.01)
    if method == "qlora":
        assert {p.dtype for p in trainable} == {torch.bfloat16}  # TRL's QLoRA cast, which the estimate assumes
        weights = 0
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                q = module.weight.quant_state
                # 4-bit codes, one absmax per 64 weights (8-bit with double quantisation, then one fp32 per 256);
                # the two 256-entry lookup tables per layer are left out (under 1 MiB for an 8B model)
                weights += _bytes([module.weight.data, q.absmax])
                if q.nested:
                    weights += _bytes([q.state2.absmax]) + 4  # + the fp32 offset of the 8-bit absmax
        frozen = [p for n, p in model.named_parameters() if not p.requires_grad
                  and not isinstance(p, bnb.nn.Params4bit)]
        weights += _bytes(frozen)
        predicted = next(v for k, v in rows if k.startswith("base weights"))
        assert weights == pytest.approx(predicted, rel=0.01)


MEASURE = r'''
import json, os, sys, threading, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from dpo_recipes.config import parse_config
from dpo_recipes.data import load_preference_data
from dpo_recipes.modeling import load_model, load_tokenizer
from dpo_recipes.trainer import PreferenceTrainer
s, t, m = parse_config(sys.argv[1:])
tok = load_tokenizer(m.model_name_or_path, m, False, None)
data = load_preference_data(s, seed=t.seed, tokenizer=tok, max_length=t.max_length, truncation_mode=t.truncation_mode,
                            num_proc=t.dataset_num_proc)
train, ev = data.train, data.eval
import gc; gc.collect()
base = peak = rss()
done = threading.Event()
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss()); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
model, peft = load_model(m.model_name_or_path, m, False)
PreferenceTrainer(model=model, args=t, train_dataset=train, eval_dataset=ev, processing_class=tok,
                  peft_config=peft).train()
done.set(); time.sleep(0.01)
print(json.dumps({"increase": max(peak, rss()) - base}))
'''


@pytest.mark.slow
def test_peak_memory_of_cpu_training_runs(tmp_path):
    """Peak RSS of real training runs (tiny Llama, hidden 256, 4 layers; full fine-tune with its reference copy;
    3 steps so that AdamW's moments are there) against the estimate of the same setup. glibc is told to return
    every allocation of 64 KiB or more to the system at once, so that RSS follows what is allocated. The estimate
    leaves out the Python process's own growth during training (measured ~50 MiB here), so the peak may be above it
    by that much, never below; the growth between two batch sizes isolates the activations."""
    from dpo_recipes.estimate import architecture_from_config
    from dpo_recipes.tiny import build_tiny

    model_dir = build_tiny("llama", tmp_path / "model", hidden_size=256, num_layers=4)
    data = tmp_path / "data"
    data.mkdir()
    text = " ".join(["The quick brown fox jumps over the lazy dog and keeps running far away."] * 20)
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: tell me a story."}],
             "chosen": [{"role": "assistant", "content": f"Story {i}. {text}"}],
             "rejected": [{"role": "assistant", "content": f"No {i}. {text[::-1]}"}]} for i in range(40)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    arch = architecture_from_config(json.loads((model_dir / "config.json").read_text()))
    measured, predicted = {}, {}
    for batch in (2, 8):  # every sequence is cut at max_length 128: 2 x batch x 128 tokens
        argv = ["--config", "recipes/demo-cpu/config.yaml", "--model_name_or_path", str(model_dir),
                "--dataset_name", str(data), "--output_dir", str(tmp_path / f"out{batch}"), "--max_steps", "3",
                "--per_device_train_batch_size", str(batch), "--use_peft", "false", "--eval_strategy", "no",
                "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
        proc = run([sys.executable, str(script), *argv], env={"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"})
        measured[batch] = json.loads(proc.stdout.strip().splitlines()[-1])["increase"]
        setup = Setup(arch=arch, micro_batch=batch, max_length=128, dtype="float32", mixed_precision=False,
                      gradient_checkpointing=False, use_peft=False, optim="adamw_torch_fused", on_gpu=False)
        predicted[batch] = estimate(setup)["total"]["full"]
    print({b: (round(measured[b] / 2**20, 1), round(predicted[b] / 2**20, 1)) for b in measured}, "MiB measured, predicted")
    for batch in measured:
        assert predicted[batch] <= measured[batch] <= predicted[batch] + 100 * 2**20
    assert measured[8] - measured[2] == pytest.approx(predicted[8] - predicted[2], rel=0.2)


def test_recipes_read_from_their_files():
    """The recipes' settings come from config.yaml, accelerate.yaml and the DeepSpeed JSON they name."""
    qlora, about = recipe_setup("llama3-qlora")
    assert qlora.lora_dropout == 0.0  # TRL's disable_dropout: no dropout masks to count
    assert (qlora.load_in_4bit, qlora.double_quant, qlora.use_peft, qlora.zero_stage) == (True, True, True, None)
    assert (qlora.micro_batch, qlora.max_length, qlora.gpus, qlora.dtype) == (2, 1024, 1, "bfloat16")
    assert qlora.lora_targets == ALL_LINEAR and about["source"].startswith(("built-in", "config.json"))
    offload, _ = recipe_setup("qwen2.5-7b-full-zero3-offload")
    assert (offload.zero_stage, offload.offload_optimizer, offload.offload_param, offload.gpus) == (3, True, True, 8)
    sixteen, _ = recipe_setup("qwen2.5-7b-full-zero3", gpus=16)
    assert (sixteen.gpus, sixteen.nodes) == (16, 2)
    demo, about = recipe_setup("demo-cpu")
    assert not demo.on_gpu and about["source"].startswith("tiny llama")


def test_published_figures():
    """QLoRA (Dettmers et al. 2023; artidoro/qlora README): a 65B model fine-tunes on one 48 GB GPU; the Hugging
    Face 4-bit blog: 33B on one 24 GB GPU. Settings of the repository's Guanaco scripts: NF4 with double
    quantisation, bf16, LoRA r=64 on every linear layer (dropout 0.05), batch 4 of 16 + 512 tokens, gradient
    checkpointing, paged 32-bit AdamW. The estimate is a worst case (every sequence at full length); the paged
    optimizer moves AdamW's moments to CPU memory under pressure."""

    def guanaco(name):
        setup = Setup(arch=BUILTIN[name], micro_batch=4, max_length=528, sequences_per_item=1, use_peft=True,
                      lora_r=64, lora_targets=ALL_LINEAR, lora_dropout=0.05, load_in_4bit=True, double_quant=True,
                      optim="paged_adamw_32bit")
        result = estimate(setup)
        return result["total"]["checkpointed"], result["trainable"] * 8  # total, AdamW moments (32-bit)

    total65, moments65 = guanaco("huggyllama/llama-65b")
    assert total65 <= 48 * GiB
    total33, moments33 = guanaco("huggyllama/llama-30b")
    assert total33 - moments33 <= 24 * GiB  # fits once the paged optimizer has moved the moments out
    # and this repository's 8B QLoRA recipe fits the 24 GB GPU its config names
    qlora, _ = recipe_setup("llama3-qlora")
    assert estimate(qlora)["total"]["checkpointed"] <= 24 * GiB


@pytest.mark.slow
def test_make_estimate_prints_a_table_and_refuses_a_bad_recipe():
    ok = run(["make", "--no-print-directory", "estimate", "RECIPE=llama3-qlora", "GPU_MEM=24"])
    assert "base weights (NF4 0.516 B/param linear" in ok.stdout and "24 GiB yes" in ok.stdout
    bad = run(["make", "--no-print-directory", "estimate", "RECIPE=no-such-recipe"], check=False)
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown recipe 'no-such-recipe'" in errors[0] and "Traceback" not in bad.stderr
    # make's own report of the exit code 2 ("make[1]: ***" when run from another make); nothing else
    assert re.search(r"make(\[\d+\])?: \*\*\*", bad.stderr)
    assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 2


def test_architecture_comes_from_a_local_config_json(tiny_llama, tmp_path):
    """A model folder on this machine is read from its config.json; a model found nowhere is one clear error."""
    from dpo_recipes.errors import UserError
    from dpo_recipes.estimate import find_architecture

    config = json.loads((tiny_llama / "config.json").read_text())
    arch, source = find_architecture(str(tiny_llama), None)
    assert source == str(tiny_llama / "config.json")
    assert (arch.layers, arch.hidden, arch.intermediate, arch.vocab) == (
        config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"], config["vocab_size"])
    with pytest.raises(UserError, match="no config.json for 'someone/unknown-model' on this machine"):
        find_architecture("someone/unknown-model", None)


def test_lora_dropout_counted_only_when_dropout_acts(tmp_path):
    """disable_dropout (TRL's default true) zeroes LoRA's dropout: no masks then; with it off, they are counted."""
    import shutil

    for name, extra, expected in [("off", "lora_dropout: 0.05\n", 0.0),
                                  ("on", "lora_dropout: 0.05\ndisable_dropout: false\n", 0.05)]:
        recipe = tmp_path / "recipes" / name
        shutil.copytree(REPO / "recipes" / "llama3-qlora", recipe)
        (recipe / "config.yaml").write_text((recipe / "config.yaml").read_text() + extra)
        setup, _ = recipe_setup(name, root=tmp_path)
        assert setup.lora_dropout == expected


def test_offload_host_ram_includes_deepspeeds_buffer_factor():
    """DeepSpeed's estimator multiplies the offloaded states by 1.5 (additional_buffer_factor); the recipe's README
    quotes the total: 127.67 GiB of states, 63.84 of buffer, 14.19 of bf16 reference, 205.7 GiB per machine."""
    setup, _ = recipe_setup("qwen2.5-7b-full-zero3-offload")
    host = dict(estimate(setup)["host"])
    states = host["offloaded model states (18 B/param)"]
    assert host["DeepSpeed's buffer factor (x1.5 of the offloaded states)"] == pytest.approx(0.5 * states)
    assert sum(host.values()) / 2**30 == pytest.approx(205.7, abs=0.05)
    readme = (REPO / "recipes/qwen2.5-7b-full-zero3-offload/README.md").read_text()
    assert f"**{sum(host.values()) / 2**30:.1f}**, plus the OS" in readme

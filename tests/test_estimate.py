"""The memory estimate (dpo_recipes/commands/estimate.py) against what transformers, PyTorch, TRL, bitsandbytes and DeepSpeed
actually hold, and against published figures. Against real training runs: tests/e2e/test_memory_estimate.py."""

import json

import pytest
import torch

from tests.helpers import REPO
from dpo_recipes.commands.estimate import (
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
    # the compact LM head: on a CPU without DeepSpeed, unless the config turns it off
    assert demo.compact_head and not qlora.compact_head and not offload.compact_head
    head = {name: value for name, value in estimate(demo)["rows"] if name.startswith("LM head")}
    assert list(head) == ["LM head logits (compact head, fp32) and working buffers"]


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


def test_architecture_comes_from_a_local_config_json(tiny_llama, tmp_path):
    """A model folder on this machine is read from its config.json; a model found nowhere is one clear error."""
    from dpo_recipes.errors import UserError
    from dpo_recipes.commands.estimate import find_architecture

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

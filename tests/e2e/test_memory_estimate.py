"""The memory estimate (dpo_recipes/commands/estimate.py) against real training: the bytes a trainer holds after a step, the
peak memory of CPU training runs, and `make estimate` as a user runs it."""

import json
import re
import sys

import pytest
import torch

from tests.helpers import REPO, run
from dpo_recipes.commands.estimate import Setup, estimate


def _trainer(tmp_path, tiny_llama, **overrides):
    """A real PreferenceTrainer on the tiny model and the bundled demo data (one optimizer step taken)."""
    from dpo_recipes.train.config import parse_config
    from dpo_recipes.data.preparation import load_preference_data
    from dpo_recipes.models.loading import load_model, load_tokenizer
    from dpo_recipes.train.trainer import PreferenceTrainer

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
    from dpo_recipes.commands.estimate import architecture_from_config

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
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.models.loading import load_model, load_tokenizer
from dpo_recipes.train.trainer import PreferenceTrainer
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
    by that much, and below it only by what the estimate's worst case over-counts (every token scored); the growth
    between two batch sizes isolates the activations."""
    from dpo_recipes.commands.estimate import architecture_from_config
    from dpo_recipes.models.tiny import build_tiny

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
                      gradient_checkpointing=False, use_peft=False, optim="adamw_torch_fused", on_gpu=False,
                      compact_head=True)
        predicted[batch] = estimate(setup)["total"]["full"]
    print({b: (round(measured[b] / 2**20, 1), round(predicted[b] / 2**20, 1)) for b in measured}, "MiB measured, predicted")
    for batch in measured:
        # the estimate scores every token (the compact head's logits: its worst case); the prompts here are not
        # scored, which it over-counts by about 1% at batch 8
        assert 0.98 * predicted[batch] <= measured[batch] <= predicted[batch] + 100 * 2**20
    assert measured[8] - measured[2] == pytest.approx(predicted[8] - predicted[2], rel=0.2)


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

"""Real DPO configs from other projects, as data for tests/test_migrate.py, each with its origin (repository,
path, commit). The text is the file's, unchanged."""

import shlex

import yaml


# the Zephyr-7B-beta full DPO recipe (TRL 0.8 era, last version before the handbook moved to TRL 0.9's API)
HANDBOOK_ZEPHYR_FULL = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/zephyr-7b-beta/dpo/config_full.yaml",
    "commit": "606d2e954fd17999af40e6fb4f712055ca11b2f0",
    "text": """# Model arguments
model_name_or_path: alignment-handbook/zephyr-7b-sft-full
torch_dtype: null

# Data training arguments
# For definitions, see: src/h4/training/config.py
dataset_mixer:
  HuggingFaceH4/ultrafeedback_binarized: 1.0
dataset_splits:
- train_prefs
- test_prefs
preprocessing_num_workers: 12

# DPOTrainer arguments
bf16: true
beta: 0.01
do_eval: true
evaluation_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: False
hub_model_id: zephyr-7b-dpo-full
learning_rate: 5.0e-7
log_level: info
logging_steps: 10
lr_scheduler_type: cosine
max_length: 1024
max_prompt_length: 512
num_train_epochs: 1
optim: adamw_torch
output_dir: data/zephyr-7b-dpo-full
per_device_train_batch_size: 8
per_device_eval_batch_size: 8
push_to_hub: true
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1""",
}

# the Zephyr-7B-beta QLoRA DPO recipe, same commit
HANDBOOK_ZEPHYR_QLORA = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/zephyr-7b-beta/dpo/config_qlora.yaml",
    "commit": "606d2e954fd17999af40e6fb4f712055ca11b2f0",
    "text": """# Model arguments
model_name_or_path: alignment-handbook/zephyr-7b-sft-qlora
torch_dtype: bfloat16
use_flash_attention_2: true

# LoRA arguments
use_peft: true
load_in_4bit: true
lora_r: 128
lora_alpha: 128
lora_dropout: 0.05
lora_target_modules:
- q_proj
- k_proj
- v_proj
- o_proj
- gate_proj
- up_proj
- down_proj

# Data training arguments

dataset_mixer:
  HuggingFaceH4/ultrafeedback_binarized: 1.0
dataset_splits:
- train_prefs
- test_prefs
preprocessing_num_workers: 12

# DPOTrainer arguments
bf16: true
beta: 0.01
do_eval: true
evaluation_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 4
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: zephyr-7b-dpo-qlora
learning_rate: 5.0e-6
log_level: info
logging_steps: 10
lr_scheduler_type: cosine
max_length: 1024
max_prompt_length: 512
num_train_epochs: 1
optim: paged_adamw_32bit
output_dir: data/zephyr-7b-dpo-qlora # It is handy to append `hub_model_revision` to keep track of your local experiments
per_device_train_batch_size: 4
per_device_eval_batch_size: 8
push_to_hub: true
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1""",
}

# a two-dataset dataset_mixer
HANDBOOK_CAI = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/constitutional-ai/dpo/config_anthropic.yaml",
    "commit": "606d2e954fd17999af40e6fb4f712055ca11b2f0",
    "text": """# Model arguments
model_name_or_path: alignment-handbook/mistral-7b-sft-constitutional-ai
torch_dtype: null

# Data training arguments
# For definitions, see: src/h4/training/config.py
dataset_mixer:
  HuggingFaceH4/ultrafeedback_binarized: 1.0
  HuggingFaceH4/cai-conversation-harmless: 1.0
dataset_splits:
- train_prefs
- test_prefs
preprocessing_num_workers: 12

# DPOTrainer arguments
bf16: true
beta: 0.1
do_eval: true
do_train: true
evaluation_strategy: steps
eval_steps: 1000
gradient_accumulation_steps: 1
gradient_checkpointing: true
hub_model_id: mistral-7b-dpo-constitutional-ai
learning_rate: 5.0e-7
log_level: info
logging_steps: 10
lr_scheduler_type: linear
max_length: 1024
max_prompt_length: 512
num_train_epochs: 3
optim: rmsprop
output_dir: data/mistral-7b-dpo-constitutional-ai
per_device_train_batch_size: 2
per_device_eval_batch_size: 8
push_to_hub: true
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1""",
}

# the DPO/IPO/KTO scan's DPO config (hub_model_revision)
HANDBOOK_ALIGN_SCAN = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/pref_align_scan/dpo/config_zephyr.yaml",
    "commit": "606d2e954fd17999af40e6fb4f712055ca11b2f0",
    "text": """# Model arguments
model_name_or_path: alignment-handbook/zephyr-7b-sft-full
torch_dtype: null

# Data training arguments
dataset_mixer:
  HuggingFaceH4/ultrafeedback_binarized: 1.0
dataset_splits:
- train_prefs
- test_prefs
preprocessing_num_workers: 12

# Training arguments with sensible defaults
bf16: true
beta: 0.01
loss_type: sigmoid
do_eval: true
evaluation_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: False
hub_model_id: zephyr-7b-align-scan
hub_model_revision: dpo-beta-0.01
learning_rate: 5.0e-7
logging_steps: 10
lr_scheduler_type: cosine
max_prompt_length: 512
num_train_epochs: 1
optim: adamw_torch
output_dir: data/zephyr-7b-align-scan-dpo-beta-0.01
per_device_train_batch_size: 8
per_device_eval_batch_size: 8
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1""",
}

# the 2025 form of the handbook's dataset_mixture
HANDBOOK_ZEPHYR_FULL_2025 = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/zephyr-7b-beta/dpo/config_full.yaml",
    "commit": "19f03455e1b7c0450db769f841ced8e650610c06",
    "text": """# Model arguments
model_name_or_path: alignment-handbook/zephyr-7b-sft-full
torch_dtype: null

# Data training arguments
dataset_mixture:
  datasets:
    - id: HuggingFaceH4/ultrafeedback_binarized
      config: default
      split: train_prefs           
      columns:
        - chosen
        - rejected
      weight: 1.0
    - id: HuggingFaceH4/ultrafeedback_binarized
      config: default
      split: test_prefs
      columns:
        - chosen
        - rejected
      weight: 1.0
  test_split_size: 2000
  seed: 0
dataset_num_proc: 12

# DPOTrainer arguments
bf16: true
beta: 0.01
do_eval: true
eval_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: False
hub_model_id: zephyr-7b-dpo-full
learning_rate: 5.0e-7
log_level: info
logging_steps: 10
lr_scheduler_type: cosine
max_length: 1024
max_prompt_length: 512
num_train_epochs: 1
optim: adamw_torch
output_dir: data/zephyr-7b-dpo-full
per_device_train_batch_size: 8
per_device_eval_batch_size: 8
push_to_hub: true
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1""",
}

# SmolLM3's APO-zero recipe: padding_free, Liger kernels, wandb, a chat_template_kwargs column
HANDBOOK_SMOLLM3_APO = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/smollm3/dpo/apo.yaml",
    "commit": "19f03455e1b7c0450db769f841ced8e650610c06",
    "text": """# Config for 2 node, with GBS 32
# Model arguments
model_name_or_path: HuggingFaceTB/SmolLM3-3B-checkpoints
model_revision: it-SFT
torch_dtype: bfloat16
attn_implementation: flash_attention_2
trust_remote_code: true

# Data training arguments
dataset_mixture:
  datasets:                     
    - id: HuggingFaceTB/smoltalk2
      config: Preference
      split: llama_3.1_tulu_3_8b_preference_mixture_no_think     
      columns:
        - chosen
        - rejected
        - prompt
        - chat_template_kwargs
      weight: 0.5
    - id: HuggingFaceTB/smoltalk2
      config: Preference
      split: tulu_3_8b_pref_mix_Qwen3_32B_Qwen3_0.6B_think 
      columns:
        - chosen
        - rejected
        - prompt
        - chat_template_kwargs
      weight: 0.25
dataset_num_proc: 12
# DPO trainer config
bf16: true
do_eval: false
eval_strategy: 'no'
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: true
output_dir: data/SmolLM3-DPO
run_name: SmolLM3-DPO

hub_strategy: every_save
learning_rate: 1.0e-06
log_level: info
logging_steps: 1
logging_strategy: steps
lr_scheduler_type: cosine_with_min_lr
lr_scheduler_kwargs:
  min_lr_rate: 0.1
max_grad_norm: 0.2
beta: 0.05
loss_type: apo_zero
max_length: 24576
num_train_epochs: 1
overwrite_output_dir: true
per_device_train_batch_size: 1
push_to_hub: true
padding_free: true
report_to:
- wandb
save_strategy: steps
save_steps: 0.5
save_total_limit: 1
seed: 42
use_liger_kernel: true
warmup_ratio: 0.1""",
}

# StarChat2-15B: four splits of two datasets in one mixture, tensorboard and wandb
HANDBOOK_STARCHAT2 = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/starchat2-15b/dpo/config_v0.1.yaml",
    "commit": "19f03455e1b7c0450db769f841ced8e650610c06",
    "text": """# Model arguments
model_name_or_path: HuggingFaceH4/starchat2-15b-sft-v0.1
torch_dtype: bfloat16

# Data training arguments
# For definitions, see: src/h4/training/config.py
dataset_mixture:
  datasets:
    - id: HuggingFaceH4/ultrafeedback_binarized
      config: default
      split: train_prefs
      columns:
        - chosen
        - rejected
      weight: 1.0
    - id: HuggingFaceH4/orca_dpo_pairs
      config: default
      split: train_prefs
      columns:
        - chosen
        - rejected
      weight: 1.0
    - id: HuggingFaceH4/ultrafeedback_binarized
      config: default
      split: test_prefs
      columns:
        - chosen
        - rejected
      weight: 1.0
    - id: HuggingFaceH4/orca_dpo_pairs
      config: default
      split: test_prefs
      columns:
        - chosen
        - rejected
      weight: 1.0
  test_split_size: 2000
  seed: 0
dataset_num_proc: 12

# DPOTrainer arguments
bf16: true
beta: 0.05
do_eval: true
eval_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 8
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: False
hub_model_id: starchat2-15b-dpo-v0.1
learning_rate: 5.0e-7
log_level: info
logging_steps: 10
lr_scheduler_type: cosine
max_length: 1024
max_prompt_length: 512
num_train_epochs: 2
optim: adamw_torch
output_dir: data/starchat2-15b-dpo-v0.1
per_device_train_batch_size: 2
per_device_eval_batch_size: 4
push_to_hub: true
report_to:
- tensorboard
- wandb
save_strategy: "no"
seed: 42
warmup_ratio: 0.1""",
}

# Zephyr-7B-Gemma: a train and a test split of one dataset in one mixture, tensorboard and wandb
HANDBOOK_ZEPHYR_GEMMA = {
    "repository": "huggingface/alignment-handbook",
    "path": "recipes/zephyr-7b-gemma/dpo/config_full.yaml",
    "commit": "19f03455e1b7c0450db769f841ced8e650610c06",
    "text": """# Model arguments
model_name_or_path: HuggingFaceH4/zephyr-7b-gemma-sft-v0.1
torch_dtype: bfloat16

# Data training arguments
dataset_mixture:
  datasets:
    - id: argilla/dpo-mix-7k
      config: default
      split: train
      columns:
        - chosen
        - rejected
      weight: 1.0
    - id: argilla/dpo-mix-7k
      config: default
      split: test
      columns:
        - chosen
        - rejected
      weight: 1.0
  test_split_size: 500
  seed: 0
dataset_num_proc: 12

# DPOTrainer arguments
bf16: true
beta: 0.05
do_eval: true
eval_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 8
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: False
hub_model_id: zephyr-7b-gemma-dpo
learning_rate: 5.0e-7
log_level: info
logging_steps: 10
lr_scheduler_type: cosine
max_length: 1024
max_prompt_length: 512
num_train_epochs: 2
optim: adamw_torch
output_dir: data/zephyr-7b-gemma-dpo
per_device_train_batch_size: 2
per_device_eval_batch_size: 4
push_to_hub: true
report_to:
- tensorboard
- wandb
save_strategy: "no"
seed: 42
warmup_ratio: 0.1""",
}

# TRL 0.8.6 has no DPO YAML; its documented DPO configuration is the command line in the docstring of
# examples/scripts/dpo.py (the LoRA one; TrlParser took the same keys from a --config YAML file).
TRL_086_DPO_COMMAND = {
    "repository": "huggingface/trl",
    "path": "examples/scripts/dpo.py",
    "commit": "e90e8d91d2265e484f229c45a5eb8982f94a2936",  # tag v0.8.6
    "text": r"""# peft:
python examples/scripts/dpo.py \
    --dataset_name=trl-internal-testing/hh-rlhf-trl-style \
    --model_name_or_path=gpt2 \
    --per_device_train_batch_size 4 \
    --learning_rate 1e-3 \
    --gradient_accumulation_steps 1 \
    --logging_steps 10 \
    --eval_steps 500 \
    --output_dir="dpo_anthropic_hh" \
    --optim rmsprop \
    --warmup_steps 150 \
    --report_to wandb \
    --bf16 \
    --logging_first_step \
    --no_remove_unused_columns \
    --use_peft \
    --lora_r=16 \
    --lora_alpha=16""",
}


def command_to_config(command: str) -> dict:
    """`--key value`, `--key=value`, `--flag` (true) and `--no_flag` (false) as a config mapping."""
    lines = [line.rstrip(" \\") for line in command.splitlines() if not line.startswith("#")]
    tokens = [t for t in shlex.split(" ".join(lines)) if t.startswith("--") or not t.endswith(("python", ".py"))]
    config, i = {}, 0
    while i < len(tokens):
        key, _, value = tokens[i][2:].partition("=")
        if not value and (i + 1 == len(tokens) or tokens[i + 1].startswith("--")):
            config[key.removeprefix("no_")] = not key.startswith("no_")
        else:
            if not value:
                i += 1
                value = tokens[i]
            value = yaml.safe_load(value)
            try:  # argparse types "1e-3" as the float field it fills; YAML 1.1 would leave it a string
                value = float(value) if isinstance(value, str) else value
            except ValueError:
                pass
            config[key] = value
        i += 1
    return config

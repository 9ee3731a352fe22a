"""Config keys of alignment-handbook recipes and of TRL 0.x / transformers 4 runs that this project's stack no longer
takes, and what replaces each. config.py explains unknown keys with this table; migrate.py converts whole files.

`changed_in` names the release (for the handbook: the commit) that renamed or removed a key where its source history
was checked; None means only that the key is absent from the pinned versions (TRL 1.16, transformers 5.24). The
handbook keys are those of its `src/alignment/configs.py` (2024, TRL 0.8 era); the TRL 0.x script keys those of
`DpoScriptArguments` in TRL 0.8.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyChange:
    old: str
    new: str | None  # the key that replaces it here; None: removed, nothing takes its place
    origin: str  # where the old key lives: transformers, TRL, alignment-handbook, TRL 0.x dpo.py
    changed_in: str | None  # the release that changed it, where checked
    note: str  # what the old key did and what to do here
    hint: str | None = None  # the short form in an error message, where "now '<new>'" would mislead

    def short(self) -> str:
        """What to write instead, for an error message."""
        if self.hint:
            return self.hint
        when = f" in {self.changed_in}" if self.changed_in else ""
        if self.new:
            return f"now '{self.new}'" + (f", {self.changed_in}" if self.changed_in else "")
        return f"removed{when}"


_TRUNCATION = ("TRL 1.x cuts prompt + completion together at max_length (truncation_mode keep_start: the end of the "
               "completion goes); a prompt of max_length tokens or more is dropped, and this project's data audit "
               "counts those rows (prompt_too_long) and the pairs that lose completion tokens (truncated)")

HANDBOOK_2025 = "alignment-handbook 19f0345"  # July 2025: its configs moved onto TRL's ScriptArguments and DPOConfig

KEY_CHANGES: tuple[KeyChange, ...] = (
    # transformers TrainingArguments
    KeyChange("evaluation_strategy", "eval_strategy", "transformers", "transformers 4.41",
              "same values (no, steps, epoch)"),
    KeyChange("warmup_ratio", "warmup_steps", "transformers", "transformers 5.0",
              "warmup_steps takes the fraction: a value below 1 is a fraction of the training steps",
              "now 'warmup_steps', which takes a fraction below 1, transformers 5.0"),
    KeyChange("no_cuda", "use_cpu", "transformers", None, "same meaning: train on CPU"),
    KeyChange("per_gpu_train_batch_size", "per_device_train_batch_size", "transformers", None, "same meaning"),
    KeyChange("per_gpu_eval_batch_size", "per_device_eval_batch_size", "transformers", None, "same meaning"),
    KeyChange("push_to_hub_model_id", "hub_model_id", "transformers", None, "same meaning"),
    KeyChange("push_to_hub_organization", "hub_model_id", "transformers", None,
              "the organisation becomes the prefix of hub_model_id (org/name)"),
    KeyChange("push_to_hub_token", "hub_token", "transformers", None,
              "better: keep the token out of the config, in HF_TOKEN or `huggingface-cli login`"),
    KeyChange("include_inputs_for_metrics", "include_for_metrics", "transformers", None,
              "true becomes include_for_metrics: [inputs]"),
    KeyChange("logging_dir", None, "transformers", None,
              "TensorBoard writes under output_dir (runs/...), or where the TENSORBOARD_LOGGING_DIR variable says"),
    # TRL ModelConfig and DPOConfig
    KeyChange("torch_dtype", "dtype", "TRL", "TRL 0.27",
              "TRL's ModelConfig took dtype in 0.23 and dropped torch_dtype in 0.27; a null value becomes float32 "
              "(transformers 4 loaded float32, transformers 5 reads null as 'auto': the checkpoint's dtype)"),
    KeyChange("max_prompt_length", None, "TRL", "TRL 0.29",
              "TRL 0.x cut prompts to their last max_prompt_length tokens (TRL 0.8, the handbook's, when prompt + "
              "completion exceeded max_length; TRL 0.13 on, always). " + _TRUNCATION
              + "; to cap prompts, filter the data"),
    KeyChange("max_completion_length", None, "TRL", "TRL 0.29",
              "TRL 0.x cut every completion to this many tokens. " + _TRUNCATION),
    KeyChange("max_target_length", None, "TRL", "TRL 0.14", "encoder-decoder models only; this project trains "
              "decoder-only models"),
    KeyChange("is_encoder_decoder", None, "TRL", "TRL 0.15", "encoder-decoder models only"),
    KeyChange("generate_during_eval", None, "TRL", "TRL 0.29",
              "logged policy and reference samples to W&B / Comet at each evaluation; here the end-of-run "
              "evaluation report shows policy and reference replies side by side (eval_report_examples)"),
    KeyChange("rpo_alpha", None, "TRL", "TRL 0.29",
              "weight of an NLL term on the chosen reply (RPO); TRL 1.x writes it as loss_type [sigmoid, sft] with "
              "loss_weights [1, rpo_alpha], which this project's sigmoid loss does not combine with"),
    KeyChange("reference_free", None, "TRL", "TRL 0.29", "a uniform reference; TRL 1.x points to its CPOTrainer"),
    KeyChange("force_use_ref_model", None, "TRL", "TRL 0.29", "a given reference model is now always used"),
    KeyChange("model_adapter_name", None, "TRL", "TRL 0.29", "only the default PEFT adapter is trained"),
    KeyChange("ref_adapter_name", None, "TRL", "TRL 0.29", "with use_peft the reference is the base model with "
              "adapters disabled"),
    KeyChange("ref_model_init_kwargs", None, "TRL", "TRL 0.29", "the reference loads like the policy"),
    KeyChange("label_pad_token_id", None, "TRL", "TRL 0.29", "no longer settable"),
    KeyChange("padding_value", None, "TRL", "TRL 0.26",
              "a pad token id; DPOConfig's pad_token takes a token string, and the tokenizer's pad token (or EOS) "
              "is used by default"),
    KeyChange("use_num_logits_to_keep", None, "TRL", "TRL 0.17", "a memory option; its successor "
              "use_logits_to_keep is gone too (TRL 0.29)"),
    KeyChange("use_logits_to_keep", None, "TRL", "TRL 0.29", "a memory option the trainer no longer has"),
    KeyChange("tools", None, "TRL", "TRL 0.29", "tools for the chat template; give them in the data instead"),
    KeyChange("base_model_attribute_name", None, "TRL", "TRL 0.29", "a Liger-kernel detail"),
    KeyChange("use_liger_loss", "use_liger_kernel", "TRL", "TRL 0.28", "same switch, now transformers' key"),
    # alignment-handbook (src/alignment/configs.py)
    KeyChange("dataset_mixer", "dataset_name", "alignment-handbook", HANDBOOK_2025,
              "one source at fraction 1 becomes dataset_name; several become dataset_mixture entries with their "
              "fraction (docs/data.md)", "now 'dataset_name' or 'dataset_mixture'"),
    KeyChange("dataset_splits", "dataset_train_split", "alignment-handbook", HANDBOOK_2025,
              "the split with 'train' in its name becomes dataset_train_split, the one with 'test' "
              "dataset_test_split", "now 'dataset_train_split' and 'dataset_test_split'"),
    KeyChange("dataset_configs", "dataset_config", "alignment-handbook", HANDBOOK_2025,
              "one configuration per source, in the order of dataset_mixer"),
    KeyChange("preprocessing_num_workers", "dataset_num_proc", "alignment-handbook", HANDBOOK_2025,
              "processes for dataset preparation"),
    KeyChange("use_flash_attention_2", "attn_implementation", "alignment-handbook", "alignment-handbook 95dc472",
              "true becomes attn_implementation: flash_attention_2 (needs the flash-attn package)"),
    KeyChange("hub_model_revision", "hub_revision", "alignment-handbook", HANDBOOK_2025, "the hub branch pushed to"),
    KeyChange("chat_template", "chat_template_path", "alignment-handbook", None,
              "the Jinja template goes into a file next to the new config; chat_template_path names it"),
    KeyChange("auto_insert_empty_system_msg", None, "alignment-handbook", HANDBOOK_2025,
              "the handbook added an empty system turn when the chat template mentions one (its default: true); "
              "here prompts are rendered by the tokenizer's chat template as they are"),
    KeyChange("truncation_side", None, "alignment-handbook", HANDBOOK_2025,
              "the tokenizer's truncation side; " + _TRUNCATION),
    KeyChange("text_column", None, "alignment-handbook", HANDBOOK_2025, "continued pretraining only"),
    KeyChange("tokenizer_name_or_path", None, "alignment-handbook", HANDBOOK_2025,
              "the tokenizer is the model's; chat_template_path replaces its template"),
    KeyChange("base_model_revision", None, "alignment-handbook", HANDBOOK_2025,
              "model_revision picks the model's revision"),
    KeyChange("model_code_revision", None, "alignment-handbook", HANDBOOK_2025,
              "model_revision picks the model's revision"),
    # TRL 0.8 examples/scripts/dpo.py (DpoScriptArguments)
    KeyChange("sanity_check", None, "TRL 0.x dpo.py", None,
              "trained on 50 rows; here `make smoke RECIPE=<name>` or max_steps"),
    KeyChange("ignore_bias_buffers", None, "TRL 0.x dpo.py", None, "a DDP workaround of that script"),
    KeyChange("gradient_checkpointing_use_reentrant", "gradient_checkpointing_kwargs", "TRL 0.x dpo.py", None,
              "becomes gradient_checkpointing_kwargs: {use_reentrant: <value>}"),
    KeyChange("config", None, "TRL 0.x dpo.py", None, "the config file's own path; pass it with --config"),
    KeyChange("env", None, "TRL", None, "environment variables TrlParser set from the config; set them in the shell "
              "(this project ignores the block, keeping secrets out of configs)"),
)

CHANGES: dict[str, KeyChange] = {change.old: change for change in KEY_CHANGES}

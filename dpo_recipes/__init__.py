"""dpo-recipes: the shared package every recipe imports. One module per concern:

config (YAML + CLI, validation), data (loading, formats, audit), modeling (model, tokenizer, adapters),
losses (the DPO variants), trainer (DPOTrainer with our losses), reporting (manifest, metrics, plots), run (the
training path in order), tiny (tiny local models for the demo and tests).
"""

import logging
import warnings

# bitsandbytes' CPU backend tries to fetch an optional kernel from the hub at import and logs a warning when it
# cannot; it then uses its built-in CPU kernel, which is what we want. Keep that line out of every run's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# TRL 1.16 (unwrap_model_for_generation, disable_gradient_checkpointing) and PEFT 0.21 (PeftModel) still read the
# model's `is_gradient_checkpointing`, which transformers 5.24 deprecated; a user cannot act on that warning.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

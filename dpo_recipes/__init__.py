"""dpo-recipes: the shared package every recipe imports, in wings by the stage of a run:

    data/ -> models/ -> train/ -> report/, and commands/ on top (what make and python -m run)

The bottom (errors, names, renames, cli) stays here, at the package root. The package imports one way: data never
imports train, train never imports report, nothing imports commands (tests/test_package_layers.py checks it).
"""

import logging
import warnings

# bitsandbytes' CPU backend tries to fetch an optional kernel from the hub at import and logs a warning when it
# cannot; it then uses its built-in CPU kernel, which is what we want. Keep that line out of every run's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# With the hub offline, the `kernels` package (which bitsandbytes asks for that kernel) says it skips a publisher check.
logging.getLogger("kernels").setLevel(logging.ERROR)

# TRL 1.16 (unwrap_model_for_generation, disable_gradient_checkpointing) and PEFT 0.21 (PeftModel) still read the
# model's `is_gradient_checkpointing`, which transformers 5.24 deprecated; a user cannot act on that warning.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

"""Names shared across the package's layers: data columns and the files a run writes. The bottom module: it imports
nothing from the package, so every module may import it."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Columns of the preference data (data/sources.py, data/formats.py, data/preparation.py)
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
SCORE_COLUMNS = ("score_chosen", "score_rejected")  # default names; score_chosen_column / score_rejected_column

# Columns added to the preference data
MARGIN_COLUMN = "reward_margin"  # r(x, y_w) - r(x, y_l), for madpo; see margins.py
ROW_ID_COLUMN = "row_id"  # the pair's row in the training data, named when a batch goes non-finite
SEQUENCE_IDS = "sequence_ids"  # packed batches, per token: which of the batch's 2B sequences it is (-1: row padding)
BRANCH_IDS = "branch_ids"  # shared prompts, per token: 0 shared (prompt, row padding), 1 chosen, 2 rejected branch

# Files in a run's output_dir
AUDIT_FILE = "data_audit.json"
RUN_CONFIG = "run_config.json"  # the resolved config of the run that owns this output_dir
RUN_COMPLETE = "run_complete.json"  # written after the final save and evaluation
CHECKPOINT_COMPLETE = "checkpoint_complete.json"
REPORT_JSON = "eval_report.json"
REPORT_MD = "eval_report.md"

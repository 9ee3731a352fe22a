"""Train this recipe: `make train RECIPE=smollm2-135m`, or `python recipes/smollm2-135m/train.py --config
recipes/smollm2-135m/config.yaml [--key value ...]`. The training path is dpo_recipes/run.py."""

import sys
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE_DIR.parent.parent))  # the repository root, for `dpo_recipes`

from dpo_recipes.run import main  # noqa: E402

if __name__ == "__main__":
    main(RECIPE_DIR)

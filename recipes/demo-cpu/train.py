"""Train this recipe: `make train RECIPE=<this folder's name>`, or `accelerate launch --config_file accelerate.yaml
train.py --config config.yaml [--key value ...]` from the repository root. The training path is dpo_recipes/commands/train.py;
`make new-recipe NAME=<new> FROM=<this recipe> OWN=1` hands over a copy of it as the new recipe's own train.py."""

from pathlib import Path

from dpo_recipes.commands.train import main

if __name__ == "__main__":
    main(Path(__file__).resolve().parent)

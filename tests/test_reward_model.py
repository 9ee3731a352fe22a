"""MADPO's first step (dpo_recipes/commands/reward_model.py): what it refuses. Training a reward model with it:
tests/e2e/test_madpo_two_step.py."""

import pytest

from tests.helpers import REPO

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")


def test_reward_model_step_refuses_4bit_with_one_line(capsys, tmp_path):
    from dpo_recipes.commands.reward_model import main

    with pytest.raises(SystemExit) as exit_code:
        main(["--config", DEMO, "--load_in_4bit", "true", "--output_dir", str(tmp_path / "rm")])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: config: the reward model step does not support load_in_4bit")
    assert err[0] == "reward model: skipping DPO-only keys beta, loss_type"

"""A recipe's own loss through `make train`: the recipe folder's losses.py registers it, its config selects it, and
the logged losses are the loss's formula. Registering and checking it: tests/test_losses.py."""

import json

import pytest

from tests.helpers import run
from tests.test_losses import recipe  # noqa: F401 (fixture: a copy of the demo recipe with its own loss)


@pytest.mark.slow
def test_make_train_trains_the_recipe_loss(recipe, tmp_path):
    out = tmp_path / "run"
    args = (f"--max_steps 3 --warmup_steps 0 --logging_steps 1 --eval_strategy no --save_strategy no --eval_report false "
            f"--report_to none --output_dir {out}")
    run(["make", "--no-print-directory", "train", f"RECIPE={recipe.name}", f"ARGS={args}"])
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in logs] == [1, 2, 3]
    # relu(0.75 - beta h): at step 1 the fresh adapter gives h = 0, so the loss is 0.75 (sigmoid would give ln 2);
    # while every pair's beta h stays below 0.75, the batch loss is 0.75 minus the logged mean margin beta h.
    assert logs[0]["loss"] == pytest.approx(0.75, abs=1e-6)
    for entry in logs[1:]:
        assert 0 < entry["rewards/margins"] < 0.75
        assert entry["loss"] == pytest.approx(0.75 - entry["rewards/margins"], abs=1e-5)

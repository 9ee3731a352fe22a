"""A recipe's own loss through `make train`: the recipe folder's losses.py registers it, its config selects it, and
the logged losses are the loss's formula. Registering and checking it: tests/test_losses.py."""

import json
import math
import shutil
import uuid

import pytest
from transformers import AutoTokenizer

from tests.helpers import REPO, demo_subset, run
from tests.test_losses import SIMPO_PY, recipe  # noqa: F401 (fixture: a copy of the demo recipe with its own loss)
from dpo_recipes.data.tokenization import tokenize_pair


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


@pytest.fixture
def simpo_recipe():
    """A copy of the demo recipe whose losses.py is docs/losses.md's SimPO and whose config selects it."""
    folder = REPO / "recipes" / f"test-simpo-{uuid.uuid4().hex[:8]}"
    shutil.copytree(REPO / "recipes/demo-cpu", folder, symlinks=True)
    (folder / "losses.py").write_text(SIMPO_PY)
    config = (folder / "config.yaml").read_text().replace("loss_type: sigmoid", "loss_type: simpo\nsimpo_gamma: 0.5")
    (folder / "config.yaml").write_text(config.replace("beta: 0.1", "beta: 2.0"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_make_train_trains_a_reference_free_recipe_loss(simpo_recipe, tmp_path):
    """SimPO from the recipe's own losses.py: one training pair, one pair per step, so step 1's loss is that pair's
    -log s(beta/|y_w| logp_w - beta/|y_l| logp_l - gamma), with the policy's log-probs as the trainer logs them
    (logps/chosen, logps/rejected) and the completion lengths counted from the pair's tokens."""
    data, out = demo_subset(tmp_path / "data", 1, 4), tmp_path / "run"
    args = (f"--dataset_name {data} --max_steps 2 --per_device_train_batch_size 1 --warmup_steps 0 --logging_steps 1 "
            f"--eval_strategy no --save_strategy no --eval_report false --report_to none --output_dir {out}")
    run(["make", "--no-print-directory", "train", f"RECIPE={simpo_recipe.name}", f"ARGS={args}"])
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in logs] == [1, 2]
    row = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    ids = tokenize_pair(AutoTokenizer.from_pretrained(out), row)
    chosen = logs[0]["logps/chosen"] / len(ids["chosen_ids"])
    rejected = logs[0]["logps/rejected"] / len(ids["rejected_ids"])
    closed_form = math.log1p(math.exp(-(2.0 * (chosen - rejected) - 0.5)))  # -log s(x) = log(1 + e^-x)
    assert logs[0]["loss"] == pytest.approx(closed_form, rel=1e-4)
    assert abs(closed_form - math.log1p(math.exp(0.5))) > 1e-3  # not what equal rewards (or the log-ratios, 0) give

"""A recipe's own loss: one losses.py in the recipe folder registers it, its config selects it and sets its knobs,
which are checked like every other key; `make train` trains with it."""

import json
import shutil
import uuid

import pytest

from tests.helpers import REPO, run
from dpo_recipes.config import parse_config
from dpo_recipes.errors import UserError
from dpo_recipes.losses import BUILT_IN, LOSSES, register_loss

# The example of docs/losses.md ("Your own loss"), word for word.
LOSSES_PY = '''\
import torch

from dpo_recipes.losses import register_loss


def check(slic_delta):
    if not slic_delta > 0:
        raise ValueError(f"slic_delta must be > 0, got {slic_delta}")


@register_loss("slic", knobs={"slic_delta": 1.0}, check=check)
def slic(pairs, *, beta, slic_delta):
    """SLiC-HF's calibration loss (Zhao et al. 2023): a hinge on the scaled log-ratio difference."""
    return torch.relu(slic_delta - beta * pairs.h)
'''


@pytest.fixture
def recipe():
    """A copy of the demo recipe under a fresh name, with losses.py and `loss_type: slic`."""
    name = f"test-loss-{uuid.uuid4().hex[:8]}"
    folder = REPO / "recipes" / name
    shutil.copytree(REPO / "recipes/demo-cpu", folder, symlinks=True)
    (folder / "losses.py").write_text(LOSSES_PY)
    config = (folder / "config.yaml").read_text().replace("loss_type: sigmoid", "loss_type: slic\nslic_delta: 0.75")
    (folder / "config.yaml").write_text(config)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    LOSSES.pop("slic", None)


def test_docs_show_the_example():
    assert LOSSES_PY in (REPO / "docs/losses.md").read_text()


def test_recipe_config_selects_its_loss_and_knob(recipe):
    _, args, _ = parse_config(["--config", str(recipe / "config.yaml"), "--slic_delta", "0.5"])
    assert args.loss_type == ["slic"] and args.loss_knobs == {"slic_delta": 0.5}


@pytest.mark.parametrize("argv, message", [
    (["--slic_delta", "-1"], "config: slic_delta must be > 0, got -1.0"),
    (["--slic_delta", "abc"], "config: key 'slic_delta' must be float, got str 'abc'"),
    (["--slic_deta", "1"], "command line: unknown key 'slic_deta' (did you mean 'slic_delta'?)"),
    (["--loss_type", "sigmoid"], "config: key 'slic_delta' is a knob of loss_type slic, which is not selected"),
])
def test_bad_knobs_are_one_line(recipe, argv, message):
    with pytest.raises(UserError) as err:
        parse_config(["--config", str(recipe / "config.yaml"), *argv])
    assert str(err.value).startswith(message)


def test_built_in_names_cannot_be_replaced():
    assert set(BUILT_IN) == {"sigmoid", "ipo", "cdpo", "rdpo", "robust", "madpo"}
    with pytest.raises(ValueError, match="'sigmoid' is built in"):
        register_loss("sigmoid")(lambda pairs, *, beta: pairs.h)


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


def test_estimate_reads_a_recipe_with_its_own_loss(recipe):
    from dpo_recipes.estimate import recipe_setup

    setup, about = recipe_setup(recipe.name)  # before: "unknown key 'slic_delta'"
    assert about["recipe"] == recipe.name and setup.lora_r == 16

"""`make new-recipe NAME=<new> FROM=<existing>`: the copy is a complete recipe under its own names, and passes its
smoke test at once."""

import json
import os
import shutil
import uuid

import pytest
import yaml

from tests.helpers import REPO, run

SOURCE = "qwen2.5-0.5b"  # the quickest recipe to smoke-test


@pytest.fixture
def new_recipe():
    name = f"test-copy-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(REPO / "recipes" / name, ignore_errors=True)  # never leave a test recipe behind


@pytest.mark.slow
def test_copy_is_renamed_and_passes_its_smoke_test(new_recipe, tmp_path):
    proc = run(["make", "--no-print-directory", "new-recipe", f"NAME={new_recipe}", f"FROM={SOURCE}", "OWN=1"])
    folder, source = REPO / "recipes" / new_recipe, REPO / "recipes" / SOURCE
    assert f"created recipes/{new_recipe} from recipes/{SOURCE}" in proc.stdout
    # OWN=1: train.py is the training path itself, readable top to bottom, building the trainer in plain sight.
    script = (folder / "train.py").read_text()
    assert "from ." not in script and "from dpo_recipes.commands.train" not in script
    assert "trainer = PreferenceTrainer(" in script and "trainer.train(" in script
    assert script.rstrip().endswith("main(Path(__file__).resolve().parent)")

    config, original = (yaml.safe_load((f / "config.yaml").read_text()) for f in (folder, source))
    assert config["output_dir"] == f"outputs/{new_recipe}"
    assert config["hub_model_id"] == original["hub_model_id"].replace(SOURCE, new_recipe)
    assert {k: v for k, v in config.items() if k not in ("output_dir", "hub_model_id")} == \
           {k: v for k, v in original.items() if k not in ("output_dir", "hub_model_id")}
    assert (folder / "README.md").read_text().splitlines()[0].startswith(f"# {new_recipe}")
    assert (folder / "accelerate.yaml").resolve() == (source / "accelerate.yaml").resolve()
    assert not os.path.isabs(os.readlink(folder / "accelerate.yaml"))
    assert sorted(p.name for p in (folder / "variants").iterdir()) == \
           sorted(p.name for p in (source / "variants").iterdir())
    assert (folder / "versions.txt").read_text() == (source / "versions.txt").read_text()

    out = tmp_path / "smoke"
    smoke = run(["make", "--no-print-directory", "smoke", f"RECIPE={new_recipe}", f"SMOKE_OUT={out}"], timeout=600)
    assert f"smoke {new_recipe}: OK" in smoke.stdout
    report = json.loads((out / "smoke_report.json").read_text())
    assert report["recipe"] == new_recipe and report["max_logprob_change"] > 1e-4


@pytest.mark.slow
def test_without_own_the_copy_keeps_the_shipped_train_py(new_recipe):
    run(["make", "--no-print-directory", "new-recipe", f"NAME={new_recipe}", f"FROM={SOURCE}"])
    copied, shipped = REPO / "recipes" / new_recipe / "train.py", REPO / "recipes" / SOURCE / "train.py"
    assert copied.read_text() == shipped.read_text()
    assert "sys.path" not in shipped.read_text()  # the package is installed; a recipe needs no path tricks


@pytest.mark.slow
def test_existing_name_is_refused_and_nothing_changes():
    before = {p: p.read_bytes() for p in (REPO / "recipes" / "llama3-qlora").rglob("*") if p.is_file()}
    proc = run(["make", "--no-print-directory", "new-recipe", "NAME=llama3-qlora", f"FROM={SOURCE}"], check=False)
    assert proc.returncode == 2
    assert "error: " in proc.stderr and "recipes/llama3-qlora: already exists" in proc.stderr
    assert {p: p.read_bytes() for p in (REPO / "recipes" / "llama3-qlora").rglob("*") if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["NAME=Bad Name", f"FROM={SOURCE}"], "NAME: 'Bad Name' is not a recipe name"),
    ([f"NAME=x-{uuid.uuid4().hex[:6]}", "FROM=nope"], "FROM: no recipe 'nope'; recipes:"),
])
def test_bad_names_are_one_line(args, message):
    proc = run(["make", "--no-print-directory", "new-recipe", *args], check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr

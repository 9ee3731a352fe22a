"""A new user's own data and config mistakes, through the documented commands (`make audit`, `make train
RECIPE=demo-cpu`, and the recipe's launcher, dpo_recipes.commands.launch, which `make train` runs): one line naming the file
and the fix, exit code 2, no traceback, before any model loads. The inputs are written here, into tmp_path."""

import json
import sys

import pytest

from tests.e2e.test_input_errors import assert_one_line
from tests.helpers import GOOD_PAIR, REPO, jsonl, run


def pairs(n, tag):
    return [{"prompt": f"{tag} question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def cases(tmp):
    latin = tmp / "latin.jsonl"
    latin.write_bytes(json.dumps(GOOD_PAIR).encode() + b"\n" + '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
                      .encode("latin-1"))
    folder = tmp / "folder"
    folder.mkdir()
    jsonl(folder / "train.jsonl", *pairs(48, "t"))
    jsonl(folder / "more_pairs_2025.jsonl", *pairs(48, "m"))
    mixed = tmp / "mixed"
    mixed.mkdir()
    jsonl(mixed / "train.jsonl", *pairs(4, "j"))
    (mixed / "train-sheet.csv").write_text("prompt,chosen,rejected\nq,a,b\n")
    sft = jsonl(tmp / "sft.jsonl", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    kto = jsonl(tmp / "kto.jsonl", {"prompt": "a", "completion": "b", "label": True})
    return {
        "latin-1": (latin, f"{latin}: byte 74 (line 2) is 0xe9, not UTF-8; the file is probably Latin-1 / Windows-1252: "
                           f"convert it (iconv -f cp1252 -t utf-8 {latin} > {tmp / 'latin-utf8.jsonl'})"),
        "unread file": (folder, f"{folder}: more_pairs_2025.jsonl would not be read: the name gives no split "
                                "(train.jsonl as split train); name each file after its split (train.jsonl, "
                                "train-more.jsonl, test.jsonl, ...) or list the files as sources of dataset_mixture"),
        "mixed types": (mixed, f"{mixed}: split train mixes file types: train-sheet.csv (CSV), train.jsonl (JSON); "
                               "convert them to one type, or list each file as its own source in dataset_mixture"),
        "sft": (sft, f"{sft}: this is SFT data (columns messages: one conversation or completion per row), not "
                     "preference pairs; DPO trains on pairs: a prompt with a chosen and a rejected completion, e.g. "
                     "generate two replies per prompt and rank them, or train it with TRL's SFTTrainer"),
        "kto": (kto, f"{kto}: this is KTO data (columns prompt, completion, label: one completion per row with a "
                     "desirable/undesirable label), not preference pairs; DPO trains on pairs: a prompt with a chosen "
                     "and a rejected completion: pair a desirable and an undesirable completion of the same prompt, "
                     "or train it with TRL's KTOTrainer"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("target", ["audit", "train"])
@pytest.mark.parametrize("case", ["latin-1", "unread file", "mixed types", "sft", "kto"])
def test_a_data_mistake_is_one_line_through_make(tmp_path, case, target):
    path, message = cases(tmp_path)[case]
    proc = run(["make", "--no-print-directory", target, "RECIPE=demo-cpu",
                f"ARGS=--dataset_name {path} --output_dir {tmp_path / 'o'}"], check=False, timeout=300)
    assert_one_line(proc, message)
    assert "Loading weights" not in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["latin-1", "sft"])
def test_a_data_mistake_is_one_line_through_the_recipe_launcher(tmp_path, case):
    path, message = cases(tmp_path)[case]
    proc = run([sys.executable, "-m", "dpo_recipes.commands.launch", "--config_file", "recipes/demo-cpu/accelerate.yaml",
                "recipes/demo-cpu/train.py", "--config", str(REPO / "recipes/demo-cpu/config.yaml"),
                "--dataset_name", str(path), "--output_dir", str(tmp_path / "o")], check=False, timeout=300)
    assert_one_line(proc, message, through_make=False)


@pytest.mark.slow
def test_liger_without_liger_stops_before_the_model_and_the_audit_still_runs(tmp_path):
    """use_liger_kernel where Liger cannot run (not installed, or no GPU): make train stops in the config check; the
    audit, which needs no training hardware, checks the data all the same."""
    args = f"ARGS=--use_liger_kernel true --output_dir {tmp_path / 'o'}"
    proc = run(["make", "--no-print-directory", "train", "RECIPE=demo-cpu", args], check=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: config: use_liger_kernel needs ")
    assert "Loading weights" not in proc.stdout + proc.stderr
    audit = run(["make", "--no-print-directory", "audit", "RECIPE=demo-cpu", args], check=False, timeout=300)
    assert audit.returncode == 0, audit.stderr[-3000:]
    assert json.loads((tmp_path / "o" / "data_audit.json").read_text())["rows_read"] > 0

"""The label-noise benchmark (bench/noise_bench.py): flips exactly the asked fraction, keeps the held-out split clean.
Its quick mode, every part run: tests/e2e/test_noise_bench_quick.py."""

import json
import math
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import noise_bench  # noqa: E402


def test_flips_exactly_the_fraction_by_seed_and_keeps_held_out_clean(tmp_path, monkeypatch):
    monkeypatch.setattr(noise_bench, "WORK", tmp_path)
    clean = [json.loads(x) for x in (REPO / "data/demo/train.jsonl").read_text().splitlines()[:200]]
    folder = noise_bench.write_noisy_split(0.3, seed=5, n_train=200)
    noisy = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines()]
    flipped = [i for i, (a, b) in enumerate(zip(clean, noisy)) if a != b]
    assert len(flipped) == 60
    for i in flipped:
        assert noisy[i]["chosen"] == clean[i]["rejected"] and noisy[i]["rejected"] == clean[i]["chosen"]
    again = noise_bench.write_noisy_split(0.3, seed=5, n_train=200)
    assert (again / "train.jsonl").read_text() == (folder / "train.jsonl").read_text()
    other = noise_bench.write_noisy_split(0.3, seed=6, n_train=200)
    assert (other / "train.jsonl").read_text() != (folder / "train.jsonl").read_text()
    assert (folder / "test.jsonl").read_text() == (REPO / "data/demo/test.jsonl").read_text()


def test_calibration_by_hand():
    beta = 0.5
    margins = [4.0, -2.0, 0.0]  # p = s(2), s(-1), s(0)
    p = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0)), 0.5]
    got = noise_bench.calibration(margins, beta)
    assert got["accuracy"] == pytest.approx(1 / 3)
    assert got["brier"] == pytest.approx(sum((1 - x) ** 2 for x in p) / 3)
    assert got["mean_margin"] == pytest.approx(beta * (4.0 - 2.0 + 0.0) / 3)
    # confidences s(2)=0.881 (correct, bin 0.85-0.90), s(1)=0.731 (wrong, bin 0.70-0.75), 0.5 (wrong, bin 0.50-0.55)
    assert got["ece"] == pytest.approx((abs(1 - p[0]) + abs(0 - (1 - p[1])) + abs(0 - 0.5)) / 3)


def test_variant_arguments():
    assert noise_bench.variant_args("dpo", 0.2) == ["--loss_type", "sigmoid"]
    assert noise_bench.variant_args("cdpo@true", 0.2) == ["--loss_type", "cdpo", "--label_smoothing", "0.2"]
    assert noise_bench.variant_args("rdpo@0.1", 0.3) == ["--loss_type", "rdpo", "--label_smoothing", "0.1"]


def test_only_identical_trainings_share_a_run():
    key = noise_bench.training_key
    assert key("cdpo@true", 0.0, 1, 64) == key("rdpo@true", 0.0, 1, 64) == key("dpo", 0.0, 1, 64)  # eps 0 is DPO
    assert key("cdpo@0.1", 0.1, 1, 64) == key("cdpo@true", 0.1, 1, 64)
    assert key("cdpo@0.1", 0.0, 1, 64) != key("dpo", 0.0, 1, 64)
    assert key("cdpo@true", 0.2, 1, 64) != key("rdpo@true", 0.2, 1, 64)
    assert key("dpo", 0.0, 1, 64) not in {key("dpo", 0.1, 1, 64), key("dpo", 0.0, 2, 64), key("dpo", 0.0, 1, 300)}
    assert key("madpo", 0.2, 0, 64) != key("dpo", 0.2, 0, 64)


def test_docs_noise_table_is_noise_json():
    """Every number of the label-noise table in docs/benchmarks.md, as printed, is the committed noise.json's value rounded to the
    digits shown; every variant and every column is there."""
    summary = json.loads((REPO / "bench/results/noise.json").read_text())["summary"]
    text = (REPO / "docs/benchmarks.md").read_text()
    section = text[text.index("## Label-noise robustness"):]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "variant" and lines[1].startswith("|---")
    metrics = {"accuracy": "accuracy", "Brier": "brier", "margin": "mean_margin", "ECE": "ece"}
    columns = []
    for name in header[1:]:
        metric, rate = name.split(" eps=")
        columns.append((metrics[metric], rate))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    rows = rows[: next((i for i, r in enumerate(rows) if r[0] not in summary), len(rows))]
    assert [r[0] for r in rows] == list(summary)
    checked = 0
    for variant, *cells in rows:
        assert len(cells) == len(columns), variant
        for (metric, rate), cell in zip(columns, cells):
            stats = summary[variant][rate][metric]
            for shown, value in zip(cell.split("±"), (stats["mean"], stats["std"])):
                shown = shown.strip()
                digits = len(shown.split(".")[1]) if "." in shown else 0
                assert shown == f"{value:.{digits}f}", (variant, metric, rate, shown, value)
                checked += 1
    assert checked >= len(summary) * len(columns)

"""The label-noise statements of docs/benchmarks.md come from the committed results: the paired per-seed comparisons
(bench/noise_paired.py) recomputed from bench/results/noise.json, and each figure the page quotes among them; the
scaling statements of docs/performance.md from bench/results/training.json."""

import importlib.util
import json

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("noise_paired", REPO / "bench" / "noise_paired.py")
noise_paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(noise_paired)

NOISE = json.loads((REPO / "bench/results/noise.json").read_text())
BENCHMARKS = " ".join((REPO / "docs/benchmarks.md").read_text().split())
PERFORMANCE = " ".join((REPO / "docs/performance.md").read_text().split())


def ci(variant, rate, metric):
    c = noise_paired.paired(NOISE["runs"], variant, rate, metric)
    return c, f"{c['mean']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"


def test_committed_paired_table_is_recomputed_from_noise_json():
    committed = json.loads((REPO / "bench/results/noise_paired.json").read_text())
    for variant, per_rate in committed.items():
        for rate, metrics in per_rate.items():
            for metric, cell in metrics.items():
                assert cell == noise_paired.paired(NOISE["runs"], variant, float(rate), metric)


def test_benchmarks_page_accuracy_claims_at_40_percent():
    cdpo, text = ci("cdpo@true", 0.4, "accuracy")
    assert cdpo["excludes_zero"] and cdpo["lower"] == 3 and text in BENCHMARKS
    for variant in ("rdpo@true", "madpo", "ipo", "cdpo@0.1", "rdpo@0.1"):  # "no difference that 3 seeds resolve"
        cell, text = ci(variant, 0.4, "accuracy")
        assert not cell["excludes_zero"], variant
    for variant in ("rdpo@true", "madpo", "ipo"):
        assert ci(variant, 0.4, "accuracy")[1] in BENCHMARKS


def test_benchmarks_page_calibration_claims():
    for variant in ("rdpo@true", "madpo", "ipo"):
        for rate in (0.1, 0.2, 0.3):
            cell, _ = ci(variant, rate, "brier")
            assert cell["excludes_zero"] and cell["lower"] == 3, (variant, rate)
        assert f"{ci(variant, 0.3, 'brier')[0]['mean']:.3f}" in BENCHMARKS
        assert not ci(variant, 0.4, "brier")[0]["excludes_zero"]
    at_40 = {v: NOISE["summary"][v]["0.4"] for v in NOISE["meta"]["variants"]}
    assert min(at_40, key=lambda v: at_40[v]["ece"]["mean"]) == "cdpo@true"
    assert max(at_40, key=lambda v: at_40[v]["brier"]["mean"]) == "cdpo@true"
    for rates in NOISE["summary"].values():  # under-confident everywhere
        for m in rates.values():
            assert m["mean_p_chosen"]["mean"] < m["accuracy"]["mean"]


def test_performance_page_scaling_claims_come_from_training_json():
    scaling = json.loads((REPO / "bench/results/training.json").read_text())["scaling"]
    two, eight = scaling["len512_bs2"], scaling["len512_bs8"]
    total = two["tokens_per_second"] / eight["tokens_per_second"]
    padding = two["real_token_fraction"] / eight["real_token_fraction"]
    assert f"by {total:.2f}x" in PERFORMANCE and f"Padding explains {padding:.2f}x" in PERFORMANCE
    assert f"the other {total / padding:.2f}x" in PERFORMANCE
    assert f"from {two['real_token_fraction']:.3f} to {eight['real_token_fraction']:.3f}" in PERFORMANCE

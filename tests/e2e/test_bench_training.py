"""The layout comparison of bench/bench_training.py (padded, padding-free, shared prompts on the same batches), run
on one timed batch of HH pairs: what each layout hands the model, and the ratios it reports."""

import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_training  # noqa: E402


@pytest.mark.slow
def test_layouts_run_the_same_pairs_with_fewer_tokens():
    config = {"layouts": True, "data": "hh", "max_length": 256, "batch_size": 2, "batches": 1, "tries": 1}
    result = bench_training.measure_layouts(config)
    padded, free, shared = result["padded"], result["padding_free"], result["prefix_sharing"]
    # Padding-free runs the padded batch's real tokens and nothing else but the rows' tail padding
    assert free["model_tokens"] == padded["model_tokens"] > 0
    assert free["model_tokens"] <= free["computed_positions"] < padded["computed_positions"]
    # HH pairs share multi-turn prompts: computed once, the model runs fewer real tokens
    assert 0 < shared["model_tokens"] < free["model_tokens"]
    assert result["token_count_limit"] == pytest.approx(free["model_tokens"] / shared["model_tokens"])
    for name in ("padding_free_over_padded", "prefix_sharing_over_padding_free", "prefix_sharing_over_padded"):
        assert result[name]["median"] > 0
        assert result[name]["range"][0] <= result[name]["median"] <= result[name]["range"][1]
    assert all(layout["seconds_per_batch"] > 0 for layout in (padded, free, shared))

"""The GPU benchmark's whole path, run on CPU with each recipe's tiny model (there is no GPU here): it trains padded,
padding-free and with shared prompts through the recipe's own config, counts a 4-bit model's parameters at full size, and writes results."""

import json
import sys

import pytest
from transformers import AutoModelForCausalLM

from tests.helpers import REPO, run

pytestmark = pytest.mark.slow


def test_cpu_check_runs_both_recipes_padded_and_padding_free(tmp_path):
    out = tmp_path / "gpu.json"
    run([sys.executable, "bench/bench_gpu.py", "--cpu-check", "--steps", "1", "--warmup", "1", "--out", str(out)],
        env={"OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"})
    results = json.loads(out.read_text())
    layouts = ["padded", "padding_free", "prefix_sharing"]  # FlexAttention's layout needs a GPU
    assert [(r["recipe"], r["layout"]) for r in results] == [(recipe, layout) for recipe in ("llama3-qlora",
                                                                                             "qwen2.5-0.5b")
                                                             for layout in layouts]
    assert [r["padding_free"] for r in results] == [False, True, True] * 2
    for r in results:
        assert r["tokens_per_second"] > 0 and r["seconds_per_step"] > 0 and r["peak_memory_gib"] > 0
        assert r["mfu"] is None and r["device"].startswith("cpu")  # no FLOPs peak to divide by on a CPU
        assert r["max_length"] == 1024  # the recipes' own settings
    assert results[0]["load_in_4bit"] and not results[3]["load_in_4bit"]
    # bitsandbytes stores two 4-bit values per byte; the count must still be the unquantised model's
    full = AutoModelForCausalLM.from_pretrained(REPO / "bench/tmp/gpu/tiny-llama")
    assert results[0]["parameters"] == sum(p.numel() for p in full.parameters())

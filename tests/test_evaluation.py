"""report/evaluation.py: the report's pair log-probs in the run's layout equal the padded path's."""

import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.utils import add_fused_lm_head

from tests.helpers import REPO
from dpo_recipes.report.evaluation import ReportSettings, pair_logps
from dpo_recipes.data.tokenization import tokenize_pair


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pair_logps_in_packed_and_shared_layouts_equal_padded(tiny_llama, attention):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention).eval()
    add_fused_lm_head(model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"))["train"].select(range(7))
    tokenized = [tokenize_pair(tokenizer, row) for row in rows]
    result = {}
    for layout, flags in {"padded": {}, "packed": {"padding_free": True},
                          "shared": {"padding_free": True, "prefix_sharing": True}}.items():
        settings = ReportSettings(max_length=48, batch_size=3, **flags)  # 48 truncates some pairs; 3 leaves a rest
        result[layout] = pair_logps(model, tokenized, settings, torch.device("cpu"))
    for layout in ("packed", "shared"):
        for side in (0, 1):
            assert result[layout][side].shape == (7,)
            torch.testing.assert_close(result[layout][side], result["padded"][side], rtol=1e-6, atol=1e-4)
    assert not torch.equal(result["padded"][0], result["padded"][1])  # chosen and rejected are told apart


def test_probes_run_a_bf16_model_in_fp32_on_the_cpu(tiny_llama):
    """The report's probes cast a bf16 policy (and so its reference, the same weights with the adapter off) to fp32
    before generating, and say so: a greedy reply must not depend on the batch it was generated in."""
    from peft import LoraConfig, get_peft_model

    from dpo_recipes.report.evaluation import RunModels, run_probes

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert policy.get_base_model().model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    models = RunModels(policy=policy, reference=None, tokenizer=AutoTokenizer.from_pretrained(tiny_llama), kind="lora")
    settings = ReportSettings(probes=str(REPO / "data/demo-probes.json"), max_new_tokens=3, generation_batch_size=32)
    probes = run_probes(models, settings)
    assert probes["dtype"] == "float32"
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert len(probes["style_replies"]) > 0 and len(probes["fact_replies"]) > 0

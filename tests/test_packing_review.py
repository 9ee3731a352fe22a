"""Packed batches and the model's inputs: an MoE router's load-balancing loss over real tokens only, and extra batch
columns kept away from a model whose forward takes only its own arguments."""

import pytest
import torch
from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

from dpo_recipes.trainer import MARGIN_COLUMN
from tests.test_packing import make_trainer


@pytest.fixture(scope="module")
def tiny_mixtral(tiny_llama, tmp_path_factory):
    """A tiny MoE (Mixtral) with the tiny Llama's tokenizer; output_router_logits turns on TRL's aux loss."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           output_router_logits=True, router_aux_loss_coef=0.01, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-mixtral")
    MixtralForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_router_aux_loss_leaves_row_padding_out(tiny_mixtral, tmp_path):
    rows = list(range(12))
    aux = {}
    for layout in ("padded", "packed", "shared"):
        trainer = make_trainer(tiny_mixtral, "sigmoid", layout, tmp_path)
        assert trainer.aux_loss_enabled
        batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
        batch.pop("row_id", None)
        if layout == "packed":
            assert (batch["sequence_ids"] < 0).any()  # the rows end in padding
        with torch.no_grad():
            aux[layout] = trainer.pair_logps(trainer.model, batch)[2].aux_loss
        loss = trainer.compute_loss(trainer.model, batch)
        assert torch.isfinite(loss)
    # The padded path counts exactly the real tokens (its 2D attention mask); packed rows hold the same tokens.
    torch.testing.assert_close(aux["packed"], aux["padded"], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(aux["shared"])  # a shared prompt's tokens are routed once, so this is its own value


class StrictForward(torch.nn.Module):
    """A model whose forward takes only the arguments it names (no **kwargs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, fused_lm_head=False):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=use_cache,
                          fused_lm_head=fused_lm_head)


def test_padded_reference_pass_hands_the_model_only_its_inputs(tiny_llama, tmp_path):
    """TRL's precompute hands the collated batch (with row_id and reward_margin) to compute_ref_log_probs."""
    trainer = make_trainer(tiny_llama, "madpo", "padded", tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert "row_id" in batch and MARGIN_COLUMN in batch
    chosen, rejected = trainer.compute_ref_log_probs(StrictForward(trainer.model), batch)
    plain = trainer.compute_ref_log_probs(trainer.model, {k: batch[k] for k in ("input_ids", "attention_mask",
                                                                                  "completion_mask")})
    torch.testing.assert_close(chosen, plain[0])
    torch.testing.assert_close(rejected, plain[1])


@pytest.mark.parametrize("change, message", [
    ({"padding_free": False}, "prefix_sharing needs padding_free=True"),
    ({"loss_type": ["hinge"]}, "cannot be combined with padding_free, prefix_sharing"),
    ({"attention": "flash_attention_2"}, "prefix_sharing needs attn_implementation in"),
])
def test_trainer_refuses_what_shared_prompts_cannot_do(tiny_llama, tmp_path, change, message):
    """The Python API refuses what the config refuses (a script that builds PreferenceTrainer skips config.py)."""
    from datasets import load_dataset

    from tests.helpers import REPO
    from dpo_recipes.config import PreferenceConfig
    from dpo_recipes.trainer import PreferenceTrainer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config._attn_implementation = change.pop("attention", "sdpa")  # flash-attention cannot load on CPU
    settings = {"padding_free": True, "prefix_sharing": True, **change}
    args = PreferenceConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **settings)
    data = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"))["train"].select(range(4))
    with pytest.raises(ValueError, match=message):
        PreferenceTrainer(model=model, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(tiny_llama))

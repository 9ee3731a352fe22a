"""Padding-free DPO: packed rows give the padded path's log-probs, losses and gradients, for every loss variant."""

import math

import pytest
import torch
from datasets import load_dataset

from conftest import REPO, TOKEN_METRICS
from dpo_recipes.config import parse_config
from dpo_recipes.modeling import load_model, load_tokenizer
from dpo_recipes.packing import SEQUENCE_IDS, first_fit_decreasing, pack_sequences
from dpo_recipes.trainer import MARGIN_COLUMN, PreferenceTrainer


def test_first_fit_decreasing_bounds_rows_and_places_every_sequence_once():
    lengths = [90, 10, 50, 50, 30, 70, 5, 100]
    rows = first_fit_decreasing(lengths, capacity=100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == math.ceil(sum(lengths) / 100)  # this instance packs perfectly


def test_pack_sequences_positions_restart_and_ids_map_back():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    masks = [[0, 1, 1], [0, 1], [0, 0, 1, 1]]
    packed = pack_sequences(ids, masks, row_length=6, pad_token_id=0)
    for i, seq in enumerate(ids):
        where = packed[SEQUENCE_IDS] == i
        assert packed["input_ids"][where].tolist() == seq
        assert packed["position_ids"][where].tolist() == list(range(len(seq)))
        assert packed["completion_mask"][where].tolist() == masks[i]
    assert packed["input_ids"].shape[1] <= 6
    assert "attention_mask" not in packed


def make_trainer(tiny_llama, loss_type, padding_free, tmp_path, extra=()):
    args = ["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--model_name_or_path", str(tiny_llama),
            "--loss_type", loss_type, "--padding_free", str(padding_free).lower(), "--eval_strategy", "no",
            "--max_length", "96", "--output_dir", str(tmp_path / "out"), *extra]
    script, train, model_args = parse_config(args)
    tokenizer = load_tokenizer(str(tiny_llama), model_args, False, None)
    model, peft = load_model(str(tiny_llama), model_args, False)
    data = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"))["train"].select(range(24))
    data = data.add_column(MARGIN_COLUMN, [(-1.0) ** i * 0.3 * i for i in range(24)])
    trainer = PreferenceTrainer(model=model, args=train, train_dataset=data, processing_class=tokenizer,
                                peft_config=peft)
    gen = torch.Generator().manual_seed(0)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # move the policy away from the reference
            param.data = torch.randn(param.shape, generator=gen) * 0.05
    return trainer


def loss_and_grads(trainer, rows):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    batch.pop("row_id", None)
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    token_metrics = {k: trainer._metrics["train"][k][-1] for k in TOKEN_METRICS}
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    (chosen, rejected), _, _ = trainer.pair_logps(trainer.model, batch)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    logratios = torch.cat([chosen - ref_chosen, rejected - ref_rejected]).detach()
    return loss.detach(), grads, torch.cat([chosen, rejected]).detach(), logratios, batch, token_metrics


@pytest.mark.parametrize("loss_type, extra", [
    ("sigmoid", ()), ("ipo", ()), ("ipo", ("--ipo_normalize", "false")), ("cdpo", ("--label_smoothing", "0.2")),
    ("rdpo", ("--label_smoothing", "0.2")), ("madpo", ()),
])
def test_packed_equals_padded(tiny_llama, tmp_path, loss_type, extra):
    rows = list(range(16))
    padded = loss_and_grads(make_trainer(tiny_llama, loss_type, False, tmp_path, extra), rows)
    packed = loss_and_grads(make_trainer(tiny_llama, loss_type, True, tmp_path, extra), rows)
    assert SEQUENCE_IDS in packed[4] and "attention_mask" not in packed[4]
    assert packed[4]["input_ids"].numel() < padded[4]["input_ids"].numel()  # padding really removed
    # The loss agrees within 1e-5 (relative where the loss is large: the paper's summed IPO is about 30 here).
    assert abs(packed[0].item() - padded[0].item()) <= 1e-5 * max(1.0, abs(padded[0].item()))
    # Summed log-probs (about -150 nats over about 40 tokens) agree to fp32 rounding: per token within 1e-5, the
    # sums within 1e-6 relative. The two paths run attention and the LM head on differently shaped tensors, so their
    # rounding differs by about 1e-6 per token; log-ratios (policy minus reference) carry both errors: 1e-4.
    lengths = packed[4]["completion_mask"].sum().item() / len(packed[2])
    torch.testing.assert_close(packed[2] / lengths, padded[2] / lengths, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[2], padded[2], rtol=1e-6, atol=0)
    torch.testing.assert_close(packed[3], padded[3], rtol=0, atol=1e-4)
    # Gradients: the difference is fp32 rounding, far below the gradient itself (relative to its norm).
    assert packed[1].keys() == padded[1].keys()
    flat = lambda grads: torch.cat([g.flatten() for g in grads.values()])  # noqa: E731
    difference = (flat(packed[1]) - flat(padded[1])).norm() / flat(padded[1]).norm()
    assert difference < 1e-4, difference
    # TRL's per-token metrics count the same tokens in both layouts
    assert packed[5] == pytest.approx(padded[5], rel=1e-5)


def test_attention_does_not_cross_sequences(tiny_llama, tmp_path):
    """A sequence's log-prob does not depend on which other sequences share its row."""
    trainer = make_trainer(tiny_llama, "sigmoid", True, tmp_path)
    trainer.model.eval()
    with torch.no_grad():
        together = trainer.pair_logps(trainer.model, trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))
        for i in range(8):
            alone = trainer.pair_logps(trainer.model, trainer.data_collator([trainer.train_dataset[i]]))
            torch.testing.assert_close(alone[0][0][0], together[0][0][i], rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(alone[0][1][0], together[0][1][i], rtol=1e-6, atol=1e-5)

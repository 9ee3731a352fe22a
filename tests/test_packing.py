"""Packed batches (dpo_recipes/train/packing.py): padding-free rows and shared prompts give the padded path's log-probs,
losses and gradients, for every loss variant. And the model's inputs: an MoE router's load-balancing loss over real
tokens only, and extra batch columns kept away from a model whose forward takes only its own arguments."""

import math

import pytest
import torch
from datasets import load_dataset
from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

from tests.helpers import REPO, TOKEN_METRICS
from dpo_recipes.train.config import parse_config
from dpo_recipes.models.loading import load_model, load_tokenizer
from dpo_recipes.train.packing import (BRANCH_IDS, SEQUENCE_IDS, balanced_rows, pack_pairs, pack_sequences,
                                 shared_prompt_mask)
from dpo_recipes.train.trainer import MARGIN_COLUMN, PreferenceTrainer


def test_balanced_rows_bounds_rows_and_places_every_sequence_once():
    lengths = [90, 10, 50, 50, 30, 70, 5, 100]
    rows = balanced_rows(lengths, capacity=100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == math.ceil(sum(lengths) / 100)  # this instance fits the fewest rows possible


def test_balanced_rows_keep_the_widest_row_short():
    # First fit would fill one row with 60 + 40 and leave 30 + 30 + 20 for the next: width 100. Balanced: 90.
    lengths = [60, 40, 30, 30, 20]
    rows = balanced_rows(lengths, capacity=100)
    loads = sorted(sum(lengths[i] for i in row) for row in rows)
    assert len(rows) == 2 and loads == [90, 90]


def test_balanced_rows_take_one_row_each_when_nothing_fits_together():
    assert sorted(map(tuple, balanced_rows([80, 70, 60], capacity=100))) == [(0,), (1,), (2,)]


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


LAYOUTS = {"padded": ("--padding_free", "false"), "packed": ("--padding_free", "true"),
           "shared": ("--padding_free", "true", "--prefix_sharing", "true")}


def make_trainer(tiny_llama, loss_type, layout, tmp_path, extra=()):
    """layout: padded, packed (padding_free) or shared (prefix_sharing + padding_free); True/False: packed/padded."""
    layout = {True: "packed", False: "padded"}.get(layout, layout)
    args = ["--config", str(REPO / "recipes/demo-cpu/config.yaml"), "--model_name_or_path", str(tiny_llama),
            "--loss_type", loss_type, *LAYOUTS[layout], "--eval_strategy", "no",
            "--max_length", "96", "--output_dir", str(tmp_path / "out"), *extra]
    script, train, model_args = parse_config(args)
    tokenizer = load_tokenizer(str(tiny_llama), model_args, False, None)
    model, peft = load_model(str(tiny_llama), model_args, False)
    data = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"))["train"].select(range(24))
    # Rejected replies cut to 2-3 words whatever the bundled replies' lengths: uneven lengths (padding to remove), and
    # short sequences (two fit one packed row of 96).
    data = data.map(lambda row, i: {"rejected": [{"role": "assistant", "content": " ".join(
        row["rejected"][0]["content"].split()[:2 + i % 2])}]}, with_indices=True)
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


def expected_ipo(logratios, lengths, beta, normalize):
    """IPO by hand from the log-ratios (chosen then rejected) and completion lengths."""
    chosen, rejected = logratios.chunk(2)
    if normalize:
        chosen, rejected = chosen / lengths[0].clamp(min=1), rejected / lengths[1].clamp(min=1)
    return ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("loss_type, extra", [
    ("sigmoid", ()), ("ipo", ()), ("ipo", ("--ipo_normalize", "false")), ("cdpo", ("--label_smoothing", "0.2")),
    ("rdpo", ("--label_smoothing", "0.2")), ("madpo", ()),
])
def test_packed_equals_padded(tiny_llama, tmp_path, loss_type, extra, layout):
    rows = list(range(16))
    padded = loss_and_grads(make_trainer(tiny_llama, loss_type, "padded", tmp_path, extra), rows)
    trainer = make_trainer(tiny_llama, loss_type, layout, tmp_path, extra)
    packed = loss_and_grads(trainer, rows)
    assert SEQUENCE_IDS in packed[4] and "attention_mask" not in packed[4]
    assert (BRANCH_IDS in packed[4]) is (layout == "shared")
    assert packed[4]["input_ids"].numel() < padded[4]["input_ids"].numel()  # padding really removed
    if layout == "shared":  # and each prompt computed once: fewer real tokens than the sequences hold
        assert (packed[4][SEQUENCE_IDS] >= 0).sum() < padded[4]["attention_mask"].sum() * 0.9
    logratios = padded[3]
    assert (logratios.chunk(2)[0] - logratios.chunk(2)[1]).abs().min() > 1e-3  # h != 0: the knobs matter
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
    # TRL's per-token metrics count the same tokens in both layouts, and num_tokens the padded path's tokens
    assert packed[5] == pytest.approx(padded[5], rel=1e-5)
    assert trainer._total_train_tokens == padded[4]["attention_mask"].sum().item()
    if loss_type == "ipo":  # the knob reaches the loss: the other IPO form gives another loss
        normalize = "false" not in extra
        completion = padded[4]["completion_mask"].sum(dim=1).chunk(2)
        assert packed[0].item() == pytest.approx(expected_ipo(packed[3], completion, 0.1, normalize).item(), rel=1e-5)
        other = expected_ipo(packed[3], completion, 0.1, not normalize).item()
        # ... and differs from the other form by far more than the 1e-5 agreement above (both are near
        # (1 / (2 beta))^2 = 25 at a fresh adapter; on the demo pairs they differ by about 6%)
        assert abs(other - packed[0].item()) > 0.01 * abs(packed[0].item())


def single_sequence_logps(model, ids: list[int], completion: list[int]) -> float:
    """One sequence alone, no packing, no mask, no fused head: log-softmax of the logits, summed over the completion."""
    input_ids = torch.tensor([ids])
    logits = model(input_ids=input_ids, use_cache=False).logits[0, :-1].float()
    per_token = logits.log_softmax(-1).gather(1, input_ids[0, 1:, None])[:, 0]
    return (per_token * torch.tensor(completion[1:])).sum().item()


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_row_equals_single_sequence_forward(tiny_llama, tmp_path, layout, attention):
    """Every sequence of a packed batch scores as it does alone through the model's plain forward. (flash-attention
    reads packing from position_ids the same way, but cannot run on CPU: it is not tested here.)"""
    trainer = make_trainer(tiny_llama, "sigmoid", layout, tmp_path, ("--attn_implementation", attention))
    assert trainer.model.config._attn_implementation == attention
    examples = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.data_collator(examples)
    assert batch["input_ids"].size(0) < 16  # several of the 16 sequences share a row
    trainer.model.eval()
    with torch.no_grad():
        (chosen, rejected), _, _ = trainer.pair_logps(trainer.model, batch)
        for i, example in enumerate(examples):
            for side, packed in (("chosen", chosen), ("rejected", rejected)):
                ids = (example["prompt_ids"] + example[f"{side}_ids"])[:96]
                completion = ([0] * len(example["prompt_ids"]) + [1] * len(example[f"{side}_ids"]))[:96]
                alone = single_sequence_logps(trainer.model, ids, completion)
                assert packed[i].item() == pytest.approx(alone, rel=1e-5, abs=1e-4), (i, side)


def test_shared_layout_positions_and_mask():
    """[prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected]: rejected positions continue from the prompt, and
    the branches never see each other."""
    packed = pack_pairs([[1, 2, 3, 4, 5]], [[1, 2, 3, 6]], [[0, 0, 0, 1, 1]], [[0, 0, 0, 1]], 16, 0)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 6]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert packed[BRANCH_IDS].tolist() == [[0, 0, 1, 1, 1, 2, 2]]
    assert packed[SEQUENCE_IDS].tolist() == [[0, 0, 0, 0, 0, 1, 1]]
    mask = shared_prompt_mask(packed[SEQUENCE_IDS], packed[BRANCH_IDS])[0, 0]
    assert mask[6].tolist() == [True, True, False, False, False, True, True]  # rejected: prompt[:-1], its branch
    assert mask[4].tolist() == [True] * 5 + [False] * 2  # chosen: the whole prompt and itself
    # keep_end truncation can keep different prompt tokens for the two replies: only the common start is shared
    packed = pack_pairs([[2, 3, 4, 5]], [[1, 2, 3, 6]], [[0, 0, 1, 1]], [[0, 0, 0, 1]], 16, 0)
    assert packed[BRANCH_IDS].tolist() == [[1, 1, 1, 1, 2, 2, 2, 2]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]


def test_shared_layout_rows_hold_two_max_length_sequences():
    """A pair's row holds up to 2 x row_length tokens (what two padding-free rows hold): three pairs of 6 tokens
    ([1 2 | 3 4 | 3 6]) at row_length 6 take a row of 12 and one of 6."""
    chosen, rejected = [[1, 2, 3, 4]] * 3, [[1, 2, 3, 6]] * 3
    masks = [[0, 0, 0, 1]] * 3
    packed = pack_pairs(chosen, rejected, masks, masks, 6, 0)
    assert packed["input_ids"].shape == (2, 12)
    assert sorted((packed[SEQUENCE_IDS] >= 0).sum(dim=1).tolist()) == [6, 12]


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_shared_layout_keeps_the_padded_paths_tokens(tiny_llama, tmp_path, mode):
    """Truncation: each sequence of the shared layout, read back, is the padded batch's sequence token for token."""
    padded = make_trainer(tiny_llama, "sigmoid", "padded", tmp_path, ("--truncation_mode", mode, "--max_length", "40"))
    shared = make_trainer(tiny_llama, "sigmoid", "shared", tmp_path, ("--truncation_mode", mode, "--max_length", "40"))
    examples = [padded.train_dataset[i] for i in range(16)]
    assert max(len(e["prompt_ids"]) + len(e["chosen_ids"]) for e in examples) > 40  # truncation happens
    want = padded.data_collator(examples)
    got = shared.data_collator(examples)
    mask = shared_prompt_mask(got[SEQUENCE_IDS], got[BRANCH_IDS])
    for s in range(32):  # a sequence is what its last token sees
        keep = want["attention_mask"][s].bool()
        r, last = (got[SEQUENCE_IDS] == s).nonzero()[-1].tolist()
        visible = mask[r, 0, last]
        assert got["input_ids"][r][visible].tolist() == want["input_ids"][s][keep].tolist(), s
        assert got["completion_mask"][r][visible].tolist() == want["completion_mask"][s][keep].tolist(), s
        assert got["position_ids"][r][visible].tolist() == list(range(int(keep.sum()))), s


def test_attention_does_not_cross_sequences(tiny_llama, tmp_path):
    """A sequence's log-prob does not depend on which other sequences share its row."""
    for layout in ("packed", "shared"):
        trainer = make_trainer(tiny_llama, "sigmoid", layout, tmp_path)
        trainer.model.eval()
        with torch.no_grad():
            together = trainer.pair_logps(trainer.model,
                                          trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))
            for i in range(8):
                alone = trainer.pair_logps(trainer.model, trainer.data_collator([trainer.train_dataset[i]]))
                torch.testing.assert_close(alone[0][0][0], together[0][0][i], rtol=1e-6, atol=1e-5)
                torch.testing.assert_close(alone[0][1][0], together[0][1][i], rtol=1e-6, atol=1e-5)


# --- the model's inputs in packed batches ---------------------------------------------------------------------------

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
    ({"padding_free": False}, "prefix_sharing needs padding_free: true"),
    ({"loss_type": ["hinge"]}, "cannot be combined with padding_free, prefix_sharing"),
    ({"attention": "flash_attention_2"}, "prefix_sharing needs attn_implementation in"),
])
def test_trainer_refuses_what_shared_prompts_cannot_do(tiny_llama, tmp_path, change, message):
    """The Python API refuses what the config refuses (a script that builds PreferenceTrainer skips config.py): the
    arguments when they are made, the model's attention when the trainer gets it."""
    from datasets import load_dataset

    from tests.helpers import REPO
    from dpo_recipes.train.config import PreferenceConfig
    from dpo_recipes.train.trainer import PreferenceTrainer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config._attn_implementation = change.pop("attention", "sdpa")  # flash-attention cannot load on CPU
    settings = {"padding_free": True, "prefix_sharing": True, **change}
    data = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"))["train"].select(range(4))
    with pytest.raises(ValueError, match=message):
        args = PreferenceConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **settings)
        PreferenceTrainer(model=model, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(tiny_llama))

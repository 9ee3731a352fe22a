"""The loss registry through the real trainer: a tiny Llama with a LoRA adapter on bundled conversational data.

(a) Our sigmoid / ipo / rdpo give bit-for-bit TRL's loss, gradients and metrics on the same batch and model. By default
    TRL computes these (test_loss_paths.py); ours run when a project-only feature needs them (padding-free, a cdpo or
    madpo term in the same loss), so the comparison forces our path.
(b) With a fresh adapter the policy is the reference (h = 0), so the first logged loss of a real training step is known
    in closed form for every variant. (c) The logged metrics keep TRL's names. (d) TRL's own loss types still work.
"""

import math

import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOTrainer

from tests.helpers import REPO, TOKEN_METRICS
from dpo_recipes.config import PreferenceConfig
from dpo_recipes.errors import UserError
from dpo_recipes.losses import madpo_weights
from dpo_recipes.trainer import MARGIN_COLUMN, PreferenceTrainer

TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected")
MARGINS = [-8.0, -2.0, -0.5, 0.0, 0.5, 1.0, 3.0, 12.0]  # one per row: below -tau, inside the band, past tau
BETA = 0.1


@pytest.fixture(scope="module")
def pairs():
    rows = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"), split="train")
    return rows.select(range(len(MARGINS)))


def make_trainer(model_dir, out, dataset, loss_type, use_peft=True, **overrides):
    args = PreferenceConfig(
        output_dir=str(out),
        loss_type=loss_type,
        beta=overrides.pop("beta", BETA),
        max_length=128,
        per_device_train_batch_size=len(dataset),  # one batch is the whole data set: the first loss is its mean
        per_device_eval_batch_size=len(dataset),
        max_steps=1,
        logging_steps=1,
        learning_rate=1e-3,
        activation_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        **overrides,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"],
                             task_type="CAUSAL_LM") if use_peft else None
    return PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft_config,
    )


def loss_grads_metrics(trainer, compute_loss, inputs):
    """Loss, gradients of every trainable parameter and the logged metrics of one compute_loss call."""
    trainer.model.train()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = compute_loss(trainer.model, dict(inputs))
    grads = torch.autograd.grad(loss, params)
    metrics = {k: trainer._metrics["train"][k][-1] for k in TRL_METRICS + TOKEN_METRICS}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize(
    "ours, trl_name, overrides",
    [
        ("sigmoid", "sigmoid", {}),
        ("ipo", "ipo", {}),
        ("rdpo", "robust", {"label_smoothing": 0.2}),
        ("robust", "robust", {"label_smoothing": 0.2}),
        ("sigmoid", "sigmoid", {"precompute_ref_log_probs": True}),
        ("sigmoid", "sigmoid", {"use_peft": False}),  # full fine-tuning: TRL's separate reference model
    ],
    ids=["sigmoid", "ipo", "rdpo", "robust", "sigmoid-precomputed-ref", "sigmoid-full-ft"],
)
def test_same_loss_gradients_and_metrics_as_trl(tiny_llama, tmp_path, pairs, ours, trl_name, overrides):
    use_peft = overrides.pop("use_peft", True)
    trainer = make_trainer(tiny_llama, tmp_path, pairs, [ours], use_peft=use_peft, **overrides)
    assert not trainer.use_registry  # TRL's own loss by default; compare the project's path with it
    trainer.use_registry = True
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference so h != 0
        for name, param in trainer.model.named_parameters():
            if param.requires_grad and (not use_peft or "lora_B" in name):
                param.add_(torch.randn_like(param) * (0.05 if use_peft else 0.02))
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

    our_loss, our_grads, our_metrics = loss_grads_metrics(trainer, trainer.compute_loss, inputs)
    trainer.loss_types = [trl_name]  # TRL's own implementation, same trainer, model and batch
    trl_loss, trl_grads, trl_metrics = loss_grads_metrics(
        trainer, lambda model, batch: DPOTrainer.compute_loss(trainer, model, batch), inputs
    )

    assert abs(our_metrics["rewards/margins"]) > 1e-3  # the policy really differs from the reference
    assert torch.equal(our_loss, trl_loss), (our_loss.item(), trl_loss.item())
    assert len(our_grads) == len(trl_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(our_grads, trl_grads))
    assert any(g.abs().max() > 0 for g in our_grads)
    assert {k: our_metrics[k] for k in TRL_METRICS} == {k: trl_metrics[k] for k in TRL_METRICS}
    # The token metrics are the same sums; the last division may round differently (python vs torch float32).
    assert {k: our_metrics[k] for k in TOKEN_METRICS} == pytest.approx({k: trl_metrics[k] for k in TOKEN_METRICS},
                                                                          rel=1e-6)
    assert our_metrics["entropy"] > 0


def test_token_metrics_by_hand_padded_and_packed(tiny_llama, tmp_path, pairs):
    """Two sequences (a chosen, a rejected) scored at known positions, once padded and once packed into one row."""
    from types import SimpleNamespace

    from dpo_recipes.packing import SEQUENCE_IDS
    from dpo_recipes.trainer import scored_tokens

    trainer = make_trainer(tiny_llama, tmp_path, pairs, ["sigmoid"])
    t = torch.tensor
    padded = {"completion_mask": t([[0, 1, 1, 1], [0, 0, 1, 1]])}  # scores: chosen 3 tokens, rejected 2
    per_token = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # position 0 of the rejected row scores a prompt token
    padded_out = SimpleNamespace(entropy=per_token, mean_logits=per_token, is_top1=t([[True, False, True], [True] * 3]))
    packed = {"completion_mask": t([[0, 1, 1, 1, 0, 0, 1, 1]]), "position_ids": t([[0, 1, 2, 3, 0, 1, 2, 3]]),
              SEQUENCE_IDS: t([[0, 0, 0, 0, 1, 1, 1, 1]])}
    per_token = t([[1.0, 2.0, 3.0, 99.0, 99.0, 5.0, 6.0]])  # 99: a sequence start and a prompt token, never scored
    packed_out = SimpleNamespace(entropy=per_token, mean_logits=per_token,
                                 is_top1=t([[True, False, True, True, True, True, True]]))
    for inputs, outputs in ((padded, padded_out), (packed, packed_out)):
        trainer._metrics["train"].clear()
        trainer._log_token_metrics("train", outputs, scored_tokens(inputs), num_pairs=1)
        got = {k: trainer._metrics["train"][k][-1] for k in TOKEN_METRICS}
        assert got == pytest.approx({"entropy": 17 / 5, "logits/chosen": 2.0, "logits/rejected": 5.5,
                                     "mean_token_accuracy": 2 / 3})


def first_log(trainer):
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[0]["step"] == 1
    return logs[0]


@pytest.mark.parametrize(
    "loss_type, overrides, expected",
    [
        ("sigmoid", {}, math.log(2)),  # -log s(0)
        ("cdpo", {"label_smoothing": 0.1}, math.log(2)),  # (0.9 + 0.1) log 2
        ("rdpo", {"label_smoothing": 0.2}, math.log(2)),  # (0.8 - 0.2) log 2 / 0.6
        ("robust", {"label_smoothing": 0.2}, math.log(2)),
        ("ipo", {}, 1 / (4 * BETA**2)),  # (0 - 1/(2b))^2 = 25
        ("ipo", {"ipo_normalize": False}, 1 / (4 * BETA**2)),
    ],
)
def test_first_loss_with_a_fresh_adapter(tiny_llama, tmp_path, pairs, loss_type, overrides, expected):
    log = first_log(make_trainer(tiny_llama, tmp_path, pairs, [loss_type], **overrides))
    assert log["loss"] == pytest.approx(expected, rel=1e-6)
    # TRL's metric names; with policy == reference every implicit reward is exactly 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert log[key] == 0.0, key
    assert log["logps/chosen"] < 0 and log["logps/rejected"] < 0
    assert "madpo/weight_mean" not in log


def test_madpo_first_loss_is_mean_weight_times_ln2(tiny_llama, tmp_path, pairs):
    data = pairs.add_column(MARGIN_COLUMN, MARGINS)
    trainer = make_trainer(tiny_llama, tmp_path, data, ["madpo"])
    log = first_log(trainer)
    weights = madpo_weights(torch.tensor(MARGINS, dtype=torch.float64))
    assert weights.min() < 0.2 and weights.max() > 1.2  # the margins do spread the weights
    assert log["madpo/weight_mean"] == pytest.approx(weights.mean().item(), rel=1e-6)
    assert log["loss"] == pytest.approx(weights.mean().item() * math.log(2), rel=1e-6)
    for key in TRL_METRICS + TOKEN_METRICS:
        assert key in log
    # the held-out set carries its margins through evaluation too
    metrics = trainer.evaluate()
    assert metrics["eval_madpo/weight_mean"] == pytest.approx(weights.mean().item(), rel=1e-6)
    assert math.isfinite(metrics["eval_loss"])


def test_madpo_without_margins_stops_at_start(tiny_llama, tmp_path, pairs):
    with pytest.raises(UserError, match=r"train dataset: madpo needs a 'reward_margin' column"):
        make_trainer(tiny_llama, tmp_path, pairs, ["madpo"])
    bad = pairs.add_column(MARGIN_COLUMN, [0.0, 1.0, float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(UserError, match=r"train dataset: row 2: 'reward_margin' must be a finite number, got nan"):
        make_trainer(tiny_llama, tmp_path, bad, ["madpo"])


def test_trl_loss_types_still_work(tiny_llama, tmp_path, pairs):
    # hinge is TRL's: relu(1 - b h) = 1 at h = 0. A margin column in the data must not reach the model.
    trainer = make_trainer(tiny_llama, tmp_path, pairs.add_column(MARGIN_COLUMN, MARGINS), ["hinge"])
    assert not trainer.use_registry
    log = first_log(trainer)
    assert log["loss"] == 1.0
    assert "entropy" in log and "rewards/margins" in log  # logged by TRL's own loss path


def independent_logratios(trainer, batch):
    """Per-pair (chosen, rejected) log-ratios and completion lengths from plain forwards of the full logits: the policy
    with its adapter, the reference with the adapter off. No code of the trainer's loss paths is involved."""
    model = trainer.model
    ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]

    def summed_logps():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
        per_token = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (per_token * completion[:, 1:]).sum(1)

    with torch.no_grad():
        policy = summed_logps()
        with model.disable_adapter():
            reference = summed_logps()
    return (policy - reference).chunk(2), completion.sum(1).double().chunk(2)


def by_hand(loss_type, chosen, rejected, lengths, eps=0.0, ipo_normalize=True, margins=None, b=1.0):
    """Each paper's per-pair formula, written out again (logsigmoid(x) = -log(1 + exp(-x)))."""
    logsig = lambda x: -torch.log1p(torch.exp(-x))  # noqa: E731
    h = chosen - rejected
    if loss_type == "sigmoid":
        return -logsig(b * h)
    if loss_type == "cdpo":
        return -(1 - eps) * logsig(b * h) - eps * logsig(-b * h)
    if loss_type in ("rdpo", "robust"):
        return (-(1 - eps) * logsig(b * h) + eps * logsig(-b * h)) / (1 - 2 * eps)
    if loss_type == "ipo":
        if ipo_normalize:
            h = chosen / lengths[0] - rejected / lengths[1]
        return (h - 1 / (2 * b)) ** 2
    # madpo, with the paper's defaults c_max 2, c_min 1/2, lambda 1, tau ln 999
    m, tau = margins, math.log(999.0)
    c = 0.5 + 1.5 / (1 + (2 - 1) / (1 - 0.5) * torch.exp(m.abs() - tau))
    w = torch.where(m > -tau, torch.sigmoid(c * m) / torch.sigmoid(m), torch.ones_like(m))
    return w * -logsig(b * h)


@pytest.mark.parametrize(
    "loss_type, knobs, without_knobs",
    [
        ("sigmoid", {}, None),
        ("cdpo", {"label_smoothing": 0.2}, ("sigmoid", {})),
        ("rdpo", {"label_smoothing": 0.2}, ("sigmoid", {})),
        ("robust", {"label_smoothing": 0.3}, ("rdpo", {"label_smoothing": 0.2})),
        ("ipo", {}, ("ipo", {"ipo_normalize": False})),
        ("ipo", {"ipo_normalize": False}, ("ipo", {})),
        ("madpo", {}, ("sigmoid", {})),
    ],
    ids=["sigmoid", "cdpo", "rdpo", "robust", "ipo", "ipo-summed", "madpo"],
)
def test_each_variant_by_hand_away_from_the_reference(tiny_llama, tmp_path, pairs, loss_type, knobs, without_knobs):
    """h != 0, where eps, ipo_normalize and the margins change the loss: the trainer's loss (whichever path it takes)
    equals the paper's formula on log-ratios computed independently, and differs from the same formula without the
    knob by far more than the tolerance (so a knob the trainer dropped would fail)."""
    data = pairs.add_column(MARGIN_COLUMN, MARGINS)
    trainer = make_trainer(tiny_llama, tmp_path, data, [loss_type], beta=1.0, **knobs)  # b h of order 1
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 2.0)
    trainer.model.eval()  # no dropout anywhere: the plain forwards below see the same function
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    (chosen, rejected), lengths = independent_logratios(trainer, batch)
    margins = batch[MARGIN_COLUMN].double()  # in the batch's (shuffled) order
    eps, normalize = knobs.get("label_smoothing", 0.0), knobs.get("ipo_normalize", True)
    expected = by_hand(loss_type, chosen, rejected, lengths, eps, normalize, margins).mean().item()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert (chosen - rejected).abs().mean() > 1.0  # really away from the reference
    assert got == pytest.approx(expected, rel=2e-5, abs=1e-6)
    if without_knobs is not None:
        other_type, other = without_knobs
        other_eps, other_normalize = other.get("label_smoothing", 0.0), other.get("ipo_normalize", True)
        baseline = by_hand(other_type, chosen, rejected, lengths, other_eps, other_normalize, margins).mean().item()
        assert abs(baseline - expected) > 100 * (2e-5 * abs(expected) + 1e-6), (baseline, expected)

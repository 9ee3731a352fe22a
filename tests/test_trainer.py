"""The trainer (dpo_recipes/train/trainer.py) and its loss paths: a tiny Llama on bundled conversational data.

(a) Our sigmoid / ipo / rdpo give bit-for-bit TRL's loss, gradients and metrics on the same batch and model (with a
    LoRA adapter). By default TRL computes these (see (e)); ours run when a project-only feature needs them
    (padding-free, a cdpo or madpo term in the same loss), so the comparison forces our path.
(b) With a fresh adapter the policy is the reference (h = 0), so the first logged loss of a real training step is known
    in closed form for every variant. (c) The logged metrics keep TRL's names. (d) TRL's own loss types still work.
(e) Which loss path computes a config, and that Python and the CLI agree on it. A loss TRL implements goes to TRL's
    own `_compute_loss`, with TRL's options (ld_alpha, f_divergence_type, use_weighting): PreferenceTrainer must give
    a plain DPOTrainer's answer on the same model and batch. What neither path supports stops in the trainer with one
    ValueError, and the CLI refuses exactly the same configs with the same words.
"""

import math

import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from tests.helpers import REPO, TOKEN_METRICS
from dpo_recipes.train.config import PreferenceConfig, parse_config
from dpo_recipes.errors import UserError
from dpo_recipes.train.losses import madpo_weights
from dpo_recipes.names import ROW_ID_COLUMN
from dpo_recipes.train.trainer import MARGIN_COLUMN, PreferenceTrainer

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

    from dpo_recipes.train.packing import SEQUENCE_IDS
    from dpo_recipes.train.trainer import scored_tokens

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


# --- (e) which loss path computes a config --------------------------------------------------------------------------

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")
ROWS = 8
COMMON = dict(beta=0.1, max_length=128, per_device_train_batch_size=ROWS, max_steps=1, gradient_checkpointing=False,
              use_cpu=True, bf16=False, report_to="none", save_strategy="no", seed=0)


@pytest.fixture(scope="module")
def margin_pairs():
    rows = load_dataset("json", data_files=str(REPO / "data/demo/train.jsonl"), split="train").select(range(ROWS))
    return rows.add_column(MARGIN_COLUMN, [0.5 * i - 2.0 for i in range(ROWS)])


def full_ft(trainer_cls, config_cls, model_dir, out, data, **options):
    """A full fine-tune of the tiny model whose policy is moved away from the reference, the same way every time."""
    args = config_cls(output_dir=str(out), **COMMON, **options)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(
        model_dir))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    trainer.model.train()
    return trainer


def one_batch(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)])
    batch.pop(ROW_ID_COLUMN, None)
    return batch


def loss_and_metrics(trainer, batch):
    trainer._metrics["train"].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize(
    "loss_type, options",
    [
        ("sigmoid", {"ld_alpha": 0.5}),
        ("sigmoid", {"use_weighting": True}),
        ("sigmoid", {"f_divergence_type": "forward_kl"}),
        ("rdpo", {"label_smoothing": 0.2, "f_divergence_type": "js_divergence"}),
        ("ipo", {"ld_alpha": 0.3}),
    ],
    ids=["ld_alpha", "use_weighting", "forward_kl", "rdpo-js", "ipo-ld_alpha"],
)
def test_python_api_gives_trls_answer_for_trls_options(tiny_llama, tmp_path, margin_pairs, loss_type, options):
    # TRL's LM head on both sides (the compact CPU head rounds differently: tests/test_compact_head.py)
    ours = full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path / "ours", margin_pairs,
                   loss_type=[loss_type], cpu_compact_lm_head=False, **options)
    assert not ours.use_registry
    batch = one_batch(ours)
    trl_name = {"rdpo": "robust"}.get(loss_type, loss_type)
    trl = full_ft(DPOTrainer, DPOConfig, tiny_llama, tmp_path / "trl", margin_pairs.remove_columns(MARGIN_COLUMN),
                  loss_type=[trl_name], **options)
    our_loss, our_metrics = loss_and_metrics(ours, batch)
    trl_loss, trl_metrics = loss_and_metrics(trl, {k: v for k, v in batch.items() if k != MARGIN_COLUMN})
    assert abs(our_metrics["rewards/margins"]) > 1e-3  # the policy really differs from the reference
    assert our_loss == trl_loss
    assert our_metrics == pytest.approx(trl_metrics, rel=1e-6)

    # The option matters here: the project's own path, which does not apply it, gives another answer.
    ours.use_registry = True
    registry_loss, _ = loss_and_metrics(ours, batch)
    assert abs(registry_loss - trl_loss) > 1e-4, (registry_loss, trl_loss)


def test_trls_path_logs_the_projects_metrics(tiny_llama, tmp_path, margin_pairs):
    trainer = full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path, margin_pairs, loss_type=["sigmoid"])
    batch = one_batch(trainer)
    trl_loss, trl_metrics = loss_and_metrics(trainer, batch)
    trainer.use_registry = True
    our_loss, our_metrics = loss_and_metrics(trainer, batch)
    assert set(trl_metrics) == set(our_metrics) >= {"num_tokens", "rewards/margins", *TOKEN_METRICS}
    assert trl_loss == pytest.approx(our_loss, rel=1e-6)


# Combinations neither path supports: (overrides, what the one error line says)
REFUSED = [
    ({"loss_type": ["cdpo"], "label_smoothing": 0.1, "ld_alpha": 0.5},
     "ld_alpha is applied by TRL's loss only and cannot be combined with cdpo"),
    ({"loss_type": ["madpo"], "use_weighting": True}, "use_weighting is applied by TRL's loss only"),
    ({"loss_type": ["ipo"], "ipo_normalize": False, "f_divergence_type": "forward_kl"},
     "f_divergence_type is applied by TRL's loss only and cannot be combined with ipo_normalize false"),
    ({"loss_type": ["sigmoid"], "padding_free": True, "ld_alpha": 0.5, "use_weighting": True},
     "ld_alpha, use_weighting are applied by TRL's loss only and cannot be combined with padding_free"),
    ({"loss_type": ["cdpo", "hinge"], "label_smoothing": 0.1},
     "loss_type ['hinge'] is TRL's and cannot be combined with cdpo"),
    ({"loss_type": ["sigmoid"], "label_smoothing": 0.1}, "label_smoothing=0.1 has no effect with loss_type"),
]
ACCEPTED = [
    {"loss_type": ["sigmoid"], "ld_alpha": 0.5},
    {"loss_type": ["rdpo"], "label_smoothing": 0.2, "use_weighting": True},
    {"loss_type": ["ipo"], "f_divergence_type": "forward_kl"},
    {"loss_type": ["sigmoid", "hinge"]},
    {"loss_type": ["cdpo"], "label_smoothing": 0.1, "padding_free": True},
]


def cli_args(overrides):
    argv = ["--config", DEMO, "--output_dir", "unused"]
    for key, value in overrides.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value).lower()
                                                                                   if isinstance(value, bool)
                                                                                   else str(value)])]
    return argv


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_trainer_and_cli_refuse_the_same_with_the_same_line(tiny_llama, tmp_path, margin_pairs, overrides, message):
    with pytest.raises(ValueError) as python:
        full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path, margin_pairs, **overrides)
    assert message in str(python.value)
    with pytest.raises(UserError) as cli:
        parse_config(cli_args(overrides))
    assert str(cli.value) == f"config: {python.value}"


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[str(i) for i in range(len(ACCEPTED))])
def test_trainer_and_cli_accept_the_same_and_pick_the_same_path(tiny_llama, tmp_path, margin_pairs, overrides):
    _, cli, _ = parse_config(cli_args(overrides))
    assert {key: getattr(cli, key) for key in overrides} == overrides
    python = full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path, margin_pairs, **overrides)
    assert python.use_registry == ("cdpo" in overrides["loss_type"])  # only cdpo needs the project's path here
    assert python.loss_types == [{"rdpo": "robust"}.get(t, t) for t in overrides["loss_type"]] or python.use_registry


def test_reference_pass_asks_the_fused_head_for_log_probs_alone(tiny_llama, tmp_path, pairs, monkeypatch):
    """The reference pass (the PEFT policy with its adapter off) goes through a fused forward that computes log-probs
    alone: no entropy, mean logits or top-1 flags, which only the policy's metrics read. Its log-probs equal the full
    forward's (a fresh adapter: policy = reference), and the policy's own forward keeps its metric outputs."""
    from dpo_recipes.train import trainer as trainer_module

    trainer = make_trainer(tiny_llama, tmp_path, pairs, ["sigmoid"], padding_free=True)
    seen = []

    def recording(model, inputs, **kwargs):
        logps, lengths, outputs = real(model, inputs, **kwargs)
        seen.append((logps.detach(), outputs.entropy))
        return logps, lengths, outputs

    real = trainer_module.completion_logps
    monkeypatch.setattr(trainer_module, "completion_logps", recording)
    batch = one_batch(trainer)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    (policy_logps, policy_entropy), (ref_logps, ref_entropy) = seen
    assert policy_entropy is not None and ref_entropy is None
    assert torch.equal(policy_logps, ref_logps)
    core = trainer.model.get_base_model()
    assert trainer._reference_forward[1] is not core.forward  # the policy's forward is back after the pass


@pytest.mark.parametrize("loss_type", ["sigmoid", "cdpo"], ids=["trl-path", "project-path"])
def test_eval_metrics_are_means_over_pairs_not_batches(tiny_llama, tmp_path, pairs, loss_type):
    """Three held-out pairs in batches of 2 and 1 must log what batches of 1 log (each batch one pair, so there a mean
    over batches is the mean over pairs). Before, the lone third pair weighed as much as the first two together. The
    policy is trained a few steps first, so that the pairs' rewards differ."""
    trainer = make_trainer(tiny_llama, tmp_path, pairs, loss_type)
    trainer.args.max_steps, trainer.args.learning_rate = 4, 1e-2
    trainer.train()
    three = pairs.select(range(3))
    by_batch = {}
    for size in (1, 2):
        trainer.args.per_device_eval_batch_size = size
        by_batch[size] = trainer.evaluate(three)
    keys = [f"eval_{k}" for k in TRL_METRICS]
    assert {k: by_batch[2][k] for k in keys} == pytest.approx({k: by_batch[1][k] for k in keys}, rel=1e-4, abs=1e-6)
    # the check can fail: the unweighted mean of batches {1, 2} and {3} is another number
    trainer.args.per_device_eval_batch_size = 1
    margins = [trainer.evaluate(pairs.select([i]))["eval_rewards/margins"] for i in range(3)]
    assert by_batch[2]["eval_rewards/margins"] == pytest.approx(sum(margins) / 3, rel=1e-4, abs=1e-6)
    assert abs((margins[0] + margins[1]) / 4 + margins[2] / 2 - sum(margins) / 3) > 1e-3

"""Which loss path computes a config, and that Python and the CLI agree on it.

A loss TRL implements goes to TRL's own `_compute_loss`, with TRL's options (ld_alpha, f_divergence_type,
use_weighting): PreferenceTrainer must give a plain DPOTrainer's answer on the same model and batch. What neither path
supports stops in the trainer with one ValueError, and the CLI refuses exactly the same configs with the same words.
"""

import sys

import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from tests.helpers import REPO, TOKEN_METRICS, run
from dpo_recipes.config import PreferenceConfig, parse_config
from dpo_recipes.errors import UserError
from dpo_recipes.trainer import MARGIN_COLUMN, ROW_ID_COLUMN, PreferenceTrainer

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")
ROWS = 8
COMMON = dict(beta=0.1, max_length=128, per_device_train_batch_size=ROWS, max_steps=1, gradient_checkpointing=False,
              use_cpu=True, bf16=False, report_to="none", save_strategy="no", seed=0)


@pytest.fixture(scope="module")
def pairs():
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
def test_python_api_gives_trls_answer_for_trls_options(tiny_llama, tmp_path, pairs, loss_type, options):
    ours = full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path / "ours", pairs, loss_type=[loss_type],
                   **options)
    assert not ours.use_registry
    batch = one_batch(ours)
    trl_name = {"rdpo": "robust"}.get(loss_type, loss_type)
    trl = full_ft(DPOTrainer, DPOConfig, tiny_llama, tmp_path / "trl", pairs.remove_columns(MARGIN_COLUMN),
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


def test_trls_path_logs_the_projects_metrics(tiny_llama, tmp_path, pairs):
    trainer = full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path, pairs, loss_type=["sigmoid"])
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
def test_trainer_and_cli_refuse_the_same_with_the_same_line(tiny_llama, tmp_path, pairs, overrides, message):
    with pytest.raises(ValueError) as python:
        full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path, pairs, **overrides)
    assert message in str(python.value)
    with pytest.raises(UserError) as cli:
        parse_config(cli_args(overrides))
    assert str(cli.value) == f"config: {python.value}"


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[str(i) for i in range(len(ACCEPTED))])
def test_trainer_and_cli_accept_the_same_and_pick_the_same_path(tiny_llama, tmp_path, pairs, overrides):
    _, cli, _ = parse_config(cli_args(overrides))
    assert {key: getattr(cli, key) for key in overrides} == overrides
    python = full_ft(PreferenceTrainer, PreferenceConfig, tiny_llama, tmp_path, pairs, **overrides)
    assert python.use_registry == ("cdpo" in overrides["loss_type"])  # only cdpo needs the project's path here
    assert python.loss_types == [{"rdpo": "robust"}.get(t, t) for t in overrides["loss_type"]] or python.use_registry


@pytest.mark.slow
def test_cli_refusal_is_one_line_exit_2():
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--loss_type", "cdpo",
                "--label_smoothing", "0.1", "--ld_alpha", "0.5"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config: ld_alpha is applied by TRL's loss only and cannot be combined with cdpo"]

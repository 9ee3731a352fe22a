"""The held-out evaluation report of a run: eval_report.json and eval_report.md in the run folder.

Written at the end of every run (commands/train.py, step 7) and again on demand (evaluate.py):

    make eval RUN=<run dir> [ARGS="--judge_model <reward model> --eval_report_prompts 64"]

What it measures, on the run's own held-out split, with the models as saved in the run folder:
- preference pairs: summed completion log-probs of chosen and rejected replies under the policy and the reference,
  the implicit rewards r = beta * (log pi - log pi_ref) and their accuracy and margin (TRL's eval metrics, recomputed
  with the same tokenization and truncation);
- KL(policy || reference) on held-out prompts, a Monte-Carlo estimate from completions sampled from the policy
  (temperature 1, no top-k / top-p): k1 = sum over the sampled tokens of log pi - log pi_ref, and k3 = sum of
  (rho - 1 - log rho) with rho = pi_ref / pi, both unbiased for the KL between the two distributions of completions
  of at most `eval_report_max_new_tokens` tokens; k3 is never negative and usually has the smaller variance;
- greedy replies of the policy and the reference side by side, and with `judge_model` (a one-output reward model)
  the policy's win-rate over the reference on those replies, ties counted half, with a 95% Wilson interval;
- with `eval_report_probes` (a probes file, dpo_recipes/report/probes.py): the share of greedy replies in the chosen style
  on its held-out prompts, and fact accuracy over its subjects, reference (before) against policy (after).

The reference is what training used: the base model with the adapter disabled for LoRA / QLoRA, the initial model
(`model_name_or_path`) for a full fine-tune.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import get_quantization_config
from trl.trainer.utils import add_fused_lm_head

from dpo_recipes.errors import UserError
from .generation import completion_token_logps, generate, kl_estimates
from .judge import judge_scores, load_judge, win_rate
from dpo_recipes.models.compact_head import add_compact_head
from dpo_recipes.models.loading import resolve_model_path
from dpo_recipes.train.packing import MODEL_INPUTS, PreferenceCollator, completion_logps, takes_shared_prompt_mask
from dpo_recipes.models.precision import fp32_lm_head, fp32_on_cpu
from .probes import load_probes, probe_metrics
from .markdown import write_report
from .statistics import mean_se
from dpo_recipes.data.tokenization import generation_prompt_ids, tokenize_pair

@dataclasses.dataclass
class ReportSettings:
    pairs: int | None = 64
    prompts: int = 8
    samples: int = 4
    max_new_tokens: int = 32
    examples: int = 3
    judge_model: str | None = None
    probes: str | None = None
    beta: float = 0.1
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    batch_size: int = 8
    generation_batch_size: int = 16  # sequences generated / scored together
    seed: int = 42
    padding_free: bool = False  # the run's layout: pairs scored in packed rows, shared prompts once
    prefix_sharing: bool = False

    @classmethod
    def from_args(cls, script_args, training) -> "ReportSettings":
        """`training`: the run's PreferenceConfig, or its SavedTraining read back from run_config.json."""
        return cls(
            pairs=script_args.eval_report_pairs,
            prompts=script_args.eval_report_prompts,
            samples=script_args.eval_report_samples,
            max_new_tokens=script_args.eval_report_max_new_tokens,
            examples=script_args.eval_report_examples,
            generation_batch_size=script_args.eval_report_generation_batch_size,
            judge_model=script_args.judge_model,
            probes=script_args.eval_report_probes,
            beta=float(training.beta),
            max_length=training.max_length,
            truncation_mode=training.truncation_mode,
            batch_size=int(training.per_device_eval_batch_size),
            seed=int(training.seed),
            padding_free=bool(training.padding_free),
            prefix_sharing=bool(training.prefix_sharing),
        )


# ---------------------------------------------------------------------------------------------------------------
# Models of a run folder


@dataclasses.dataclass
class RunModels:
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: the policy with its adapter disabled
    tokenizer: object
    kind: str  # "lora", "qlora" or "full"

    @contextlib.contextmanager
    def reference_model(self):
        """The frozen reference, as in training: adapters disabled (PEFT) or the separate initial model."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device


def _load_causal_lm(path: str, model_args, trust_remote_code: bool, quantize: bool):
    """Load as training did (dtype, 4-bit when QLoRA), with TRL's fused LM head for the pair log-probs."""
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    quantization_config = get_quantization_config(model_args) if quantize else None
    if quantization_config is not None:
        quantization_config.bnb_4bit_compute_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=model_args.model_revision if path == model_args.model_name_or_path else None,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization_config,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        device_map="auto" if torch.cuda.is_available() else {"": "cpu"},
    )
    fp32_lm_head(model)  # as training computed them (precision.py)
    add_fused_lm_head(model)
    add_compact_head(model)  # on a CPU, the head on the scored positions only (compact_head.py)
    return model.eval()


def load_run_models(run_dir: Path, base_path: str, model_args, trust_remote_code: bool = False) -> RunModels:
    """The policy saved in `run_dir` and its reference. `base_path` is the model training started from."""
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if (run_dir / "adapter_config.json").is_file():
        base = _load_causal_lm(base_path, model_args, trust_remote_code, quantize=True)
        policy = PeftModel.from_pretrained(base, run_dir).eval()
        kind = "qlora" if model_args.load_in_4bit else "lora"
        return RunModels(policy, None, tokenizer, kind)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: holds neither an adapter (adapter_config.json) nor a model (config.json)")
    policy = _load_causal_lm(str(run_dir), model_args, trust_remote_code, quantize=False)
    reference = _load_causal_lm(base_path, model_args, trust_remote_code, quantize=False)
    return RunModels(policy, reference, tokenizer, "full")


# ---------------------------------------------------------------------------------------------------------------
# Prompts as text (for the report)


def prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return prompt


# ---------------------------------------------------------------------------------------------------------------
# Preference pairs


@torch.no_grad()
def pair_logps(model, tokenized: list[dict], settings: ReportSettings, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (chosen, rejected) of each pair, batched and truncated as the trainer does, in the
    run's layout (padded, padding-free, or shared prompts where the model's attention takes their mask)."""
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    shared = settings.prefix_sharing and takes_shared_prompt_mask(attention)
    # The trainer's collator; the pad id is never scored (masked), so any id will do.
    collator = PreferenceCollator.for_config(dataclasses.replace(settings, prefix_sharing=shared), pad_token_id=0)
    chosen, rejected = [], []
    for start in tqdm(range(0, len(tokenized), settings.batch_size), desc="pair log-probs", leave=False):
        batch = collator(tokenized[start : start + settings.batch_size])
        model_inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        logps = completion_logps(model, model_inputs)[0].double().cpu()
        c, r = logps.chunk(2)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def pair_metrics(policy: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor],
                 beta: float) -> dict:
    """Implicit rewards r = beta * (log pi - log pi_ref) and what TRL reports from them, with standard errors."""
    chosen_rewards = beta * (policy[0] - reference[0])
    rejected_rewards = beta * (policy[1] - reference[1])
    margins = chosen_rewards - rejected_rewards
    return {
        "pairs": int(margins.numel()),
        "beta": beta,
        "reward_accuracy": mean_se((chosen_rewards > rejected_rewards).double()),
        "reward_margin": mean_se(margins),
        "reward_chosen": mean_se(chosen_rewards),
        "reward_rejected": mean_se(rejected_rewards),
        # how each side's log-prob moved (policy - reference): DPO can widen the margin while both fall
        "logp_change": {"chosen": mean_se(policy[0] - reference[0]), "rejected": mean_se(policy[1] - reference[1])},
        "logps": {
            "policy": {"chosen": mean_se(policy[0]), "rejected": mean_se(policy[1])},
            "reference": {"chosen": mean_se(reference[0]), "rejected": mean_se(reference[1])},
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# The report


def unique_prompts(dataset, limit: int) -> list[dict]:
    """The first `limit` held-out rows with distinct prompts (in dataset order, so every report sees the same)."""
    seen, rows = set(), []
    for row in dataset:
        key = json.dumps(row["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
            if len(rows) == limit:
                break
    return rows


def evaluate(models: RunModels, eval_dataset, settings: ReportSettings, held_out_logps=None) -> dict:
    """`held_out_logps`: the training run's own held-out pass over every row of `eval_dataset` (the trainer's
    `held_out_logps`); when the report scores all rows it uses them instead of scoring the same pairs again."""
    tokenizer, device = models.tokenizer, models.device
    report: dict = {"settings": dataclasses.asdict(settings), "model_kind": models.kind,
                    "held_out_rows": len(eval_dataset)}

    # 1. Preference pairs: the first `pairs` held-out rows.
    n_pairs = len(eval_dataset) if settings.pairs is None else min(settings.pairs, len(eval_dataset))
    if held_out_logps is not None and n_pairs == len(eval_dataset) == len(held_out_logps[0][0]):
        (policy_logps, reference_logps), scored_by = held_out_logps, "the training run's held-out pass"
    else:
        tokenized = [tokenize_pair(tokenizer, eval_dataset[i]) for i in range(n_pairs)]
        policy_logps = pair_logps(models.policy, tokenized, settings, device)
        with models.reference_model() as reference:
            reference_logps = pair_logps(reference, tokenized, settings, device)
        scored_by = "the report (the saved model and its reference)"
    report["pairs"] = {**pair_metrics(policy_logps, reference_logps, settings.beta), "scored_by": scored_by}

    # 2. Held-out prompts: sampled completions for the KL, greedy replies for the examples and the win-rate.
    rows = unique_prompts(eval_dataset, settings.prompts)
    prompt_ids = [generation_prompt_ids(tokenizer, row) for row in rows]
    pad, width, started = tokenizer.pad_token_id, settings.generation_batch_size, time.perf_counter()
    samples = generate(models.policy, tokenizer, prompt_ids, settings.max_new_tokens, sample=True, n=settings.samples,
                       seed=settings.seed, batch_size=width)
    pol_kl = completion_token_logps(models.policy, prompt_ids, samples, pad, width)
    greedy_policy = [c[0] for c in generate(models.policy, tokenizer, prompt_ids, settings.max_new_tokens,
                                            sample=False, batch_size=width)]
    with models.reference_model() as reference:
        ref_kl = completion_token_logps(reference, prompt_ids, samples, pad, width)
        greedy_reference = [c[0] for c in generate(reference, tokenizer, prompt_ids, settings.max_new_tokens,
                                                   sample=False, batch_size=width)]
    seconds = time.perf_counter() - started
    report["generation_seconds"] = round(seconds, 2)
    print(f"report generations: {len(rows)} prompts x ({settings.samples} samples + 2 greedy) in {seconds:.1f} s, "
          f"{width} sequences at a time", flush=True)
    report["kl"] = {"prompts": len(rows), "samples_per_prompt": settings.samples, **kl_estimates(pol_kl, ref_kl)}

    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    policy_text = [decode(c) for c in greedy_policy]
    reference_text = [decode(c) for c in greedy_reference]
    # Every prompt's greedy replies (the win-rate's inputs); the Markdown shows the first `examples`.
    report["generations"] = [{"prompt": prompt_text(row["prompt"]), "policy": p, "reference": r}
                             for row, p, r in zip(rows, policy_text, reference_text)]

    # 3. Win-rate, when a judge is given.
    if settings.judge_model:
        judge, judge_tokenizer = load_judge(settings.judge_model, device)
        prompts = [row["prompt"] for row in rows]
        policy_scores = judge_scores(judge, judge_tokenizer, prompts, policy_text)
        reference_scores = judge_scores(judge, judge_tokenizer, prompts, reference_text)
        report["win_rate"] = {"judge_model": settings.judge_model, "decoding": "greedy",
                              **win_rate(policy_scores, reference_scores, policy_text, reference_text),
                              "scores": [{"policy": p, "reference": r} for p, r in zip(policy_scores, reference_scores)]}
        del judge

    # 4. Probes: style uptake on held-out prompts and fact accuracy, greedy replies of policy and reference.
    if settings.probes:
        report["probes"] = run_probes(models, settings)
    return report


@torch.no_grad()
def greedy_replies(models: RunModels, questions: list[str], max_new_tokens: int,
                   batch_size: int = 16) -> dict[str, list[str]]:
    """Greedy replies of policy and reference to single-turn user questions, `batch_size` at a time (generate())."""
    tokenizer = models.tokenizer
    ids = [generation_prompt_ids(tokenizer, {"prompt": [{"role": "user", "content": q}]}) for q in questions]

    def replies(model) -> list[str]:
        return [tokenizer.decode(c[0], skip_special_tokens=True).strip()
                for c in generate(model, tokenizer, ids, max_new_tokens, sample=False, batch_size=batch_size)]

    policy = replies(models.policy)
    with models.reference_model() as reference:
        ref = replies(reference)
    return {"policy": policy, "reference": ref}


def run_probes(models: RunModels, settings: ReportSettings) -> dict:
    """Style uptake and fact accuracy from greedy replies. The last step of the report: on a CPU a bf16 model is
    cast to fp32 for it (precision.fp32_on_cpu), so that a reply does not depend on the batch it was generated in."""
    probes = load_probes(settings.probes)
    if models.kind != "qlora":
        for model in (models.policy, models.reference):
            if model is not None:
                fp32_on_cpu(model)
    # Both kinds of question in one list, so that a batch holds as many as the width allows; split after.
    style_count = len(probes["style_prompts"])
    replies = greedy_replies(models, probes["style_prompts"] + [f["question"] for f in probes["facts"]],
                             settings.max_new_tokens, settings.generation_batch_size)
    style = {side: answers[:style_count] for side, answers in replies.items()}
    facts = {side: answers[style_count:] for side, answers in replies.items()}
    return {"file": settings.probes, "dtype": str(models.policy.dtype).removeprefix("torch."),
            **probe_metrics(probes, style, facts),
            "style_replies": [{"prompt": q, "policy": p, "reference": r}
                              for q, p, r in zip(probes["style_prompts"], style["policy"], style["reference"])],
            "fact_replies": [{"subject": f["subject"], "policy": p, "reference": r}
                             for f, p, r in zip(probes["facts"], facts["policy"], facts["reference"])]}


def report_for_run(run_dir, script_args, training, model_args, eval_dataset, written_by: str,
                   held_out_logps=None) -> dict:
    """Load the saved policy and its reference, evaluate on `eval_dataset`, write the report; returns it."""
    run_dir = Path(run_dir)
    settings = ReportSettings.from_args(script_args, training)
    base_path = resolve_model_path(model_args, script_args.tiny_model)
    torch.manual_seed(settings.seed)
    models = load_run_models(run_dir, base_path, model_args, bool(training.trust_remote_code))
    report = evaluate(models, eval_dataset, settings, held_out_logps)
    state_file = run_dir / "trainer_state.json"
    report.update({
        "run_dir": str(run_dir),
        "run_name": run_dir.name,
        "global_step": json.loads(state_file.read_text()).get("global_step") if state_file.is_file() else None,
        "written_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "written_by": written_by,
    })
    json_path, md_path = write_report(run_dir, report)
    print(f"evaluation report -> {md_path}", flush=True)
    return report

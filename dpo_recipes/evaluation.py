"""The held-out evaluation report of a run: eval_report.json and eval_report.md in the run folder.

Written at the end of every run (run.py, step 7) and again on demand:

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
  the policy's win-rate over the reference on those replies, ties counted half, with a 95% Wilson interval.

The reference is what training used: the base model with the adapter disabled for LoRA / QLoRA, the initial model
(`model_name_or_path`) for a full fine-tune.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from .config import ScriptArguments, validate_report_args
from .data import load_preference_data
from .errors import UserError, exit_on_user_error
from .model_card import hub_repo_id, push_folder, write_model_card
from .modeling import load_tokenizer, resolve_model_path
from .names import REPORT_JSON, REPORT_MD, RUN_CONFIG
from .packing import completion_logps
from .reporting import write_json
from .tokenization import generation_prompt_ids, reward_ids, tokenize_pair

# ScriptArguments fields that only shape the report (they can be changed for `make eval` without retraining).
REPORT_FIELDS = ("eval_report_pairs", "eval_report_prompts", "eval_report_samples", "eval_report_max_new_tokens",
                 "eval_report_examples", "judge_model")
Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclasses.dataclass
class ReportSettings:
    pairs: int | None = 64
    prompts: int = 8
    samples: int = 4
    max_new_tokens: int = 32
    examples: int = 3
    judge_model: str | None = None
    beta: float = 0.1
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    batch_size: int = 8
    seed: int = 42

    @classmethod
    def from_args(cls, script_args, training: dict) -> "ReportSettings":
        return cls(
            pairs=script_args.eval_report_pairs,
            prompts=script_args.eval_report_prompts,
            samples=script_args.eval_report_samples,
            max_new_tokens=script_args.eval_report_max_new_tokens,
            examples=script_args.eval_report_examples,
            judge_model=script_args.judge_model,
            beta=float(training["beta"]),
            max_length=training["max_length"],
            truncation_mode=training["truncation_mode"],
            batch_size=int(training["per_device_eval_batch_size"]),
            seed=int(training["seed"]),
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
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config
    from trl.trainer.utils import add_fused_lm_head

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
    add_fused_lm_head(model)
    return model.eval()


def load_run_models(run_dir: Path, base_path: str, model_args, trust_remote_code: bool = False) -> RunModels:
    """The policy saved in `run_dir` and its reference. `base_path` is the model training started from."""
    from peft import PeftModel
    from transformers import AutoTokenizer

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
# Tokenization: TRL's DPO rendering, so that the numbers match the trainer's


def prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return prompt


# ---------------------------------------------------------------------------------------------------------------
# Preference pairs


@torch.no_grad()
def pair_logps(model, tokenized: list[dict], settings: ReportSettings, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (chosen, rejected) of each pair, batched and truncated as the trainer does."""
    from tqdm.auto import tqdm
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(
        pad_token_id=0, max_length=settings.max_length, truncation_mode=settings.truncation_mode
    )
    chosen, rejected = [], []
    for start in tqdm(range(0, len(tokenized), settings.batch_size), desc="pair log-probs", leave=False):
        batch = collator(tokenized[start : start + settings.batch_size])
        model_inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "completion_mask")}
        logps = completion_logps(model, model_inputs)[0].double().cpu()
        c, r = logps.chunk(2)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def mean_se(values: torch.Tensor) -> dict:
    values = values.double()
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "se": se, "n": n}


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
        "logps": {
            "policy": {"chosen": mean_se(policy[0]), "rejected": mean_se(policy[1])},
            "reference": {"chosen": mean_se(reference[0]), "rejected": mean_se(reference[1])},
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Generation and the KL estimate


def _generation_config(tokenizer, model, max_new_tokens: int, sample: bool, n: int):
    from transformers import GenerationConfig

    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    # Every option that reshapes the next-token distribution is set to "off": generate() fills options left unset
    # from the model's generation_config (often top_p 0.9, temperature 0.6), and the KL estimate needs samples from
    # the policy itself.
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        num_return_sequences=n,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


def _eos_ids(config) -> set[int]:
    eos = config.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int, sample: bool, n: int = 1,
             seed: int = 0) -> list[list[int]]:
    """`n` completions of the prompt, each cut after its first EOS token (which is kept)."""
    from transformers.utils import logging as hf_logging

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers calls top_k=0 / min_p=0 invalid flags; here they mean "off"
    try:
        config = _generation_config(tokenizer, model, max_new_tokens, sample, n)
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    eos = _eos_ids(config)
    completions = []
    for row in out[:, len(prompt_ids) :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        completions.append(row[:cut])
    return completions


@torch.no_grad()
def completion_token_logps(model, prompt_ids: list[int], completions: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """log p(y_t | prompt, y_<t) of every completion token (float64), from the full softmax at those positions."""
    device = next(model.parameters()).device
    width = max(len(c) for c in completions)
    rows = [prompt_ids + c + [pad_id] * (width - len(c)) for c in completions]
    mask = [[1] * (len(prompt_ids) + len(c)) + [0] * (width - len(c)) for c in completions]
    input_ids = torch.tensor(rows, device=device)
    # Only the positions that predict completion tokens need logits (a full vocabulary row each).
    logits = model(input_ids=input_ids, attention_mask=torch.tensor(mask, device=device), use_cache=False,
                   logits_to_keep=width + 1).logits[:, :-1].double()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, -width:, None]).squeeze(-1).cpu()
    return [logps[i, : len(c)] for i, c in enumerate(completions)]


def kl_estimates(policy_logps: list[torch.Tensor], reference_logps: list[torch.Tensor]) -> dict:
    """k1 and k3 Monte-Carlo estimates of KL(pi || pi_ref) from completions sampled from pi, per completion
    (mean over completions of the per-completion sum) and per token (sum over all tokens / number of tokens, with
    the ratio estimator's standard error), each with its standard error across completions."""
    k1 = torch.stack([(p - r).sum() for p, r in zip(policy_logps, reference_logps)])
    k3 = torch.stack([(torch.exp(r - p) - 1 - (r - p)).sum() for p, r in zip(policy_logps, reference_logps)])
    lengths = torch.tensor([float(len(p)) for p in policy_logps], dtype=torch.float64)
    out = {"completions": len(policy_logps), "tokens": int(lengths.sum().item()),
           "mean_completion_tokens": lengths.mean().item()}
    for name, per_seq in (("k1", k1), ("k3", k3)):
        per_token = (per_seq.sum() / lengths.sum()).item()
        n = per_seq.numel()
        # Ratio estimator: the per-token mean is (sum of sequence sums) / (sum of lengths), sequences independent.
        resid = per_seq - per_token * lengths
        se_token = (math.sqrt((resid**2).sum().item() / (n * (n - 1))) / lengths.mean().item()) if n > 1 else float("nan")
        out[name] = {"per_completion": mean_se(per_seq), "per_token": {"mean": per_token, "se": se_token}}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Win-rate against the reference, scored by a reward model


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties count half)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def load_judge(path: str, device, trust_remote_code: bool = False):
    """(model, tokenizer) of a one-output sequence-classification reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype="auto", trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise UserError(f"judge_model: cannot load {path!r}: {str(err).splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise UserError(f"judge_model: {path} has {model.config.num_labels} outputs; a reward model has one "
                        "(num_labels=1)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def judge_scores(judge, judge_tokenizer, prompts: list, replies: list[str]) -> list[float]:
    """The reward of each (prompt, reply), rendered as the reward model was trained (tokenization.reward_ids), one
    sequence at a time so that no padding enters the score."""

    device = next(judge.parameters()).device
    scores = []
    for prompt, reply in zip(prompts, replies):
        completion = [{"role": "assistant", "content": reply}] if isinstance(prompt, list) else reply
        try:
            ids = reward_ids(judge_tokenizer, {"prompt": prompt, "chosen": completion}, "chosen")
        except ValueError as err:  # e.g. a conversational prompt and a tokenizer without a chat template
            raise UserError(f"judge_model: cannot render a held-out prompt: {str(err).splitlines()[0]}") from None
        scores.append(float(judge(input_ids=torch.tensor([ids], device=device)).logits[0, 0]))
    return scores


def win_rate(policy_scores: list[float], reference_scores: list[float], policy_replies: list[str],
             reference_replies: list[str]) -> dict:
    """Wins, ties (identical replies or equal scores) and losses of the policy; win-rate with ties counted half."""
    wins = ties = losses = 0
    for ps, rs, pr, rr in zip(policy_scores, reference_scores, policy_replies, reference_replies):
        if pr == rr or ps == rs:
            ties += 1
        elif ps > rs:
            wins += 1
        else:
            losses += 1
    n = wins + ties + losses
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": rate,
            "ci95": [low, high], "interval": "Wilson score, 95%, ties counted as half a win",
            "mean_reward": {"policy": sum(policy_scores) / n if n else None,
                            "reference": sum(reference_scores) / n if n else None}}


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


def evaluate(models: RunModels, eval_dataset, settings: ReportSettings) -> dict:
    from tqdm.auto import tqdm

    tokenizer, device = models.tokenizer, models.device
    report: dict = {"settings": dataclasses.asdict(settings), "model_kind": models.kind,
                    "held_out_rows": len(eval_dataset)}

    # 1. Preference pairs: the first `pairs` held-out rows.
    n_pairs = len(eval_dataset) if settings.pairs is None else min(settings.pairs, len(eval_dataset))
    tokenized = [tokenize_pair(tokenizer, eval_dataset[i]) for i in range(n_pairs)]
    policy_logps = pair_logps(models.policy, tokenized, settings, device)
    with models.reference_model() as reference:
        reference_logps = pair_logps(reference, tokenized, settings, device)
    report["pairs"] = pair_metrics(policy_logps, reference_logps, settings.beta)

    # 2. Held-out prompts: sampled completions for the KL, greedy replies for the examples and the win-rate.
    rows = unique_prompts(eval_dataset, settings.prompts)
    prompt_ids = [generation_prompt_ids(tokenizer, row) for row in rows]
    pad = tokenizer.pad_token_id
    pol_kl, ref_kl, greedy_policy, greedy_reference = [], [], [], []
    for i, ids in enumerate(tqdm(prompt_ids, desc="generations", leave=False)):
        samples = generate(models.policy, tokenizer, ids, settings.max_new_tokens, sample=True, n=settings.samples,
                           seed=settings.seed + i)
        pol_kl += completion_token_logps(models.policy, ids, samples, pad)
        greedy_policy.append(generate(models.policy, tokenizer, ids, settings.max_new_tokens, sample=False)[0])
        with models.reference_model() as reference:
            ref_kl += completion_token_logps(reference, ids, samples, pad)
            greedy_reference.append(generate(reference, tokenizer, ids, settings.max_new_tokens, sample=False)[0])
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
    return report


def _pm(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def format_markdown(report: dict) -> str:
    s, pairs, kl = report["settings"], report["pairs"], report["kl"]
    lines = [
        f"# Evaluation report: {report.get('run_name', '')}".rstrip(),
        "",
        f"Run folder `{report.get('run_dir', '')}`, step {report.get('global_step', '?')}, {report['model_kind']} "
        f"policy; reference: {'the base model with the adapter disabled' if report['model_kind'] != 'full' else 'the initial model'}. "
        f"Written {report.get('written_at', '')} by {report.get('written_by', '')}. Values are mean ± standard error.",
        "",
        f"## Held-out preference pairs ({pairs['pairs']} of {report['held_out_rows']} rows)",
        "",
        f"Implicit reward r = beta · (log π − log π_ref), beta = {pairs['beta']:g}; log-probs are summed over the "
        "completion tokens, as in training (same template and truncation).",
        "",
        "| | policy | reference |",
        "|---|---|---|",
        f"| chosen log-prob | {_pm(pairs['logps']['policy']['chosen'], 2)} | {_pm(pairs['logps']['reference']['chosen'], 2)} |",
        f"| rejected log-prob | {_pm(pairs['logps']['policy']['rejected'], 2)} | {_pm(pairs['logps']['reference']['rejected'], 2)} |",
        "",
        "| metric | value |",
        "|---|---|",
        f"| reward accuracy (r_chosen > r_rejected) | {_pm(pairs['reward_accuracy'])} |",
        f"| reward margin (r_chosen − r_rejected) | {_pm(pairs['reward_margin'])} |",
        f"| chosen reward | {_pm(pairs['reward_chosen'])} |",
        f"| rejected reward | {_pm(pairs['reward_rejected'])} |",
        "",
        f"## KL(policy ‖ reference) on {kl['prompts']} held-out prompts",
        "",
        f"Monte-Carlo over {kl['completions']} completions sampled from the policy ({kl['samples_per_prompt']} per "
        f"prompt, temperature 1, no top-k / top-p, at most {s['max_new_tokens']} new tokens; {kl['tokens']} tokens, "
        f"{kl['mean_completion_tokens']:.1f} per completion). k1 sums log π − log π_ref over the sampled tokens; k3 "
        "sums ρ − 1 − log ρ with ρ = π_ref / π (never negative, lower variance). Both are unbiased for the KL "
        "between the policy's and the reference's distributions of such completions.",
        "",
        "| estimator | per completion | per token |",
        "|---|---|---|",
    ]
    for name in ("k1", "k3"):
        lines.append(f"| {name} | {_pm(kl[name]['per_completion'], 4)} | {_pm(kl[name]['per_token'], 4)} |")
    if "win_rate" in report:
        w = report["win_rate"]
        lines += [
            "",
            f"## Win-rate against the reference ({w['n']} held-out prompts)",
            "",
            f"Judge `{w['judge_model']}` scores the greedy replies of the policy and of the reference. Policy wins "
            f"{w['wins']}, ties {w['ties']}, losses {w['losses']}: win-rate {w['win_rate']:.3f} "
            f"(95% Wilson interval [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}], ties counted half). Mean reward: "
            f"policy {w['mean_reward']['policy']:.3f}, reference {w['mean_reward']['reference']:.3f}.",
        ]
    examples = report["generations"][: s["examples"]]
    if examples:
        lines += ["", f"## Generations (greedy, at most {s['max_new_tokens']} new tokens; all "
                  f"{len(report['generations'])} in {REPORT_JSON})"]
        for i, ex in enumerate(examples, 1):
            lines += ["", f"### Prompt {i}", "", "```text", ex["prompt"], "```", "",
                      "| policy | reference |", "|---|---|",
                      f"| {_cell(ex['policy'])} | {_cell(ex['reference'])} |"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def write_report(run_dir: Path, report: dict) -> tuple[Path, Path]:

    old = run_dir / REPORT_JSON
    if old.is_file():  # `make eval` again: say what is replaced
        try:
            when = json.loads(old.read_text()).get("written_at", "an earlier run")
        except ValueError:
            when = "an unreadable earlier file"
        print(f"{run_dir / REPORT_MD}: replacing the report written {when}", file=sys.stderr)
    write_json(old, report)
    md = run_dir / REPORT_MD
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(format_markdown(report))
    tmp.replace(md)
    return old, md


def report_for_run(run_dir, script_args, training: dict, model_args, eval_dataset, written_by: str) -> dict:
    """Load the saved policy and its reference, evaluate on `eval_dataset`, write the report; returns it."""

    run_dir = Path(run_dir)
    settings = ReportSettings.from_args(script_args, training)
    base_path = resolve_model_path(model_args, script_args.tiny_model)
    torch.manual_seed(settings.seed)
    models = load_run_models(run_dir, base_path, model_args, bool(training.get("trust_remote_code", False)))
    report = evaluate(models, eval_dataset, settings)
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


def release_training_memory(trainer) -> None:
    """Drop the trainer's models, optimizer and DeepSpeed engines so that the report's models fit on the device."""
    import gc

    trainer.accelerator.free_memory()
    for name in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler", "deepspeed"):
        if hasattr(trainer, name):
            setattr(trainer, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finish_run_outputs(output_dir, script_args, training: dict, model_args, eval_dataset) -> None:
    """The end of a run (run.py step 7, main process): evaluation report, model card, hub push when asked."""

    output_dir = Path(output_dir)
    if script_args.eval_report:
        report_for_run(output_dir, script_args, training, model_args, eval_dataset, written_by="the training run")
    print(f"model card -> {write_model_card(output_dir)}", flush=True)
    if training.get("push_to_hub"):
        repo_id = hub_repo_id(training, output_dir)
        url = push_folder(output_dir, repo_id, private=training.get("hub_private_repo"),
                          revision=training.get("hub_revision"), commit_message="dpo-recipes: run outputs")
        print(f"pushed {output_dir} -> {repo_id} ({url})", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# `make eval RUN=<dir>`: the report of a finished run, with the report settings overridable


def read_run_config(run_dir: Path):
    """(script_args, training dict, model_args) of the run that wrote `run_dir`."""
    from trl import ModelConfig


    path = run_dir / RUN_CONFIG
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UserError(f"{run_dir}: no {RUN_CONFIG}; not a run folder of this project")
    config = json.loads(path.read_text())

    def build(cls, values: dict):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in values.items() if k in names})

    return build(ScriptArguments, config["script"]), config["training"], build(ModelConfig, config["model"])


def _parser() -> argparse.ArgumentParser:

    fields = {f.name: f for f in dataclasses.fields(ScriptArguments)}

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(f"command line: {message}")

    parser = Parser(prog="python -m dpo_recipes.evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run's output_dir")
    for name in REPORT_FIELDS:
        kind = str if name == "judge_model" else int
        parser.add_argument(f"--{name}", type=kind, default=None, help=fields[name].metadata["help"])
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:

    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    script_args, training, model_args = read_run_config(run_dir)
    for name in REPORT_FIELDS:
        if getattr(args, name) is not None:
            setattr(script_args, name, getattr(args, name))
    validate_report_args(script_args)
    if not (run_dir / "adapter_config.json").is_file() and not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: no saved model or adapter yet (the run has not finished)")
    tokenizer = load_tokenizer(str(run_dir), model_args, bool(training.get("trust_remote_code")), None)
    data = load_preference_data(script_args, seed=int(training["seed"]), tokenizer=tokenizer,
                                max_length=training["max_length"], truncation_mode=training["truncation_mode"])
    report = report_for_run(run_dir, script_args, training, model_args, data.eval, written_by="make eval")

    write_model_card(run_dir)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

"""The statistics every benchmark and report shares.

The unit of replication is the training seed: a run's number (an accuracy, a KL, a margin) is one value per seed,
and its interval is a t interval over those values with n - 1 degrees of freedom (`t_interval`); two methods
trained on the same seeds are compared by the t interval of their per-seed differences (`paired_t_interval`).
Where an interval over pairs is wanted, the pairs are resampled inside resampled seeds (`hierarchical_bootstrap`),
so training randomness stays in it. Win-rates are clustered by prompt (`clustered_win_rate`): the prompt, not the
single generation, is the unit. `mean_se` and `wilson_interval` remain for one run's descriptive numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats as scipy_stats

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_se(values: torch.Tensor) -> dict:
    values = values.double()
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "se": se, "n": n}


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties count half)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Student t interval of the mean of independent units (one value per seed): mean, se, n, df, low, high.
    With one value the spread is unknown and se, low and high are NaN."""
    x = np.asarray(values, dtype=float).ravel()
    n = x.size
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "se": float("nan"), "n": 1, "df": 0, "low": float("nan"), "high": float("nan")}
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return {"mean": mean, "se": se, "n": n, "df": n - 1, "low": mean - half, "high": mean + half}


def paired_t_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """t interval of mean(a - b) where a[i] and b[i] come from the same seed."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size != b.size:
        raise ValueError(f"paired_t_interval: {a.size} values against {b.size}; pairs need one of each per seed")
    return t_interval(a - b, level)


def hierarchical_bootstrap(per_seed: Sequence[Sequence[float]], level: float = 0.95, n_boot: int = 2000,
                           rng_seed: int = 0) -> dict:
    """Percentile interval for the mean over seeds of per-seed means of pair-level values.

    per_seed[s] holds seed s's pair-level values (1/0 for correct, or per-pair differences such as DPO correct
    minus length-baseline correct). Each replicate draws the seeds with replacement, then the pairs within each
    drawn seed with replacement (afresh for every draw), and averages: both training randomness and the sample of
    pairs are in the interval. Returns mean (of the data as given), low, high, n_seeds, n_boot."""
    groups = [np.asarray(v, dtype=float).ravel() for v in per_seed]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("hierarchical_bootstrap needs at least one seed, each with at least one value")
    rng = np.random.default_rng(rng_seed)
    k = len(groups)
    drawn = rng.integers(0, k, (n_boot, k))  # replicate b, position j -> the seed drawn there
    total = np.zeros(n_boot)
    for j in range(k):
        # every seed's pair-resampled mean for this position, then the drawn seed's one per replicate
        means = np.stack([g[rng.integers(0, g.size, (n_boot, g.size))].mean(axis=1) for g in groups])
        total += means[drawn[:, j], np.arange(n_boot)]
    replicates = total / k
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return {"mean": float(np.mean([g.mean() for g in groups])), "low": float(low), "high": float(high),
            "n_seeds": k, "n_boot": n_boot}


def clustered_win_rate(outcomes: Sequence[float], prompts: Sequence, level: float = 0.95) -> dict:
    """Win-rate with prompts as the units: outcomes (1 win, 0.5 tie, 0 loss) are averaged within each prompt
    (over seeds and samples), and the interval is a t interval over the prompt means, clipped to [0, 1].
    Returns win_rate, se, low, high, n_prompts, n_outcomes."""
    outcomes = np.asarray(outcomes, dtype=float).ravel()
    prompts = list(prompts)
    if outcomes.size != len(prompts):
        raise ValueError(f"clustered_win_rate: {outcomes.size} outcomes against {len(prompts)} prompt labels")
    by_prompt: dict = {}
    for outcome, prompt in zip(outcomes, prompts):
        by_prompt.setdefault(prompt, []).append(outcome)
    interval = t_interval([np.mean(v) for v in by_prompt.values()], level)
    return {"win_rate": interval["mean"], "se": interval["se"], "low": max(0.0, interval["low"]),
            "high": min(1.0, interval["high"]), "n_prompts": len(by_prompt), "n_outcomes": int(outcomes.size)}


def group_means(values: Sequence[float], groups: Sequence) -> dict:
    """{group: mean of its values}, for every group label present."""
    values = np.asarray(values, dtype=float).ravel()
    groups = np.asarray(groups)
    if values.size != groups.size:
        raise ValueError(f"group_means: {values.size} values against {groups.size} group labels")
    return {g.item(): float(values[groups == g].mean()) for g in np.unique(groups)}


def balanced_mean(values: Sequence[float], groups: Sequence) -> float:
    """Mean of the group means: each group weighs the same however many values it has (length-balanced
    accuracy is this with groups 'chosen shorter' and 'chosen longer')."""
    return float(np.mean(list(group_means(values, groups).values())))

"""Preference losses from the DPO literature, as pure functions of per-pair log-ratios.

A log-ratio is log pi_theta(y|x) - log pi_ref(y|x), summed over the completion's tokens; h is the chosen log-ratio
minus the rejected one, b is beta, e is label_smoothing, s is the logistic sigmoid. Every function returns the per-pair
loss (no reduction), differentiable in the log-ratios.

    loss_type        paper                                         loss per pair
    sigmoid          DPO, Rafailov et al. 2023, eq. 7              -log s(b h)
    ipo              IPO, Azar et al. 2023, eq. 17 (b is tau)      (h' - 1/(2b))^2, h' length-normalised by default
    cdpo             conservative DPO, Mitchell 2023               -(1-e) log s(b h) - e log s(-b h)
    rdpo (robust)    robust DPO, Chowdhury et al. 2024             [-(1-e) log s(b h) + e log s(-b h)] / (1-2e)
    madpo            margin-adaptive DPO, Rho 2025 (2510.05342)    w(m) * -log s(b h), m a reward-model margin

docs/losses.md has the table with knobs, defaults and when to use each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# `robust` is TRL's name for rDPO; both names select the same function.
LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "rdpo", "robust", "madpo")
# Losses that read `label_smoothing` (the assumed label-flip rate); the others ignore it.
USES_LABEL_SMOOTHING = ("cdpo", "rdpo", "robust")
# Ours that TRL implements with the same formula, under TRL's name: without a project-only feature TRL computes them.
TRL_NAMES = {"sigmoid": "sigmoid", "ipo": "ipo", "rdpo": "robust", "robust": "robust"}

# The knobs of madpo, with the paper's defaults (c_min None means 1 / c_max).
MADPO_DEFAULTS = {"madpo_c_max": 2.0, "madpo_c_min": None, "madpo_lambda": 1.0, "madpo_tau": math.log(999.0)}


def madpo_knobs(madpo_c_max: float = 2.0, madpo_c_min: float | None = None, madpo_lambda: float = 1.0,
                madpo_tau: float = math.log(999.0)) -> tuple[float, float, float, float]:
    """(c_max, c_min, lambda, tau), checked. The scale c must run from c_max > 1 (small |m|) down to 0 < c_min < 1
    (large |m|) through c = 1 at |m| = tau, which is what makes w continuous at m = -tau."""
    c_max = float(madpo_c_max)
    c_min = 1.0 / c_max if madpo_c_min is None else float(madpo_c_min)
    lam, tau = float(madpo_lambda), float(madpo_tau)
    if not (math.isfinite(c_max) and c_max > 1.0):
        raise ValueError(f"madpo_c_max must be a finite number > 1, got {madpo_c_max}")
    if not 0.0 < c_min < 1.0:
        raise ValueError(f"madpo_c_min must be in (0, 1), got {c_min}")
    if not (math.isfinite(lam) and lam > 0.0):
        raise ValueError(f"madpo_lambda must be a finite number > 0, got {madpo_lambda}")
    if not (math.isfinite(tau) and tau > 0.0):
        raise ValueError(f"madpo_tau must be a finite number > 0, got {madpo_tau}")
    return c_max, c_min, lam, tau


def madpo_weights(reward_margins: torch.Tensor, madpo_c_max: float = 2.0, madpo_c_min: float | None = None,
                  madpo_lambda: float = 1.0, madpo_tau: float = math.log(999.0)) -> torch.Tensor:
    """MADPO's per-pair weight w(m) for reward-model margins m = r(x, y_w) - r(x, y_l).

        c(|m|) = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * exp(lambda * (|m| - tau)))
        w(m)   = s(c(|m|) m) / s(m)   for m > -tau,   1 for m <= -tau

    The margins are constants of the data: they are detached, so no gradient flows into them.
    """
    c_max, c_min, lam, tau = madpo_knobs(madpo_c_max, madpo_c_min, madpo_lambda, madpo_tau)
    m = reward_margins.detach()
    if m.dtype not in (torch.float32, torch.float64):
        m = m.float()  # half precision would round w visibly; integers cannot go through sigmoid
    c = c_min + (c_max - c_min) / (1.0 + (c_max - 1.0) / (1.0 - c_min) * torch.exp(lam * (m.abs() - tau)))
    w = torch.exp(F.logsigmoid(c * m) - F.logsigmoid(m))  # the ratio in log space: no underflow for very negative m
    return torch.where(m > -tau, w, torch.ones_like(w))


def check_knobs(loss_type: str, *, beta: float, label_smoothing: float = 0.0, **params) -> None:
    """Raise ValueError when `loss_type` or a knob it reads is out of range (config.validate turns it into one line)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; ours are {', '.join(LOSS_TYPES)}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if loss_type in USES_LABEL_SMOOTHING and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"{loss_type} needs label_smoothing in [0, 0.5), got {label_smoothing}")
    if loss_type == "madpo":
        madpo_knobs(**{k: params.get(k, v) for k, v in MADPO_DEFAULTS.items()})


def project_only_features(args) -> list[str]:
    """What in a DPOConfig only this project's loss path implements; empty: TRL's own loss path gives the answer."""
    features = [t for t in args.loss_type if t in LOSS_TYPES and t not in TRL_NAMES]
    if "ipo" in args.loss_type and not getattr(args, "ipo_normalize", True):
        features.append("ipo_normalize false")
    features += [k for k in ("padding_free", "prefix_sharing") if getattr(args, k, False)]
    return features


def check_loss_config(args) -> bool:
    """Whether the loss of a DPOConfig needs this project's path (True) or is TRL's own (False). Raise ValueError for
    what neither path supports, or what would silently do nothing; the CLI (config.validate) and the trainer both
    call this, so they accept and compute the same."""
    features = project_only_features(args)
    trl_only = [t for t in args.loss_type if t not in LOSS_TYPES]
    if features and trl_only:
        raise ValueError(f"loss_type {trl_only} is TRL's and cannot be combined with {', '.join(features)}, which "
                         f"only this project's loss path implements")
    options = [k for k, off in (("ld_alpha", None), ("f_divergence_type", "reverse_kl"), ("use_weighting", False))
               if getattr(args, k) != off]
    if features and options:
        raise ValueError(f"{', '.join(options)} {'is' if len(options) == 1 else 'are'} applied by TRL's loss only "
                         f"and cannot be combined with {', '.join(features)}")
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {args.beta}")
    if not 0.0 <= args.label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {args.label_smoothing}")
    ours = [t for t in args.loss_type if t in LOSS_TYPES]
    if args.label_smoothing > 0 and ours and not trl_only and not any(t in USES_LABEL_SMOOTHING for t in ours):
        raise ValueError(f"label_smoothing={args.label_smoothing} has no effect with loss_type {ours}; use cdpo or "
                         "rdpo, or set label_smoothing 0")
    for loss_type in ours:  # the variants' own knobs (madpo_*)
        check_knobs(loss_type, beta=args.beta, label_smoothing=args.label_smoothing,
                    **{k: getattr(args, k, v) for k, v in MADPO_DEFAULTS.items()})
    return bool(features)


def preference_loss(
    loss_type: str,
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    reward_margins: torch.Tensor | None = None,
    **params,
) -> torch.Tensor:
    """Per-pair loss of `loss_type` (one of LOSS_TYPES). Knobs: ipo_normalize (default True), madpo_* (see
    MADPO_DEFAULTS). Lengths are completion token counts; reward_margins are r(x, y_w) - r(x, y_l)."""
    check_knobs(loss_type, beta=beta, label_smoothing=label_smoothing, **params)
    h = chosen_logratios - rejected_logratios
    eps = float(label_smoothing)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h)
    if loss_type == "ipo":
        if params.get("ipo_normalize", True):
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("ipo with ipo_normalize=True needs chosen_lengths and rejected_lengths")
            # Mean log-ratio per completion token, as TRL computes it (an empty completion counts as one token).
            h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "cdpo":
        return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if loss_type in ("rdpo", "robust"):
        return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)
    # madpo
    if reward_margins is None:
        raise ValueError("madpo needs reward_margins (a margin column in the data, score columns or a reward model)")
    knobs = {k: params.get(k, v) for k, v in MADPO_DEFAULTS.items()}
    w = madpo_weights(reward_margins, **knobs).to(device=h.device, dtype=h.dtype)
    return w * -F.logsigmoid(beta * h)

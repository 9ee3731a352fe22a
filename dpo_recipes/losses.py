"""Preference losses from the DPO literature, as pure functions of per-pair log-ratios.

A log-ratio is log pi_theta(y|x) - log pi_ref(y|x), summed over the completion's tokens; h is the chosen log-ratio
minus the rejected one. Every function returns the per-pair loss (no reduction), differentiable in the log-ratios.

    loss_type  paper                                         loss per pair
    sigmoid    DPO, Rafailov et al. 2023, eq. 7              -log s(b h)
    ipo        IPO, Azar et al. 2023, eq. 17 (b is tau)      (h' - 1/(2b))^2, h' length-normalised by default (as TRL)
    cdpo       conservative DPO, Mitchell 2023               -(1-e) log s(b h) - e log s(-b h)
    rdpo       robust DPO, Chowdhury et al. 2024             [-(1-e) log s(b h) + e log s(-b h)] / (1-2e)
    madpo      margin-adaptive DPO, Rho 2025 (2510.05342)    w(m) * -log s(b h), m a reward-model margin
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# `robust` is TRL's name for rDPO; both names select the same function.
LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "rdpo", "robust", "madpo")
# Losses that read `label_smoothing` (the assumed label-flip rate); the others ignore it.
USES_LABEL_SMOOTHING = ("cdpo", "rdpo", "robust")

MADPO_DEFAULTS = {"madpo_c_max": 2.0, "madpo_c_min": None, "madpo_lambda": 1.0, "madpo_tau": math.log(999.0)}


def _check_eps(loss_type: str, eps: float) -> None:
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"{loss_type} needs label_smoothing in [0, 0.5), got {eps}")


def madpo_weights(reward_margins: torch.Tensor, madpo_c_max: float = 2.0, madpo_c_min: float | None = None,
                  madpo_lambda: float = 1.0, madpo_tau: float = math.log(999.0)) -> torch.Tensor:
    """MADPO's per-pair weight w(m) for reward-model margins m (constants: no gradient flows through them).

    c(|m|) moves from c_max (small |m|) to c_min (large |m|); w(m) = s(c m) / s(m) above -tau and 1 at or below it.
    With the defaults c(tau) = 1, so w is continuous at m = -tau, w(0) = 1 and w -> 1 as m grows.
    """
    c_max = float(madpo_c_max)
    c_min = 1.0 / c_max if madpo_c_min is None else float(madpo_c_min)
    if not c_min < 1.0 < c_max:
        raise ValueError(f"madpo needs madpo_c_min < 1 < madpo_c_max, got c_min={c_min}, c_max={c_max}")
    m = reward_margins.detach().to(torch.float64)
    steepness = (c_max - 1.0) / (1.0 - c_min)
    c = c_min + (c_max - c_min) / (1.0 + steepness * torch.exp(madpo_lambda * (m.abs() - madpo_tau)))
    w = torch.sigmoid(c * m) / torch.sigmoid(m)
    return torch.where(m > -madpo_tau, w, torch.ones_like(w))


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
    h = chosen_logratios - rejected_logratios
    eps = float(label_smoothing)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h)
    if loss_type == "ipo":
        if params.get("ipo_normalize", True):
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("ipo with ipo_normalize=True needs chosen_lengths and rejected_lengths")
            h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "cdpo":
        _check_eps(loss_type, eps)
        return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if loss_type in ("rdpo", "robust"):
        _check_eps(loss_type, eps)
        return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)
    if loss_type == "madpo":
        if reward_margins is None:
            raise ValueError("madpo needs reward_margins (a margin column in the data or a reward model to score it)")
        knobs = {k: params.get(k, v) for k, v in MADPO_DEFAULTS.items()}
        w = madpo_weights(reward_margins, **knobs).to(h.dtype).to(h.device)
        return w * -F.logsigmoid(beta * h)
    raise ValueError(f"unknown loss_type {loss_type!r}; ours are {', '.join(LOSS_TYPES)}")

"""Preference losses from the DPO literature, as components with one small contract.

A loss is a function from a batch of pairs (`Pairs`: the policy's log-probs, their log-ratios to the reference, the
completion lengths and, for a loss that declares `needs_margins`, reward margins) and its knobs to the per-pair loss
(no reduction), registered by name with `register_loss`; a recipe's config selects it with `loss_type: <name>`. A
log-prob is log pi_theta(y|x) summed over the completion's tokens, a log-ratio is log pi_theta(y|x) - log pi_ref(y|x);
h is the chosen log-ratio minus the rejected one, b is beta, e is label_smoothing, s is the logistic sigmoid.

    loss_type        paper                                         loss per pair
    sigmoid          DPO, Rafailov et al. 2023, eq. 7              -log s(b h)
    ipo              IPO, Azar et al. 2023, eq. 17 (b is tau)      (h' - 1/(2b))^2, h' length-normalised by default
    cdpo             conservative DPO, Mitchell 2023               -(1-e) log s(b h) - e log s(-b h)
    rdpo (robust)    robust DPO, Chowdhury et al. 2024             [-(1-e) log s(b h) + e log s(-b h)] / (1-2e)
    madpo            margin-adaptive DPO, Rho 2025 (2510.05342)    w(m) * -log s(b h), m a reward-model margin

A recipe folder may hold its own `losses.py` that registers more (docs/losses.md has a complete example); it is
loaded with the recipe's config. docs/losses.md has the table with knobs, defaults and when to use each.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Pairs:
    """What a loss sees of a batch, one value per pair: the policy's summed completion log-probs (a reference-free
    loss reads these), their log-ratios to the reference, the completion token counts, and the reward margins when the
    loss declares `needs_margins`."""

    chosen_logratios: torch.Tensor
    rejected_logratios: torch.Tensor
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    reward_margins: torch.Tensor | None = None
    chosen_logps: torch.Tensor | None = None
    rejected_logps: torch.Tensor | None = None

    @property
    def h(self) -> torch.Tensor:
        return self.chosen_logratios - self.rejected_logratios


@dataclass(frozen=True)
class Loss:
    """A registered loss. `fn(pairs, *, beta, **knobs)` returns the per-pair loss; `knobs` maps each knob to its
    default (its type is the default's); `check(**knobs)` raises ValueError for a bad value; `needs_margins`: the data
    must carry a reward margin per pair (margins.py adds it); `metrics(pairs, **knobs)` -> {name: per-pair values},
    logged as their batch mean."""

    name: str
    fn: Callable[..., torch.Tensor]
    knobs: dict[str, Any] = field(default_factory=dict)
    check: Callable[..., None] | None = None
    needs_margins: bool = False
    metrics: Callable[..., dict[str, torch.Tensor]] | None = None


LOSSES: dict[str, Loss] = {}
BUILT_IN: tuple[str, ...] = ()  # filled below, once the five are registered


def register_loss(name: str, *, knobs: dict[str, Any] | None = None, check: Callable[..., None] | None = None,
                  needs_margins: bool = False, metrics: Callable[..., dict[str, torch.Tensor]] | None = None):
    """Decorator: register `fn(pairs, *, beta, **knobs) -> per-pair loss` as `loss_type: name`. A knob is a config
    key (set in the recipe's YAML or as --key on the command line, checked like every other key); `label_smoothing`
    is TRL's key and may be one of them."""

    def decorator(fn):
        if name in BUILT_IN and name in LOSSES:
            raise ValueError(f"loss_type {name!r} is built in; register yours under another name")
        LOSSES[name] = Loss(name, fn, dict(knobs or {}), check, needs_margins, metrics)
        return fn

    return decorator


def load_losses_file(path: str | Path) -> None:
    """Run a recipe's losses.py (if there is one), so that the losses it registers can be selected by name."""
    path = Path(path).resolve()
    if path in _LOADED or not path.is_file():
        return
    spec = importlib.util.spec_from_file_location(f"recipe_losses.{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _LOADED.add(path)


_LOADED: set[Path] = set()


def knob_values(args) -> dict:
    """Every registered loss knob's value for a run's arguments: fields of the arguments (label_smoothing,
    ipo_normalize, madpo_*), a recipe's own knobs from `args.loss_knobs`, the registered default otherwise."""
    values = {k: v for loss in LOSSES.values() for k, v in loss.knobs.items()}
    values.update({k: getattr(args, k) for k in values if hasattr(args, k)})
    values.update(getattr(args, "loss_knobs", None) or {})
    return values


def needs_margins(loss_types: list[str]) -> bool:
    """Whether any of these registered losses needs a reward margin per pair (unknown names: no)."""
    return any(LOSSES[t].needs_margins for t in loss_types if t in LOSSES)


def uses_label_smoothing(loss_type: str) -> bool:
    return "label_smoothing" in LOSSES[loss_type].knobs


def check_knobs(loss_type: str, *, beta: float, **knobs) -> None:
    """Raise ValueError when `loss_type` is unknown, beta is out of range, or a knob it reads is unknown to it or out
    of range (config.validate turns this into one line). Knobs it does not read are ignored here."""
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; registered: {', '.join(LOSSES)}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    loss = LOSSES[loss_type]
    if loss.check is not None:
        try:
            loss.check(**{k: knobs.get(k, default) for k, default in loss.knobs.items()})
        except ValueError as err:  # name the loss unless the message does (madpo_tau ...)
            raise ValueError(str(err) if str(err).startswith(loss_type) else f"{loss_type}: {err}") from None


def preference_loss(
    loss_type: str,
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    reward_margins: torch.Tensor | None = None,
    chosen_logps: torch.Tensor | None = None,
    rejected_logps: torch.Tensor | None = None,
    **knobs,
) -> torch.Tensor:
    """Per-pair loss of the registered `loss_type`. Knobs it does not name take their defaults (label_smoothing 0,
    ipo_normalize True, madpo_* as MADPO_DEFAULTS); knobs of other losses are ignored."""
    pairs = Pairs(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths, reward_margins,
                  chosen_logps, rejected_logps)
    return pair_loss(loss_type, pairs, beta=beta, **knobs)


def pair_loss(loss_type: str, pairs: Pairs, *, beta: float, **knobs) -> torch.Tensor:
    """`preference_loss` for a batch already gathered into `Pairs` (the trainer's way)."""
    check_knobs(loss_type, beta=beta, **knobs)
    loss = LOSSES[loss_type]
    if loss.needs_margins and pairs.reward_margins is None:
        raise ValueError(f"{loss_type} needs reward_margins (a margin column in the data, score columns or a reward "
                         "model)")
    return loss.fn(pairs, beta=beta, **own_knobs(loss_type, knobs))


def own_knobs(loss_type: str, knobs: dict) -> dict:
    """The knobs `loss_type` reads, from `knobs` or its defaults."""
    return {k: knobs.get(k, default) for k, default in LOSSES[loss_type].knobs.items()}


# ---------------------------------------------------------------------------------------------------------------
# The five built-in losses.


def _check_label_smoothing(label_smoothing: float, **_) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")


@register_loss("sigmoid")
def sigmoid(pairs: Pairs, *, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * pairs.h)


@register_loss("ipo", knobs={"ipo_normalize": True})
def ipo(pairs: Pairs, *, beta: float, ipo_normalize: bool) -> torch.Tensor:
    h = pairs.h
    if ipo_normalize:
        if pairs.chosen_lengths is None or pairs.rejected_lengths is None:
            raise ValueError("ipo with ipo_normalize=True needs chosen_lengths and rejected_lengths")
        # Mean log-ratio per completion token, as TRL computes it (an empty completion counts as one token).
        h = (pairs.chosen_logratios / pairs.chosen_lengths.clamp(min=1)
             - pairs.rejected_logratios / pairs.rejected_lengths.clamp(min=1))
    return (h - 1.0 / (2.0 * beta)) ** 2


@register_loss("cdpo", knobs={"label_smoothing": 0.0}, check=_check_label_smoothing)
def cdpo(pairs: Pairs, *, beta: float, label_smoothing: float) -> torch.Tensor:
    eps = float(label_smoothing)
    return -(1.0 - eps) * F.logsigmoid(beta * pairs.h) - eps * F.logsigmoid(-beta * pairs.h)


def _rdpo(pairs: Pairs, *, beta: float, label_smoothing: float) -> torch.Tensor:
    eps = float(label_smoothing)
    return (-(1.0 - eps) * F.logsigmoid(beta * pairs.h) + eps * F.logsigmoid(-beta * pairs.h)) / (1.0 - 2.0 * eps)


# `robust` is TRL's name for rDPO; both names select the same function.
register_loss("rdpo", knobs={"label_smoothing": 0.0}, check=_check_label_smoothing)(_rdpo)
register_loss("robust", knobs={"label_smoothing": 0.0}, check=_check_label_smoothing)(_rdpo)

# The knobs of madpo, with the paper's defaults (c_min None means 1 / c_max).
MADPO_DEFAULTS = {"madpo_c_max": 2.0, "madpo_c_min": None, "madpo_lambda": 1.0, "madpo_tau": math.log(999.0)}


def madpo_knobs(**knobs) -> tuple[float, float, float, float]:
    """(c_max, c_min, lambda, tau) from madpo_* knobs (MADPO_DEFAULTS for those not given), checked. The scale c must
    run from c_max > 1 (small |m|) down to 0 < c_min < 1 (large |m|) through c = 1 at |m| = tau, which is what makes w
    continuous at m = -tau."""
    unknown = set(knobs) - set(MADPO_DEFAULTS)
    if unknown:
        raise TypeError(f"madpo has no knob {', '.join(sorted(unknown))}")
    knobs = {**MADPO_DEFAULTS, **knobs}
    madpo_c_max, madpo_c_min, madpo_lambda, madpo_tau = (knobs[k] for k in MADPO_DEFAULTS)
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


def madpo_weights(reward_margins: torch.Tensor, **knobs) -> torch.Tensor:
    """MADPO's per-pair weight w(m) for reward-model margins m = r(x, y_w) - r(x, y_l).

        c(|m|) = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * exp(lambda * (|m| - tau)))
        w(m)   = s(c(|m|) m) / s(m)   for m > -tau,   1 for m <= -tau

    The margins are constants of the data: they are detached, so no gradient flows into them.
    """
    c_max, c_min, lam, tau = madpo_knobs(**knobs)
    m = reward_margins.detach()
    if m.dtype not in (torch.float32, torch.float64):
        m = m.float()  # half precision would round w visibly; integers cannot go through sigmoid
    c = c_min + (c_max - c_min) / (1.0 + (c_max - 1.0) / (1.0 - c_min) * torch.exp(lam * (m.abs() - tau)))
    w = torch.exp(F.logsigmoid(c * m) - F.logsigmoid(m))  # the ratio in log space: no underflow for very negative m
    return torch.where(m > -tau, w, torch.ones_like(w))


def _madpo_metrics(pairs: Pairs, **knobs) -> dict[str, torch.Tensor]:
    return {"madpo/weight_mean": madpo_weights(pairs.reward_margins, **knobs)}


@register_loss("madpo", knobs=MADPO_DEFAULTS, check=madpo_knobs, needs_margins=True, metrics=_madpo_metrics)
def madpo(pairs: Pairs, *, beta: float, **knobs) -> torch.Tensor:
    h = pairs.h
    w = madpo_weights(pairs.reward_margins, **knobs).to(device=h.device, dtype=h.dtype)
    return w * -F.logsigmoid(beta * h)


# The built-in names (a recipe's losses.py adds to LOSSES, not to this tuple).
LOSS_TYPES = BUILT_IN = tuple(LOSSES)

# Built-in losses TRL implements with the same formula, under TRL's name: TRL computes them unless a project-only
# feature needs this project's path.
TRL_NAMES = {"sigmoid": "sigmoid", "ipo": "ipo", "rdpo": "robust", "robust": "robust"}


def project_only_features(args) -> list[str]:
    """What in a DPOConfig only this project's loss path implements; empty: TRL's own loss path gives the answer."""
    features = [t for t in args.loss_type if t in LOSSES and t not in TRL_NAMES]
    if "ipo" in args.loss_type and not getattr(args, "ipo_normalize", True):
        features.append("ipo_normalize false")
    features += [k for k in ("padding_free", "prefix_sharing") if getattr(args, k, False)]
    return features


def check_loss_config(args) -> bool:
    """Whether the loss of a DPOConfig needs this project's path (True) or is TRL's own (False). Raise ValueError for
    what neither path supports, or what would silently do nothing. PreferenceConfig calls it when it is made, so a
    config from the command line and one made in Python are refused alike, with the same line."""
    if getattr(args, "prefix_sharing", False) and not args.padding_free:
        raise ValueError("prefix_sharing needs padding_free: true (pairs are packed into rows)")
    features = project_only_features(args)
    trl_only = [t for t in args.loss_type if t not in LOSSES]
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
    ours = [t for t in args.loss_type if t in LOSSES]
    if args.label_smoothing > 0 and ours and not trl_only and not any(uses_label_smoothing(t) for t in ours):
        raise ValueError(f"label_smoothing={args.label_smoothing} has no effect with loss_type {ours}; use cdpo or "
                         "rdpo, or set label_smoothing 0")
    for loss_type in ours:  # each loss's own knobs, range-checked by the loss itself
        check_knobs(loss_type, beta=args.beta, **knob_values(args))
    return bool(features)

"""The loss registry (dpo_recipes/train/losses.py) against numbers worked out by hand from each paper's formula, and the
properties the papers state. Everything runs in float64 so the hand values can be checked to 1e-12.

A recipe's own loss: one losses.py in the recipe folder registers it, its config selects it and sets its knobs,
which are checked like every other key. `make train` training with it: tests/e2e/test_recipe_loss.py."""

import math
import shutil
import uuid

import pytest
import torch

from tests.helpers import REPO
from dpo_recipes.train.config import parse_config
from dpo_recipes.errors import UserError
from dpo_recipes.train.losses import (BUILT_IN, LOSS_TYPES, LOSSES, MADPO_DEFAULTS, check_knobs, load_losses_file,
                                madpo_weights, preference_loss, register_loss)

LN2 = 0.6931471805599453
TAU = 6.906754778648554  # ln 999, the paper's default threshold


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def loss(loss_type, chosen, rejected, **kwargs):
    """Per-pair loss for scalar log-ratios, as a float."""
    return preference_loss(loss_type, t(chosen), t(rejected), **kwargs).item()


def grad_in_h(loss_type, h, **kwargs):
    """d loss / d h at h (rejected log-ratio 0, so h is the chosen log-ratio)."""
    chosen = t(h).requires_grad_()
    preference_loss(loss_type, chosen, t(0.0), **kwargs).sum().backward()
    return chosen.grad.item()


def test_registry_lists_every_variant():
    assert set(LOSS_TYPES) == {"sigmoid", "ipo", "cdpo", "rdpo", "robust", "madpo"}
    assert set(MADPO_DEFAULTS) == {"madpo_c_max", "madpo_c_min", "madpo_lambda", "madpo_tau"}


# --- hand-computed values ---------------------------------------------------------------------------------------
# softplus(x) = log(1 + e^x) = -log s(-x); the values below are written out from that.


@pytest.mark.parametrize(
    "chosen, rejected, beta, expected",
    [
        (1.5, -0.5, 0.1, 0.5981388693815918),  # h = 2: log(1 + e^-0.2)
        (-2.0, 1.0, 0.5, 1.7014132779827524),  # h = -3: log(1 + e^1.5)
        (0.25, -0.25, 2.0, 0.31326168751822286),  # h = 0.5: log(1 + e^-1)
        (3.0, 3.0, 0.1, LN2),  # h = 0: log 2
    ],
)
def test_sigmoid_by_hand(chosen, rejected, beta, expected):
    assert loss("sigmoid", chosen, rejected, beta=beta) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "chosen, rejected, lc, lr, beta, expected",
    [
        # h' = 1.5/2 - 0.25/5 = 0.7; 1/(2*0.2) = 2.5; (0.7 - 2.5)^2 = 3.24
        (1.5, 0.25, 2, 5, 0.2, 3.24),
        # h' = -4/4 - (-10/5) = 1 = 1/(2*0.5): at the target, loss 0
        (-4.0, -10.0, 4, 5, 0.5, 0.0),
        # h' = 3/3 - (-2/2) = 2; 1/(2*0.1) = 5; (2 - 5)^2 = 9
        (3.0, -2.0, 3, 2, 0.1, 9.0),
        # an empty completion counts as one token (TRL's clamp): h' = 1/1 - 0/1 = 1; (1 - 5)^2 = 16
        (1.0, 0.0, 0, 0, 0.1, 16.0),
    ],
)
def test_ipo_length_normalised_by_hand(chosen, rejected, lc, lr, beta, expected):
    got = loss("ipo", chosen, rejected, beta=beta, chosen_lengths=torch.tensor([lc]), rejected_lengths=torch.tensor([lr]))
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "chosen, rejected, beta, expected",
    [
        (1.5, 0.25, 0.2, 1.5625),  # h = 1.25; (1.25 - 2.5)^2
        (3.0, -2.0, 0.1, 0.0),  # h = 5 = 1/(2*0.1)
        (3.0, -2.0, 0.25, 9.0),  # (5 - 2)^2
    ],
)
def test_ipo_summed_form_by_hand(chosen, rejected, beta, expected):
    # ipo_normalize=False is the paper's eq. 17 on summed log-ratios; lengths, if given, are ignored
    got = loss("ipo", chosen, rejected, beta=beta, ipo_normalize=False,
               chosen_lengths=torch.tensor([7]), rejected_lengths=torch.tensor([3]))
    assert got == pytest.approx(expected, abs=1e-12)


# cDPO: -(1-e) log s(x) - e log s(-x) = (1-e) softplus(-x) + e softplus(x) = softplus(-x) + e x, with x = b h.
@pytest.mark.parametrize(
    "h, beta, eps, expected",
    [
        (10.0, 0.1, 0.1, 0.4132616875182229),  # x = 1: 0.31326168751822286 + 0.1
        (-1.2, 0.5, 0.25, 0.8874879504858856),  # x = -0.6: log(1 + e^0.6) - 0.15 = 1.0374879504858856 - 0.15
        (20.0, 0.1, 0.0, 0.1269280110429725),  # x = 2, e = 0: plain DPO, log(1 + e^-2)
    ],
)
def test_cdpo_by_hand(h, beta, eps, expected):
    assert loss("cdpo", h, 0.0, beta=beta, label_smoothing=eps) == pytest.approx(expected, abs=1e-12)


# rDPO: [(1-e) softplus(-x) - e softplus(x)] / (1-2e) = softplus(-x) - e x / (1-2e), with x = b h.
@pytest.mark.parametrize(
    "h, beta, eps, expected",
    [
        (10.0, 0.1, 0.1, 0.1882616875182229),  # x = 1: 0.31326168751822286 - 0.1/0.8
        (-1.2, 0.5, 0.25, 1.3374879504858856),  # x = -0.6: 1.0374879504858856 + 0.15/0.5
        (20.0, 0.1, 0.0, 0.1269280110429725),  # e = 0: plain DPO
    ],
)
def test_rdpo_by_hand(h, beta, eps, expected):
    assert loss("rdpo", h, 0.0, beta=beta, label_smoothing=eps) == pytest.approx(expected, abs=1e-12)
    assert loss("robust", h, 0.0, beta=beta, label_smoothing=eps) == pytest.approx(expected, abs=1e-12)


# MADPO with the defaults c_max = 2, c_min = 1/2, lambda = 1, tau = ln 999:
#   c(|m|) = 0.5 + 1.5 / (1 + 2 exp(|m| - ln 999)),  w(m) = s(c m) / s(m) for m > -ln 999, else 1.
#   m = 1:   c = 0.5 + 1.5 / (1 + 2e/999) = 1.9918811742020948; w = s(1.99188...) / s(1) = 0.8799... / 0.7311...
#   m = 10:  c = 0.5332616149214227 (past tau c falls towards c_min); w = s(5.3326...) / s(10)
MADPO_HAND = [
    (0.0, 1.0),
    (1.0, 1.2036545910701018),
    (-1.0, 0.4464094258118849),
    (5.0, 1.006483282231487),
    (-5.0, 0.037795602671390566),
    (10.0, 0.9952369981974063),
    (-7.0, 1.0),  # below -tau
]


@pytest.mark.parametrize("m, w", MADPO_HAND)
def test_madpo_weights_by_hand(m, w):
    assert madpo_weights(t(m)).item() == pytest.approx(w, abs=1e-12)


def test_madpo_weights_with_other_knobs_by_hand():
    # c_max 3, c_min 0.2, lambda 2, tau 1.5; steepness (3-1)/(1-0.2) = 2.5
    # m = 2:  c = 0.2 + 2.8 / (1 + 2.5 e^(2*0.5)) = 0.5591721536450951; w = s(1.11834...) / s(2)
    # m = -1: c = 0.2 + 2.8 / (1 + 2.5 e^(2*-0.5)) = 1.6585622950021663; w = s(-1.65856...) / s(-1)
    # m = -2: below -tau, w = 1
    knobs = dict(madpo_c_max=3.0, madpo_c_min=0.2, madpo_lambda=2.0, madpo_tau=1.5)
    got = madpo_weights(t(2.0, -1.0, -2.0), **knobs)
    assert got.tolist() == pytest.approx([0.8556811689798415, 0.5947580902063273, 1.0], abs=1e-12)


def test_madpo_loss_is_weight_times_dpo_by_hand():
    # h = 2, beta 0.1: -log s(0.2) = 0.5981388693815918; m = 1: w = 1.2036545910701018
    got = preference_loss("madpo", t(2.0, 2.0), t(0.0, 0.0), beta=0.1, reward_margins=t(1.0, -7.0))
    assert got.tolist() == pytest.approx([1.2036545910701018 * 0.5981388693815918, 0.5981388693815918], abs=1e-12)


# --- properties -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps, beta", [(0.1, 0.1), (0.25, 0.5), (0.4, 2.0)])
def test_cdpo_gradient_vanishes_at_its_target(eps, beta):
    # cDPO's minimum is where s(b h) = 1 - e, i.e. b h = log((1-e)/e): it stops pushing h up past that point
    target = math.log((1 - eps) / eps) / beta
    assert grad_in_h("cdpo", target, beta=beta, label_smoothing=eps) == pytest.approx(0.0, abs=1e-12)
    assert grad_in_h("cdpo", target - 0.5, beta=beta, label_smoothing=eps) < 0  # below: loss falls as h grows
    assert grad_in_h("cdpo", target + 0.5, beta=beta, label_smoothing=eps) > 0  # above: loss rises
    # analytic gradient: b (s(b h) - (1 - e)); at h = 0 that is b (e - 1/2)
    assert grad_in_h("cdpo", 0.0, beta=beta, label_smoothing=eps) == pytest.approx(beta * (eps - 0.5), abs=1e-12)


def test_rdpo_gradient_by_hand():
    # d/dh of [(1-e) softplus(-x) - e softplus(x)]/(1-2e) with x = b h is b [-(1-e) s(-x) - e s(x)] / (1-2e);
    # at x = 0: -b / (2 (1-2e)); with b = 0.5: -0.25, -0.3125, -0.625 for e = 0, 0.1, 0.3
    for eps, expected in ((0.0, -0.25), (0.1, -0.3125), (0.3, -0.625)):
        assert grad_in_h("rdpo", 0.0, beta=0.5, label_smoothing=eps) == pytest.approx(expected, abs=1e-12)
    # unlike cDPO, rDPO keeps pushing: its gradient never vanishes (x = 3: 0.5 [-0.9 s(-3) - 0.1 s(3)] / 0.8)
    assert grad_in_h("rdpo", 6.0, beta=0.5, label_smoothing=0.1) == pytest.approx(-0.0862129365887834, abs=1e-12)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_ipo_minimum_at_half_inverse_beta_normalised(beta):
    lengths = (torch.tensor([4]), torch.tensor([7]))
    target = 1.0 / (2.0 * beta)  # in the per-token log-ratio difference h'
    rejected = t(-1.4)  # per token: -0.2
    best = (target - 0.2) * 4  # chosen log-ratio that puts h' = chosen/4 - (-1.4/7) on the target
    chosen = t(best).requires_grad_()
    value = preference_loss("ipo", chosen, rejected, beta=beta, chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    value.sum().backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert chosen.grad.item() == pytest.approx(0.0, abs=1e-12)
    for off in (-0.4, 0.4):  # a strict minimum: h' off the target by 0.1 costs 0.1^2
        moved = preference_loss("ipo", t(best + off), rejected, beta=beta,
                                chosen_lengths=lengths[0], rejected_lengths=lengths[1])
        assert moved.item() == pytest.approx(0.01, abs=1e-12)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_ipo_minimum_at_half_inverse_beta_summed(beta):
    target = 1.0 / (2.0 * beta)
    assert grad_in_h("ipo", target, beta=beta, ipo_normalize=False) == pytest.approx(0.0, abs=1e-12)
    assert loss("ipo", target, 0.0, beta=beta, ipo_normalize=False) == pytest.approx(0.0, abs=1e-12)
    assert loss("ipo", target + 0.3, 0.0, beta=beta, ipo_normalize=False) == pytest.approx(0.09, abs=1e-12)
    assert grad_in_h("ipo", target - 1.0, beta=beta, ipo_normalize=False) == pytest.approx(-2.0, abs=1e-12)


def test_madpo_weight_is_one_at_zero_margin():
    for knobs in ({}, dict(madpo_c_max=5.0, madpo_c_min=0.1, madpo_lambda=3.0, madpo_tau=2.0)):
        assert madpo_weights(t(0.0), **knobs).item() == 1.0


@pytest.mark.parametrize("knobs", [{}, dict(madpo_c_max=3.0, madpo_c_min=0.2, madpo_lambda=2.0, madpo_tau=1.5),
                                   dict(madpo_c_max=1.5, madpo_lambda=0.5, madpo_tau=4.0)])
def test_madpo_weight_is_continuous_at_minus_tau(knobs):
    tau = knobs.get("madpo_tau", TAU)
    just_above, at, below = madpo_weights(t(-tau + 1e-9, -tau, -tau - 1e-9), **knobs).tolist()
    assert at == 1.0 and below == 1.0
    assert just_above == pytest.approx(1.0, abs=1e-8)  # c(tau) = 1 makes s(c m)/s(m) = 1 at the threshold
    inside = madpo_weights(t(-tau + 0.5), **knobs).item()
    assert abs(inside - 1.0) > 1e-3  # the weight does move away from 1 inside the band


def test_madpo_weight_tends_to_one_for_large_margins():
    weights = madpo_weights(t(10.0, 20.0, 40.0, 80.0)).tolist()
    gaps = [abs(w - 1.0) for w in weights]
    assert gaps == sorted(gaps, reverse=True)  # closer to 1 as m grows
    assert gaps[-1] < 1e-15 and gaps[0] > 1e-3
    assert madpo_weights(t(1e6)).item() == 1.0  # no overflow far out


def test_madpo_weight_amplifies_small_positive_margins():
    # c > 1 near m = 0: s(c m) > s(m) for small m > 0, so hard (small-margin) pairs weigh more than 1
    assert all(w > 1.0 for w in madpo_weights(t(0.1, 0.5, 1.0, 3.0)).tolist())


def test_no_gradient_flows_into_margins():
    margins = t(0.5, -2.0, 3.0).requires_grad_()
    chosen = t(1.0, 0.0, -1.0).requires_grad_()
    out = preference_loss("madpo", chosen, t(0.0, 0.0, 0.0), beta=0.5, reward_margins=margins)
    out.sum().backward()
    assert margins.grad is None
    assert not madpo_weights(margins).requires_grad
    # the policy gradient is the DPO gradient scaled by w: d/dh w softplus(-b h) = -w b s(-b h)
    w = madpo_weights(margins.detach())
    expected = -w * 0.5 * torch.sigmoid(-0.5 * chosen.detach())
    assert torch.allclose(chosen.grad, expected, atol=1e-15, rtol=0)


def test_robust_and_rdpo_by_hand_on_a_grid():
    """Both names against the closed form softplus(-x) - e x / (1-2e), x = b h, and its derivative in h,
    b (-s(-x) - e / (1-2e)), computed here independently of the registry (TRL's robust: test_trainer.py)."""
    beta, h = 0.3, torch.linspace(-6, 6, 13, dtype=torch.float64)
    for eps in (0.0, 0.2, 0.45):
        x = beta * h
        expected = [math.log1p(math.exp(-v)) - eps * v / (1 - 2 * eps) for v in x.tolist()]
        expected_grad = [beta * (-1 / (1 + math.exp(v)) - eps / (1 - 2 * eps)) for v in x.tolist()]
        for name in ("robust", "rdpo"):
            chosen = h.clone().requires_grad_()
            per_pair = preference_loss(name, chosen, torch.zeros_like(h), beta=beta, label_smoothing=eps)
            per_pair.sum().backward()
            assert per_pair.tolist() == pytest.approx(expected, abs=1e-12), (name, eps)
            assert chosen.grad.tolist() == pytest.approx(expected_grad, abs=1e-12), (name, eps)


def test_zero_smoothing_reduces_to_dpo():
    chosen, rejected = torch.linspace(-3, 3, 7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
    dpo = preference_loss("sigmoid", chosen, rejected, beta=0.2)
    for loss_type in ("cdpo", "rdpo"):
        assert torch.allclose(preference_loss(loss_type, chosen, rejected, beta=0.2), dpo, atol=1e-15, rtol=0)


def test_float32_inputs_keep_their_dtype():
    chosen, rejected = torch.tensor([0.5, -0.5]), torch.tensor([0.0, 0.0])
    for loss_type in LOSS_TYPES:
        out = preference_loss(loss_type, chosen, rejected, beta=0.1, chosen_lengths=torch.tensor([3, 4]),
                              rejected_lengths=torch.tensor([2, 5]), reward_margins=torch.tensor([1.0, -1.0]))
        assert out.dtype == torch.float32 and out.shape == (2,)


# --- bad knobs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss_type, kwargs, message",
    [
        ("cdpo", dict(label_smoothing=0.5), r"cdpo: label_smoothing must be in \[0, 0.5\), got 0.5"),
        ("rdpo", dict(label_smoothing=-0.1), r"rdpo: label_smoothing must be in \[0, 0.5\), got -0.1"),
        ("robust", dict(label_smoothing=0.7), r"robust: label_smoothing must be"),
        ("sigmoid", dict(beta=0.0), r"beta must be a finite number > 0, got 0.0"),
        ("ipo", dict(beta=-1.0), r"beta must be a finite number > 0"),
        ("ipo", dict(), r"ipo with ipo_normalize=True needs chosen_lengths and rejected_lengths"),
        ("madpo", dict(), r"madpo needs reward_margins"),
        ("madpo", dict(reward_margins=t(0.0), madpo_c_max=1.0), r"madpo_c_max must be a finite number > 1, got 1.0"),
        ("madpo", dict(reward_margins=t(0.0), madpo_c_min=1.0), r"madpo_c_min must be in \(0, 1\), got 1.0"),
        ("madpo", dict(reward_margins=t(0.0), madpo_c_min=0.0), r"madpo_c_min must be in \(0, 1\)"),
        ("madpo", dict(reward_margins=t(0.0), madpo_lambda=0.0), r"madpo_lambda must be a finite number > 0"),
        ("madpo", dict(reward_margins=t(0.0), madpo_tau=-1.0), r"madpo_tau must be a finite number > 0"),
        ("madpo", dict(reward_margins=t(0.0), madpo_tau=math.inf), r"madpo_tau must be a finite number > 0"),
        ("hinge", dict(), r"unknown loss_type 'hinge'; registered: sigmoid, ipo, cdpo, rdpo, robust, madpo"),
    ],
)
def test_bad_knobs_raise(loss_type, kwargs, message):
    kwargs = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        preference_loss(loss_type, t(0.0), t(0.0), **kwargs)


def test_check_knobs_accepts_the_defaults():
    for loss_type in LOSS_TYPES:
        check_knobs(loss_type, beta=0.1, label_smoothing=0.0, ipo_normalize=True, **MADPO_DEFAULTS)
    check_knobs("cdpo", beta=0.1, label_smoothing=0.49)


# --- a recipe's own loss --------------------------------------------------------------------------------------------

# The example of docs/losses.md ("Your own loss"), word for word.
LOSSES_PY = '''\
import torch

from dpo_recipes.train.losses import register_loss


def check(slic_delta):
    if not slic_delta > 0:
        raise ValueError(f"slic_delta must be > 0, got {slic_delta}")


@register_loss("slic", knobs={"slic_delta": 1.0}, check=check)
def slic(pairs, *, beta, slic_delta):
    """SLiC-HF's calibration loss (Zhao et al. 2023): a hinge on the scaled log-ratio difference."""
    return torch.relu(slic_delta - beta * pairs.h)
'''


# The reference-free example of docs/losses.md (SimPO), word for word.
SIMPO_PY = '''\
import torch.nn.functional as F

from dpo_recipes.train.losses import register_loss


def check(simpo_gamma):
    if not simpo_gamma >= 0:
        raise ValueError(f"simpo_gamma must be >= 0, got {simpo_gamma}")


@register_loss("simpo", knobs={"simpo_gamma": 1.0}, check=check)
def simpo(pairs, *, beta, simpo_gamma):
    """SimPO (Meng et al. 2024): the reward is the policy's mean log-prob per completion token, scaled by beta, with
    no reference model; the chosen reply must win by the margin gamma."""
    chosen = pairs.chosen_logps / pairs.chosen_lengths.clamp(min=1)
    rejected = pairs.rejected_logps / pairs.rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * (chosen - rejected) - simpo_gamma)
'''


@pytest.fixture
def simpo():
    """SimPO registered from a recipe's losses.py, as `make train` loads it."""
    folder = REPO / "recipes" / f"test-simpo-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "losses.py").write_text(SIMPO_PY)
    try:
        load_losses_file(folder / "losses.py")
        yield LOSSES["simpo"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        LOSSES.pop("simpo", None)


def test_docs_show_simpo():
    assert SIMPO_PY in (REPO / "docs/losses.md").read_text()


def test_simpo_reads_the_policy_log_probs_not_the_log_ratios(simpo):
    # Pair 1: chosen -6 over 3 tokens (mean -2), rejected -12 over 4 (mean -3): -log s(2 * (-2 + 3) - 1) = log(1 + e^-1)
    # Pair 2: equal means -1 and -1: -log s(-1) = log(1 + e). The log-ratios (all 0 here) must not matter.
    out = preference_loss("simpo", t(0.0, 0.0), t(0.0, 0.0), beta=2.0, chosen_logps=t(-6.0, -2.0),
                          rejected_logps=t(-12.0, -5.0), chosen_lengths=t(3.0, 2.0), rejected_lengths=t(4.0, 5.0),
                          simpo_gamma=1.0)
    assert out.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log1p(math.e)], abs=1e-12)
    with pytest.raises(ValueError, match="simpo_gamma must be >= 0"):
        preference_loss("simpo", t(0.0), t(0.0), beta=2.0, simpo_gamma=-1.0)


@pytest.fixture
def recipe():
    """A copy of the demo recipe under a fresh name, with losses.py and `loss_type: slic`."""
    name = f"test-loss-{uuid.uuid4().hex[:8]}"
    folder = REPO / "recipes" / name
    shutil.copytree(REPO / "recipes/demo-cpu", folder, symlinks=True)
    (folder / "losses.py").write_text(LOSSES_PY)
    config = (folder / "config.yaml").read_text().replace("loss_type: sigmoid", "loss_type: slic\nslic_delta: 0.75")
    (folder / "config.yaml").write_text(config)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    LOSSES.pop("slic", None)


def test_docs_show_the_example():
    assert LOSSES_PY in (REPO / "docs/losses.md").read_text()


def test_recipe_config_selects_its_loss_and_knob(recipe):
    _, args, _ = parse_config(["--config", str(recipe / "config.yaml"), "--slic_delta", "0.5"])
    assert args.loss_type == ["slic"] and args.loss_knobs == {"slic_delta": 0.5}


@pytest.mark.parametrize("argv, message", [
    (["--slic_delta", "-1"], "config: slic_delta must be > 0, got -1.0"),
    (["--slic_delta", "abc"], "config: key 'slic_delta' must be float, got str 'abc'"),
    (["--slic_deta", "1"], "command line: unknown key 'slic_deta' (did you mean 'slic_delta'?)"),
    (["--loss_type", "sigmoid"], "config: key 'slic_delta' is a knob of loss_type slic, which is not selected"),
])
def test_bad_knobs_are_one_line(recipe, argv, message):
    with pytest.raises(UserError) as err:
        parse_config(["--config", str(recipe / "config.yaml"), *argv])
    assert str(err.value).startswith(message)


def test_built_in_names_cannot_be_replaced():
    assert set(BUILT_IN) == {"sigmoid", "ipo", "cdpo", "rdpo", "robust", "madpo"}
    with pytest.raises(ValueError, match="'sigmoid' is built in"):
        register_loss("sigmoid")(lambda pairs, *, beta: pairs.h)


def test_estimate_reads_a_recipe_with_its_own_loss(recipe):
    from dpo_recipes.commands.estimate import recipe_setup

    setup, about = recipe_setup(recipe.name)  # before: "unknown key 'slic_delta'"
    assert about["recipe"] == recipe.name and setup.lora_r == 16

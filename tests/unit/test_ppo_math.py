"""PPO math against values computed by hand (the arithmetic is written next to each expectation)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import close, f64

from align_kit.ppo.advantages import (
    gae,
    masked_mean,
    masked_var,
    masked_whiten,
    normalise_scores,
    per_token_rewards,
)
from align_kit.ppo.kl import AdaptiveKLController, FixedKLController, kl_per_token
from align_kit.ppo.losses import entropy_from_logits, explained_variance, logprobs_of, policy_loss, value_loss

D = torch.float64
t = f64  # short: the tests below write many small tensors


# ---- masked statistics and whitening -------------------------------------------------------------

def test_masked_mean_and_var_ignore_padding_even_nan():
    x = t([[1.0, 2.0, 3.0, float("nan")], [6.0, float("inf"), -5.0, 0.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    # real tokens: 1, 2, 3, 6 -> mean 3; squared deviations 4 + 1 + 0 + 9 = 14
    close(masked_mean(x, mask), 3.0)
    close(masked_mean(x, mask, dim=1), [2.0, 6.0])
    close(masked_var(x, mask, unbiased=False), 14 / 4)
    close(masked_var(x, mask), 14 / 3)


def test_masked_whiten_by_hand():
    x = t([[1.0, 2.0, 3.0, 6.0, 1e6]])
    mask = t([[1, 1, 1, 1, 0]])
    std = math.sqrt(14 / 3)  # mean 3, unbiased variance 14 / 3 (as above)
    close(masked_whiten(x, mask), [[-2 / std, -1 / std, 0.0, 3 / std, 0.0]], tol=1e-7)
    # keeping the mean: (x - 3) / std + 3
    close(masked_whiten(x, mask, shift_mean=False), [[3 - 2 / std, 3 - 1 / std, 3.0, 3 + 3 / std, 0.0]], tol=1e-7)


def test_normalise_scores_batch_and_clip():
    # mean 2, unbiased std of [0, 2, 4] = 2 -> [-1, 0, 1]; then clip to 0.5
    close(normalise_scores(t([0.0, 2.0, 4.0]), "batch"), [-1.0, 0.0, 1.0], tol=1e-7)
    close(normalise_scores(t([0.0, 2.0, 4.0]), "batch", clip=0.5), [-0.5, 0.0, 0.5], tol=1e-7)
    with pytest.raises(ValueError):
        normalise_scores(t([1.0]), "running")


# ---- KL estimators and controllers ----------------------------------------------------------------

def test_kl_estimators_by_hand():
    logp, ref = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])
    close(kl_per_token(logp, ref, "k1"), [[0.5, -1.0]])  # logp - ref
    close(kl_per_token(logp, ref, "k2"), [[0.125, 0.5]])  # 0.5 * (0.5^2, 1^2)
    # log r = ref - logp = (-0.5, 1.0); k3 = (r - 1) - log r
    close(kl_per_token(logp, ref, "k3"), [[math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1]])
    assert kl_per_token(logp, logp, "k3").abs().max() == 0  # identical policies: exactly 0
    with pytest.raises(ValueError):
        kl_per_token(logp, ref, "k4")


def test_adaptive_kl_controller_by_hand_and_state_round_trip():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c.update(7.5, 512)  # error 7.5/6 - 1 = 0.25, clipped to 0.2: 0.2 * (1 + 0.2 * 512/10000)
    assert c.kl_coef == pytest.approx(0.2 * 1.01024, abs=1e-12)
    c.update(3.0, 1000)  # error -0.5 clipped to -0.2: * (1 - 0.2 * 0.1)
    assert c.kl_coef == pytest.approx(0.2 * 1.01024 * 0.98, abs=1e-12)
    c.update(6.6, 1000)  # error 0.1 (inside the clip): * (1 + 0.1 * 0.1)
    assert c.kl_coef == pytest.approx(0.2 * 1.01024 * 0.98 * 1.01, abs=1e-12)
    c.update(float("nan"), 1000)  # ignored
    assert c.kl_coef == pytest.approx(0.2 * 1.01024 * 0.98 * 1.01, abs=1e-12)
    restored = AdaptiveKLController(1.0, target=1.0, horizon=1.0)
    restored.load_state_dict(c.state_dict())
    assert (restored.kl_coef, restored.target, restored.horizon) == (c.kl_coef, 6.0, 10000.0)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10_000)
    assert fixed.kl_coef == 0.05 and fixed.state_dict() == {"kind": "fixed", "kl_coef": 0.05}


# ---- rewards and GAE --------------------------------------------------------------------------------

def test_per_token_rewards_put_score_at_last_real_token():
    rewards = per_token_rewards(t([1.0, -2.0]), t([[0.1, 0.2, 0.3], [0.4, 0.5, 99.0]]), t([[1, 1, 1], [1, 1, 0]]), 0.5)
    # row 0: -0.5 * kl, + 1.0 at t=2; row 1: -0.5 * kl, -2.0 at t=1, padding 0
    close(rewards, [[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 - 2.0, 0.0]])


def test_gae_one_by_three_by_hand():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards, values = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=D), gamma, lam)
    # t=2: delta = 2 + 0.9*0 - 1.5 = 0.5                  A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35               A1 = 0.35 + 0.72*0.5 = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                A0 = 1.4 + 0.72*0.71 = 1.9112
    close(adv, [[1.9112, 0.71, 0.5]])
    close(ret, [[1.9112 + 0.5, 0.71 + 1.0, 0.5 + 1.5]])


def test_gae_padding_does_not_leak():
    gamma, lam = 0.9, 0.8
    # row 0 is the 1x3 case above plus a padded 4th token holding garbage; row 1 ends after 2 tokens
    rewards = t([[1.0, 0.0, 2.0, 100.0], [1.0, 0.0, 50.0, -7.0]])
    values = t([[0.5, 1.0, 1.5, 7.0], [0.5, 1.0, 9.0, 3.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    close(adv[0], [1.9112, 0.71, 0.5, 0.0])
    # row 1, t=1: delta = 0 + 0.9*0 - 1.0 = -1.0 (V after the last token is 0, not 9) A1 = -1.0
    #        t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                                  A0 = 1.4 - 0.72 = 0.68
    close(adv[1], [0.68, -1.0, 0.0, 0.0])
    close(ret[1], [0.68 + 0.5, -1.0 + 1.0, 0.0, 0.0])
    garbage = torch.where(mask.bool(), values, torch.full_like(values, -1e9))
    adv2, ret2 = gae(torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e9)), garbage, mask, gamma, lam)
    assert torch.equal(adv2, adv) and torch.equal(ret2, ret)


# ---- policy loss at and beyond the clip boundaries ----------------------------------------------------

def test_policy_loss_clip_boundaries_both_advantage_signs():
    eps = 0.2
    ratio = t([[1.2, 1.3, 0.7, 0.8, 0.7, 1.3, 5.0]])
    adv = t([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 10.0]])
    mask = t([[1, 1, 1, 1, 1, 1, 0]])  # the last token is padding
    logprobs = torch.log(ratio).requires_grad_(True)
    out = policy_loss(logprobs, torch.zeros_like(ratio), adv, mask, eps, approx_kl_estimator="sq")
    # per token max(-A*r, -A*clip(r, 0.8, 1.2)):
    #   A=+1 r=1.2 (boundary): max(-1.2, -1.2) = -1.2   not clipped
    #   A=+1 r=1.3:            max(-1.3, -1.2) = -1.2   clipped (no gradient)
    #   A=+1 r=0.7:            max(-0.7, -0.8) = -0.7   unclipped (the pessimistic side keeps the gradient)
    #   A=-1 r=0.8 (boundary): max( 0.8,  0.8) =  0.8   not clipped
    #   A=-1 r=0.7:            max( 0.7,  0.8) =  0.8   clipped
    #   A=-1 r=1.3:            max( 1.3,  1.2) =  1.3   unclipped
    close(out.loss, (-1.2 - 1.2 - 0.7 + 0.8 + 0.8 + 1.3) / 6)
    close(out.clip_fraction, 2 / 6)
    close(out.approx_kl, sum(0.5 * math.log(r) ** 2 for r in (1.2, 1.3, 0.7, 0.8, 0.7, 1.3)) / 6)
    out.loss.backward()
    # d/dlogp of -A * r = -A * r, divided by 6 real tokens; clipped and padded tokens get exactly 0
    close(logprobs.grad, [[-1.2 / 6, 0.0, -0.7 / 6, 0.8 / 6, 0.0, 1.3 / 6, 0.0]])
    k3 = policy_loss(torch.log(ratio), torch.zeros_like(ratio), adv, mask, eps, approx_kl_estimator="k3")
    # k3 of KL(old||new): r' = old/new = 1/ratio, (r' - 1) - log r'
    close(k3.approx_kl, sum(1 / r - 1 + math.log(r) for r in (1.2, 1.3, 0.7, 0.8, 0.7, 1.3)) / 6)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    adv, mask = t([[2.0, -1.0, 4.0]]), t([[1, 1, 0]])
    out = policy_loss(torch.zeros(1, 3, dtype=D), torch.zeros(1, 3, dtype=D), adv, mask, 0.2)
    close(out.loss, -(2.0 - 1.0) / 2)
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0


# ---- value loss -----------------------------------------------------------------------------------------

def test_value_loss_clipped_by_hand():
    eps = 0.5
    values = t([[2.0, 0.2, 1.0, 0.5, -1.0, 40.0]])
    old = t([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    returns = t([[3.0, 1.0, 0.0, 2.0, 2.0, -40.0]])
    mask = t([[1, 1, 1, 1, 1, 0]])
    out = value_loss(values, old, returns, mask, eps)
    #   V=2,   old 0, R=3: V_clip 0.5  -> max((2-3)^2, (0.5-3)^2)  = max(1, 6.25) = 6.25 clipped
    #   V=0.2, old 0, R=1: inside      -> 0.8^2 = 0.64
    #   V=1,   old 1, R=0: inside      -> 1.0
    #   V=0.5, old 0, R=2: boundary    -> 1.5^2 = 2.25, equal terms: not clipped
    #   V=-1,  old 0, R=2: V_clip -0.5 -> max(9, 6.25) = 9 unclipped
    close(out.loss, 0.5 * (6.25 + 0.64 + 1.0 + 2.25 + 9.0) / 5)
    close(out.clip_fraction, 1 / 5)


# ---- entropy, explained variance, log-probs -------------------------------------------------------------

def test_entropy_from_logits_by_hand():
    logits = t([[[0.0, math.log(3.0)], [5.0, 5.0], [100.0, -100.0]]])
    mask = t([[1, 1, 0]])
    # p = (1/4, 3/4): H = -(0.25 ln 0.25 + 0.75 ln 0.75); uniform over 2: ln 2; third token is padding
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(entropy_from_logits(logits, mask), (h1 + math.log(2)) / 2, tol=1e-6)


def test_explained_variance_by_hand():
    values, returns = t([[1.0, 2.0, 3.0, 4.0, 99.0]]), t([[2.0, 2.0, 4.0, 4.0, -99.0]])
    mask = t([[1, 1, 1, 1, 0]])
    # residuals (1, 0, 1, 0): unbiased var 1/3; returns (2, 2, 4, 4): unbiased var 4/3 -> 1 - 1/4
    close(explained_variance(values, returns, mask), 0.75)


def test_logprobs_of_gathers_the_token():
    logits = t([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    close(logprobs_of(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.5)]], tol=1e-6)

"""Critic-free estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++), loss aggregation, asymmetric clipping, dynamic
sampling and the overlong penalty, against values worked by hand (the arithmetic is beside each expectation)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import close, f64

from align_kit.errors import ConfigError
from align_kit.ppo.advantages import (
    all_equal_groups,
    discounted_returns,
    group_baseline_scores,
    overlong_penalty,
)
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.experience import Experience
from align_kit.ppo.losses import aggregate, policy_loss
from align_kit.ppo.rollout import add_advantages

D = torch.float64
t = f64  # short: the tests below write many small tensors


# ---- group baselines ------------------------------------------------------------------------------------

TIES = t([1.0, 1.0, 0.0, 2.0])  # one group of 4 with a tie: mean 1, deviations (0, 0, -1, 1)
STD = math.sqrt(2 / 3)  # unbiased: (0 + 0 + 1 + 1) / 3


def test_grpo_group_of_four_with_ties():
    close(group_baseline_scores(TIES, 4, "grpo"), [0.0, 0.0, -1 / (STD + 1e-4), 1 / (STD + 1e-4)])
    # Dr. GRPO: centred, not scaled
    close(group_baseline_scores(TIES, 4, "grpo", scale=False), [0.0, 0.0, -1.0, 1.0])
    # two groups of 2 are independent: (3, 1) -> mean 2, std sqrt(2); (5, 5) -> all equal
    close(group_baseline_scores(t([3.0, 1.0, 5.0, 5.0]), 2, "grpo", eps=0.0),
          [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0, 0.0])


def test_rloo_leave_one_out_baseline():
    # baseline of row i = mean of the other three: (4 - s_i) / 3 -> 1, 1, 4/3, 2/3
    close(group_baseline_scores(TIES, 4, "rloo"), [0.0, 0.0, -4 / 3, 4 / 3])
    # = G / (G - 1) x (s - mean)
    close(group_baseline_scores(TIES, 4, "rloo"), 4 / 3 * (TIES - 1.0))


def test_reinforce_pp_baseline_and_plain():
    close(group_baseline_scores(TIES, 4, "reinforce_pp_baseline"), [0.0, 0.0, -1.0, 1.0])
    close(group_baseline_scores(TIES, 4, "reinforce_pp"), TIES)  # no group baseline; whitening comes later


def test_all_equal_group_gets_zero_advantage_from_every_group_estimator():
    scores = t([0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0, 0.0])
    assert all_equal_groups(scores, 4).tolist() == [True, False]
    for estimator in ("grpo", "rloo", "reinforce_pp_baseline"):
        assert group_baseline_scores(scores, 4, estimator)[:4].abs().max() == 0, estimator
    with pytest.raises(ValueError, match="groups of 3"):
        group_baseline_scores(scores, 3, "grpo")


# ---- per-token advantages through add_advantages ---------------------------------------------------------

def experience(scores, mask, logprobs=None, ref=None) -> Experience:
    mask = torch.as_tensor(mask, dtype=torch.long)
    b, n = mask.shape
    logprobs = torch.zeros(b, n, dtype=D) if logprobs is None else t(logprobs)
    return Experience(query_ids=torch.ones(b, 1, dtype=torch.long), query_mask=torch.ones(b, 1, dtype=torch.long),
                      response_ids=torch.ones(b, n, dtype=torch.long), response_mask=mask, logprobs=logprobs,
                      ref_logprobs=logprobs.clone() if ref is None else t(ref), values=torch.zeros(b, n, dtype=D),
                      scores=t(scores), raw_scores=t(scores), ended=torch.ones(b, dtype=torch.bool))


def cfg(**kw) -> PPOConfig:
    base = dict(batch_size=1, mini_batch_size=1, num_generations=2, advantage_estimator="grpo")
    base.update(kw)
    return PPOConfig(**base)


def test_grpo_advantage_is_the_sequence_advantage_on_every_real_token():
    exp = add_advantages(experience([1.0, 0.0], [[1, 1, 0], [1, 0, 0]]), cfg(kl_in="loss"), kl_coef=0.1)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)  # mean 0.5, unbiased std sqrt(0.5)
    close(exp.advantages, [[a, a, 0.0], [-a, 0.0, 0.0]])


def test_reinforce_pp_whitening_with_kl_in_the_reward_by_hand():
    # two responses to one prompt; per-token k1 KL (logp - ref) = 0.5 on each real token, kl_coef 0.2
    logp = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    ref = [[-0.5, -0.5, -0.5], [-0.5, 9.0, 9.0]]  # row 1's padding holds garbage
    exp = add_advantages(experience([1.0, 0.0], [[1, 1, 1], [1, 0, 0]], logp, ref),
                         cfg(advantage_estimator="reinforce_pp", kl_in="reward", kl_coef=0.2), kl_coef=0.2)
    # rewards: row 0 (-0.1, -0.1, -0.1 + 1), row 1 (-0.1 + 0); returns (reverse cumsum, gamma 1):
    #   row 0 (0.7, 0.8, 0.9), row 1 (-0.1); over the 4 real tokens mean 0.575,
    #   unbiased var = (0.125^2 + 0.225^2 + 0.325^2 + 0.675^2) / 3
    returns = [0.7, 0.8, 0.9, -0.1]
    mean = sum(returns) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 3)
    close(exp.returns, [[0.7, 0.8, 0.9], [-0.1, 0.0, 0.0]])
    w = [(r - mean) / math.sqrt(std ** 2 + 1e-8) for r in returns]
    close(exp.advantages, [[w[0], w[1], w[2]], [w[3], 0.0, 0.0]], tol=1e-7)
    # the baseline variant subtracts the group mean (0.5) from the scores first: rows (0.5, -0.5)
    base = add_advantages(experience([1.0, 0.0], [[1, 1, 1], [1, 0, 0]], logp, ref),
                          cfg(advantage_estimator="reinforce_pp_baseline", kl_in="reward", kl_coef=0.2), kl_coef=0.2)
    close(base.returns, [[0.2, 0.3, 0.4], [-0.6, 0.0, 0.0]])


def test_kl_in_the_loss_leaves_rewards_alone():
    exp = add_advantages(experience([1.0, 0.0], [[1, 1], [1, 1]], [[0.0, 0.0]] * 2, [[-1.0, -1.0]] * 2),
                         cfg(kl_in="loss", kl_estimator="k3", scale_rewards=False), kl_coef=0.5)
    close(exp.advantages, [[0.5, 0.5], [-0.5, -0.5]])  # Dr. GRPO: s - mean, no KL inside
    close(exp.kl, [[math.exp(-1) - 1 + 1] * 2] * 2)  # k3 is still measured (logged, and the loss term)


def test_dynamic_sampling_drops_all_equal_groups_from_the_loss():
    c = PPOConfig(batch_size=2, mini_batch_size=1, num_generations=2, advantage_estimator="grpo",
                  dynamic_sampling=True)
    exp = add_advantages(experience([1.0, 1.0, 1.0, 0.0], [[1, 1]] * 4), c, kl_coef=0.0)
    assert exp.keep.tolist() == [False, False, True, True]
    close(exp.loss_mask.to(D), [[0, 0], [0, 0], [1, 1], [1, 1]])
    assert exp.advantages[:2].abs().max() == 0
    # the dropped rows change no loss: the same loss as the kept rows alone
    logp = torch.tensor([[0.1, -0.2], [0.3, 0.0], [0.05, -0.1], [0.2, 0.1]], dtype=D)
    full = policy_loss(logp, torch.zeros_like(logp), exp.advantages, exp.loss_mask, 0.2).loss
    kept = policy_loss(logp[2:], torch.zeros(2, 2, dtype=D), exp.advantages[2:], exp.loss_mask[2:], 0.2).loss
    close(full, kept.item())


# ---- aggregation, clipping, padding --------------------------------------------------------------------

def test_each_loss_aggregation_by_hand():
    x = t([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0], [7.0, 7.0, 7.0, 7.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # row 2 has no real token (dropped)
    close(aggregate(x, mask, "token_mean"), (1 + 2 + 3 + 4) / 4)
    close(aggregate(x, mask, "seq_mean_token_mean"), (2.0 + 4.0) / 2)  # row means 2 and 4, row 2 not counted
    close(aggregate(x, mask, "constant", max_tokens=5), 10 / (2 * 5))
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(x, mask, "constant")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(x, mask, "sum")


def test_policy_loss_with_both_clip_bounds():
    # eps_low 0.2, eps_high 0.28 (DAPO clip-higher)
    ratio = t([[1.25, 1.3, 0.75, 0.75, 1.3]])
    adv = t([[1.0, 1.0, -1.0, 1.0, -1.0]])
    mask = t([[1, 1, 1, 1, 1]])
    logp = torch.log(ratio).requires_grad_(True)
    out = policy_loss(logp, torch.zeros_like(ratio), adv, mask, 0.2, clip_range_high=0.28)
    #   A=+1 r=1.25: inside [0.8, 1.28] -> -1.25           (symmetric 0.2 would clip it to -1.2)
    #   A=+1 r=1.3:  max(-1.3, -1.28) = -1.28 clipped
    #   A=-1 r=0.75: max(0.75, 0.8) = 0.8 clipped at the floor
    #   A=+1 r=0.75: max(-0.75, -0.8) = -0.75 unclipped
    #   A=-1 r=1.3:  max(1.3, 1.28) = 1.3 unclipped (the pessimistic side)
    close(out.loss, (-1.25 - 1.28 + 0.8 - 0.75 + 1.3) / 5)
    close(out.clip_fraction, 2 / 5)
    out.loss.backward()
    close(logp.grad, [[-1.25 / 5, 0.0, 0.0, -0.75 / 5, 1.3 / 5]])
    sym = policy_loss(torch.log(ratio), torch.zeros_like(ratio), adv, mask, 0.2)
    close(sym.loss, (-1.2 - 1.2 + 0.8 - 0.75 + 1.3) / 5)


def test_padded_tokens_change_nothing():
    mask = t([[1, 1, 0, 0], [1, 1, 1, 0]])
    rewards = t([[0.0, 1.0, 5.0, 5.0], [0.5, 0.0, -1.0, 7.0]])
    garbage = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e9))
    assert torch.equal(discounted_returns(rewards, mask), discounted_returns(garbage, mask))
    close(discounted_returns(rewards, mask), [[1.0, 1.0, 0.0, 0.0], [-0.5, -1.0, -1.0, 0.0]])
    close(discounted_returns(rewards, mask, gamma=0.5), [[0.5, 1.0, 0.0, 0.0], [0.25, -0.5, -1.0, 0.0]])
    logp, adv = t([[0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.2, 0.3]]), t([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    for mode in ("token_mean", "seq_mean_token_mean", "constant"):
        a = policy_loss(logp, torch.zeros_like(logp), adv, mask, 0.2, aggregation=mode, max_tokens=4).loss
        b = policy_loss(torch.where(mask.bool(), logp, torch.full_like(logp, 50.0)), torch.zeros_like(logp),
                        torch.where(mask.bool(), adv, torch.full_like(adv, -1e6)), mask, 0.2, aggregation=mode,
                        max_tokens=4).loss
        assert torch.equal(a, b), mode


def test_overlong_penalty_by_hand():
    # max 10 tokens, buffer 4: no penalty up to 6 tokens, then -(len - 6) / 4 x 0.5
    close(overlong_penalty(torch.tensor([3, 6, 7, 9, 10]), 10, 4, 0.5).to(D), [0.0, 0.0, -0.125, -0.375, -0.5])
    assert overlong_penalty(torch.tensor([10]), 10, 0).item() == 0.0


# ---- the batch arithmetic and ranges, refused before anything loads ---------------------------------------------

def test_config_refuses_bad_batch_arithmetic_and_ranges():
    assert PPOConfig(kl_coef=0).kl_coef == 0 and not PPOConfig(kl_coef=0).needs_reference
    with pytest.raises(ConfigError, match=r"trainer.kl_coef: expected a number >= 0 \(0 turns it off\), found -1"):
        PPOConfig(kl_coef=-1)
    with pytest.raises(ConfigError, match=r"trainer.vf_coef: expected a number >= 0 \(0 turns it off\), found -1"):
        PPOConfig(vf_coef=-1)
    with pytest.raises(ConfigError, match=r"trainer.batch_size: batch_size x num_generations = 3 x 2 = 6 rows per process; "
                                          r"expected a multiple of mini_batch_size x gradient_accumulation_steps = "
                                          r"4 x 1 = 4"):
        PPOConfig(batch_size=3, num_generations=2, mini_batch_size=4, advantage_estimator="grpo")
    with pytest.raises(ConfigError, match=r"trainer.num_generations: advantage_estimator 'rloo' takes its baseline within a prompt's group; "
                                          r"expected >= 2, found 1"):
        PPOConfig(advantage_estimator="rloo")
    with pytest.raises(ConfigError, match="trainer.advantage_estimator: expected one of gae, grpo, .*found 'ppo'"):
        PPOConfig(advantage_estimator="ppo")
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        PPOConfig(dynamic_sampling=True)
    with pytest.raises(ConfigError, match=r"trainer.clip_range_low: expected a number in \(0, 1\).*found 1.5"):
        PPOConfig(clip_range_low=1.5)
    with pytest.raises(ConfigError, match="trainer.overlong_buffer: expected 0 \\(off\\) up to max_new_tokens - 1 = 31, found 32"):
        PPOConfig(overlong_buffer=32, max_new_tokens=32)
    c = PPOConfig(batch_size=4, num_generations=8, mini_batch_size=8, gradient_accumulation_steps=2,
                  advantage_estimator="grpo")
    assert (c.rows_per_process, c.updates_per_epoch, c.uses_critic) == (32, 2, False)  # 32 / (8 x 2)
    assert PPOConfig().uses_critic

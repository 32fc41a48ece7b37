"""Masked statistics, per-token rewards and generalised advantage estimation (GAE).

Shapes: ``B`` responses, ``T`` response tokens. ``mask`` is ``(B, T)`` with 1 for real response
tokens (the EOS included) and 0 for padding after the EOS, so every row is ``1 ... 1 0 ... 0``.
Every function here gives padded positions no weight: changing the values stored there changes
no result.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1.

    Args:
        x: ``(B, T)`` values.
        mask: ``(B, T)`` 0/1 weights.
        dim: ``None`` for one mean over all real tokens (a scalar), or a dimension to reduce.

    >>> x, m = torch.tensor([[1.0, 2.0, 99.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    >>> masked_mean(x, m).item(), masked_mean(x, m, dim=1).tolist()
    (1.5, [1.5])
    """
    mask = mask.to(x.dtype)
    # where() rather than x * mask: a NaN or inf stored in padding must not leak through 0 * inf.
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1.0)
    return x.sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the real tokens of ``x`` (``(B, T)``) as a scalar; ``unbiased`` applies n/(n-1).

    >>> x, m = torch.tensor([[1.0, 2.0, 3.0, 7.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    >>> masked_var(x, m).item(), round(masked_var(x, m, unbiased=False).item(), 6)
    (1.0, 0.666667)
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).square(), mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError("the unbiased variance needs at least two real tokens")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` (``(B, T)``) to unit variance over real tokens; ``shift_mean`` also centres it at 0.

    With ``shift_mean=False`` the mean is kept (rewards keep their sign, only their scale changes).
    Padded positions come back as 0.

    >>> x, m = torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    >>> [round(v, 4) for v in masked_whiten(x, m)[0].tolist()]   # mean 2, unbiased std 1
    [-1.0, 0.0, 1.0, 0.0]
    >>> [round(v, 4) for v in masked_whiten(x, m, shift_mean=False)[0].tolist()]
    [1.0, 2.0, 3.0, 0.0]
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded ``(B, T)`` mask, as ``(B,)`` longs.

    >>> last_token_index(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist()
    [1, 2]
    """
    return (mask.long().sum(dim=1) - 1).clamp(min=0)


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Rewards for each generated token: ``-kl_coef * kl`` everywhere, plus the score at the last real token.

    This is the InstructGPT reward ``r(x, y) - beta * log(pi(y|x) / pi_ref(y|x))`` spread over tokens:
    the KL penalty is paid where it is incurred and the sequence-level score arrives at the end.

    Args:
        scores: ``(B,)`` reward-model scores of the whole responses.
        kl: ``(B, T)`` per-token KL estimates.
        mask: ``(B, T)`` response mask.
        kl_coef: the current KL coefficient beta.

    Returns:
        ``(B, T)`` rewards, 0 at padding.

    >>> r = per_token_rewards(torch.tensor([2.0]), torch.tensor([[0.5, 1.0, 9.0]]), torch.tensor([[1, 1, 0]]), 0.1)
    >>> [round(v, 6) for v in r[0].tolist()]   # [-0.05, -0.1 + 2.0, padding]
    [-0.05, 1.9, 0.0]
    """
    mask_f = mask.to(kl.dtype)
    rewards = torch.where(mask.bool(), -kl_coef * kl, torch.zeros_like(kl))
    last = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype) * mask_f[rows, last]
    return rewards


def normalise_scores(scores: torch.Tensor, mode: str = "none", clip: float | None = None) -> torch.Tensor:
    """Optional batch whitening (``mode="batch"``) and clipping to ``[-clip, clip]`` of ``(B,)`` scores.

    >>> normalise_scores(torch.tensor([1.0, 3.0]), "batch").tolist()   # mean 2, unbiased std sqrt(2)
    [-0.7071067690849304, 0.7071067690849304]
    >>> normalise_scores(torch.tensor([-9.0, 0.5, 9.0]), clip=5.0).tolist()
    [-5.0, 0.5, 5.0]
    """
    if mode == "batch" and scores.numel() > 1:
        scores = (scores - scores.mean()) / (scores.std() + 1e-8)
    elif mode not in ("none", "batch"):
        raise ValueError(f"unknown score normalisation {mode!r}; expected 'none' or 'batch'")
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded responses.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` = 0 after the last real token, and
    ``A_t = delta_t + gamma * lam * A_{t+1}``. The value at a padded position is ignored, so the
    episode ends at the EOS and nothing from the padding flows back into the real tokens.

    Args:
        rewards: ``(B, T)`` per-token rewards (0 at padding).
        values: ``(B, T)`` critic values ``V(s_t)`` of the state before token ``t``.
        mask: ``(B, T)`` response mask.
        gamma: discount; lam: the GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 at padding; ``returns = advantages + values``
        is the critic's regression target.

    >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), 1.0, 1.0)
    >>> adv.tolist(), ret.tolist()   # A_1 = 1 - 0.5; A_0 = (0 + 0.5 - 0.5) + 0.5
    ([[0.5, 0.5]], [[1.0, 1.0]])
    """
    valid = mask.bool()
    values = torch.where(valid, values, torch.zeros_like(values))
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    mask_f = valid.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Multiplying by the mask restarts the recursion at the last real token of each row.
        next_advantage = (delta + gamma * lam * next_advantage) * mask_f[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask_f
    return advantages, returns


# ---- critic-free estimators: a baseline from the other responses to the same prompt ------------------------
# Rows come in groups: ``B = n_prompts x G`` responses, the ``G`` responses to one prompt next to each other
# (rows ``g*G .. g*G + G - 1``). Every group-level function below works on the ``(B,)`` sequence scores.


def group_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B,)`` scores as ``(B / G, G)``: one row per prompt.

    >>> group_scores(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    if scores.ndim != 1 or scores.shape[0] % group_size:
        raise ValueError(f"{tuple(scores.shape)} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def all_equal_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B / G,)`` bool: groups whose rewards are all equal, which carry no signal for a group baseline
    (every advantage is 0) and which DAPO's dynamic sampling drops.

    >>> all_equal_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist()
    [True, False]
    """
    grouped = group_scores(scores, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)


def group_baseline_scores(scores: torch.Tensor, group_size: int, estimator: str, scale: bool = True,
                          eps: float = 1e-4) -> torch.Tensor:
    """Sequence-level advantages ``(B,)`` of the critic-free estimators, from ``(B,)`` scores in groups of ``G``.

    - ``grpo`` (Shao et al. 2024): ``(r - mean_g) / (std_g + eps)`` with the unbiased group std; with
      ``scale=False``, Dr. GRPO (Liu et al. 2025): ``r - mean_g``, no division (the std favours easy and
      hopeless prompts, whose groups vary little).
    - ``rloo`` (Ahmadian et al. 2024): ``r - mean of the other G - 1`` = ``G / (G - 1) x (r - mean_g)``.
    - ``reinforce_pp_baseline``: ``r - mean_g`` (whitened over the batch later, as REINFORCE++ does).
    - ``reinforce_pp``: ``r`` unchanged (REINFORCE++ has no group baseline; its batch whitening centres it).

    A group whose scores are all equal gets 0 from every estimator but ``reinforce_pp``.

    >>> s = torch.tensor([1.0, 0.0, 0.0, 1.0])   # one group of 4: mean 0.5, unbiased std 1/sqrt(3)
    >>> [round(v, 3) for v in group_baseline_scores(s, 4, "grpo").tolist()]   # 0.5 / 0.57735
    [0.866, -0.866, -0.866, 0.866]
    >>> [round(v, 4) for v in group_baseline_scores(s, 4, "rloo").tolist()]   # 1 - 1/3, 0 - 2/3
    [0.6667, -0.6667, -0.6667, 0.6667]
    """
    grouped = group_scores(scores, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        out = grouped - mean
        if scale:  # an all-equal group has std 0 and stays 0 (not 0 / eps, nor 0 / 0 with eps 0)
            std = grouped.std(dim=1, keepdim=True)
            out = torch.where(std > 0, out / (std + eps), torch.zeros_like(out))
    elif estimator == "rloo":
        out = grouped - (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    elif estimator == "reinforce_pp_baseline":
        out = grouped - mean
    elif estimator == "reinforce_pp":
        out = grouped
    else:
        raise ValueError(f"unknown critic-free estimator {estimator!r}")
    return out.reshape(-1)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over the real tokens of each ``(B, T)`` row (0 at padding): the
    REINFORCE return, i.e. GAE with ``lam = 1`` and no critic.

    >>> r = discounted_returns(torch.tensor([[-0.1, -0.2, 1.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))
    >>> [round(v, 6) for v in r[0].tolist()]   # 1.0 - 0.2 - 0.1, 1.0 - 0.2, 1.0, padding
    [0.7, 0.8, 1.0, 0.0]
    """
    valid = mask.bool()
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * valid[:, t].to(rewards.dtype)
        returns[:, t] = running
    return returns


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025), ``(B,)`` values to add to the scores.

    0 up to ``max_new_tokens - buffer`` tokens, then a linear ramp down to ``-penalty`` at ``max_new_tokens``:
    the policy learns to finish before the cut instead of being scored on a truncated answer. ``buffer=0``
    turns it off.

    >>> overlong_penalty(torch.tensor([4, 6, 7, 8]), max_new_tokens=8, buffer=4).tolist()
    [0.0, -0.5, -0.75, -1.0]
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    over = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0.0, max=float(buffer))
    return -penalty * over / buffer + 0.0  # + 0.0 turns -0.0 into 0.0

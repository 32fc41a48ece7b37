"""RL losses and diagnostics as pure functions.

Shapes: ``B`` responses, ``T`` response tokens, ``V`` vocabulary. ``mask`` is the ``(B, T)``
response mask (1 = real token, 0 = padding after EOS, and 0 on every token of a row that dynamic
sampling dropped); padded positions never change a result. The policy loss and the KL loss term are
aggregated over tokens in one of three ways (:func:`aggregate`); the diagnostics are token means.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from align_kit.ppo.advantages import masked_mean, masked_var


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar, to minimise
    clip_fraction: torch.Tensor  # scalar, share of real tokens where the clipped term was chosen
    approx_kl: torch.Tensor  # scalar, KL(old || new) estimate, for logging and early stopping


class ValueLoss(NamedTuple):
    loss: torch.Tensor  # scalar, to minimise
    clip_fraction: torch.Tensor  # scalar, share of real tokens where the clipped error was larger


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
              max_tokens: int | None = None) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar.

    - ``token_mean``: sum over all real tokens / their number (DAPO): every token weighs the same, so long
      responses weigh more than short ones.
    - ``seq_mean_token_mean``: the mean over responses of each response's token mean (GRPO's paper): every
      response weighs the same, so a token of a short response weighs more.
    - ``constant``: sum over real tokens / (responses x ``max_tokens``) (Dr. GRPO): no length normalisation
      at all, so no length bias in either direction.

    Responses with no real token (all dropped) count in none of the denominators.

    >>> x, m = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    >>> aggregate(x, m, "token_mean").item(), aggregate(x, m, "seq_mean_token_mean").item()   # 8/5, (1 + 4)/2
    (1.600000023841858, 2.5)
    >>> aggregate(x, m, "constant", max_tokens=8).item()   # 8 / (2 x 8)
    0.5
    """
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    rows = (mask.sum(dim=1) > 0).to(per_token.dtype)
    n_rows = rows.sum().clamp(min=1.0)
    if mode == "seq_mean_token_mean":
        return (masked_mean(per_token, mask, dim=1) * rows).sum() / n_rows
    if mode == "constant":
        if not max_tokens:
            raise ValueError("the constant aggregation needs max_tokens (the response length limit)")
        return torch.where(mask.bool(), per_token, torch.zeros_like(per_token)).sum() / (n_rows * max_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected token_mean, seq_mean_token_mean or constant")


def logprobs_of(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of ``token_ids`` (``(B, T)``) under ``logits`` (``(B, T, V)``), as ``(B, T)``.

    >>> logprobs_of(torch.zeros(1, 1, 4), torch.tensor([[2]])).exp().item()   # uniform over 4
    0.25
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, token_ids.unsqueeze(-1)).squeeze(-1)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    approx_kl_estimator: str = "k3",
    clip_range_high: float | None = None,
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
) -> PolicyLoss:
    """PPO clipped surrogate (Schulman et al. 2017), per token.

    ``ratio = exp(logprobs - old_logprobs)``; the per-token loss is
    ``max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))``: the pessimistic bound, so a token whose
    ratio already moved past the bound in the direction its advantage favours gives no gradient. A larger
    ``eps_high`` (DAPO's clip-higher) lets unlikely tokens with positive advantage grow further, against
    entropy collapse. The per-token losses are reduced by :func:`aggregate`.

    Args:
        logprobs: ``(B, T)`` current policy log-probs (with gradient).
        old_logprobs: ``(B, T)`` log-probs at rollout time.
        advantages: ``(B, T)`` (usually whitened).
        mask: ``(B, T)`` response mask.
        clip_range: epsilon below 1 (``eps_low``), and above it unless ``clip_range_high`` is given.
        approx_kl_estimator: ``"k3"`` (``(r - 1) - log r``) or ``"sq"`` (``0.5 * logratio^2``).
        clip_range_high: ``eps_high``; None = ``clip_range``.
        aggregation, max_tokens: see :func:`aggregate`.

    A token counts as clipped only when the clipped term is strictly larger, so ratio exactly at
    ``1 +- eps`` is not clipped.

    >>> out = policy_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    >>> round(out.loss.item(), 6), out.clip_fraction.item()   # max(-1.5, -1.2) = -1.2
    (-1.2, 1.0)
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    high = clip_range if clip_range_high is None else clip_range_high
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, aggregation, max_tokens)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        if approx_kl_estimator == "k3":
            approx = torch.expm1(-log_ratio) + log_ratio  # (r - 1) - log r with r = old/new
        elif approx_kl_estimator == "sq":
            approx = 0.5 * log_ratio.square()
        else:
            raise ValueError(f"unknown approx-KL estimator {approx_kl_estimator!r}; expected 'k3' or 'sq'")
        approx_kl = masked_mean(approx, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> ValueLoss:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))``.

    ``V_clip = old_values + clip(V - old_values, -eps, eps)`` keeps the critic from moving far from its
    rollout-time predictions in one update; taking the max makes the bound pessimistic, like the
    policy loss.

    Args:
        values: ``(B, T)`` current critic values (with gradient).
        old_values: ``(B, T)`` values at rollout time.
        returns: ``(B, T)`` GAE returns (the regression target).
        mask: ``(B, T)`` response mask.
        clip_range: epsilon for the values (in reward units).

    >>> out = value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[3.0]]), torch.ones(1, 1), 0.5)
    >>> out.loss.item(), out.clip_fraction.item()   # V_clip = 0.5: 0.5 * max(1, 6.25)
    (3.125, 1.0)
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_unclipped = (values - returns).square()
    err_clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return ValueLoss(loss, clip_fraction)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the next-token distributions ``logits`` (``(B, T, V)``) over real tokens.

    ``H = logsumexp(z) - sum softmax(z) * z``, which avoids taking log of tiny probabilities.

    >>> round(entropy_from_logits(torch.zeros(1, 2, 4), torch.tensor([[1, 0]])).item(), 6)   # log 4
    1.386294
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
    return masked_mean(entropy, mask)


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens: InstructGPT's "PPO-ptx" term, a language-modelling
    loss on demonstrations mixed into the policy update so RL does not wear away what SFT taught.

    Args:
        logits: ``(B, L, V)`` policy logits at every position of the demonstration rows.
        labels: ``(B, L)`` token ids, ``-100`` where there is no loss (the prompt, padding). The logits at
            position ``i`` predict ``labels[:, i + 1]``.

    Returns:
        A scalar: the mean negative log-likelihood (nats) of the labelled tokens.

    >>> logits = torch.zeros(1, 3, 4); logits[0, 1, 2] = 10.0   # position 1 is sure of token 2
    >>> round(ptx_loss(logits, torch.tensor([[-100, -100, 2]])).item(), 4)   # only label 2 counts
    0.0001
    >>> round(ptx_loss(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]])).item(), 6)   # uniform: log 4
    1.386294
    """
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over real tokens: 1 = perfect critic, 0 = a constant.

    >>> m = torch.ones(1, 3)
    >>> explained_variance(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]]), m).item()
    1.0
    >>> explained_variance(torch.tensor([[2.0, 2.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]), m).item()
    0.0
    """
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-12)

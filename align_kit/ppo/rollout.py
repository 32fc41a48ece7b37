"""Rollout: sample responses, score them, and collect the log-probs and values PPO needs.

Shapes: ``B`` prompts, ``P`` prompt tokens (left-padded: generation appends on the right), ``T``
response tokens (right-padded after the EOS), ``V`` vocabulary.

Alignment of the per-token tensors: the logits at position ``i`` predict token ``i + 1``, so the
response token ``t`` (at position ``P + t``) is scored by ``logits[:, P - 1 + t]``; the slice
``[:, P - 1 : -1]`` gives exactly ``T`` of them. The critic's value for token ``t`` is read at the
same position: the state after the prompt and ``t`` response tokens, just before token ``t``.
"""

from __future__ import annotations

import torch

from align_kit.ppo.advantages import (
    all_equal_groups,
    discounted_returns,
    gae,
    group_baseline_scores,
    masked_whiten,
    normalise_scores,
    overlong_penalty,
    per_token_rewards,
)
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.experience import Experience
from align_kit.ppo.forward import response_logits, shared_prompt_cache
from align_kit.ppo.kl import kl_per_token
from align_kit.ppo.losses import logprobs_of
from align_kit.ppo.modelset import PPOModels


def cut_at_stop(
    response_ids: torch.Tensor, stop_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first stop id; pad the rest.

    Args:
        response_ids: ``(B, T)`` sampled tokens.
        stop_ids: ids that end a response (the EOS and any extra stop ids).
        pad_id: id written after the stop.

    Returns:
        ``(ids, mask, ended)``: ``(B, T)`` ids, ``(B, T)`` long mask (1 up to the stop), ``(B,)`` bool.

    >>> ids, mask, ended = cut_at_stop(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]]), [2], 0)
    >>> ids.tolist(), mask.tolist(), ended.tolist()
    ([[5, 2, 0, 0], [5, 6, 7, 8]], [[1, 1, 0, 0], [1, 1, 1, 1]], [True, False])
    """
    is_stop = torch.isin(response_ids, torch.tensor(stop_ids, device=response_ids.device))
    # a position is kept when no stop occurred strictly before it
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    mask = (stops_before == 0).long()
    ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask, is_stop.any(dim=1)


@torch.no_grad()
def generate(policy: torch.nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor, cfg: PPOConfig,
             stop_ids: list[int], pad_id: int) -> torch.Tensor:
    """``(B, T)`` sampled response tokens (``T <= max_new_tokens``), not yet cut at the stop."""
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
        bos_token_id=None, min_new_tokens=0,
    )
    prefill = {}
    if cfg.share_prompts:  # each distinct prompt's keys and values computed once, not num_generations times
        shared = shared_prompt_cache(policy, query_ids, query_mask, query_ids.shape[1] - 1,
                                     query_ids.shape[1] + cfg.max_new_tokens)
        if shared is not None:  # generate runs the last prompt column over the cache, then samples
            prefill = {shared[2]: shared[0]}
    out = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=gen_cfg, **prefill)
    return out[:, query_ids.shape[1]:]


def _response_logprobs(logits: torch.Tensor, response_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    # Sampling drew from softmax(logits / temperature): the ratio must use that same distribution.
    return logprobs_of(logits / temperature, response_ids)


@torch.no_grad()
def rollout(models: PPOModels, policy: torch.nn.Module, critic: torch.nn.Module, query_ids: torch.Tensor,
            query_mask: torch.Tensor, cfg: PPOConfig, stop_ids: list[int], pad_id: int) -> Experience:
    """Sample one response per prompt and evaluate it under all four roles.

    ``policy`` and ``critic`` are the unwrapped (not DDP) trained models.
    """
    response_ids = generate(policy, query_ids, query_mask, cfg, stop_ids, pad_id)
    return score_responses(models, policy, critic, query_ids, query_mask, response_ids, cfg, stop_ids, pad_id)


@torch.no_grad()
def score_responses(models: PPOModels, policy: torch.nn.Module, critic: torch.nn.Module | None,
                    query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor, cfg: PPOConfig,
                    stop_ids: list[int], pad_id: int, reward_fn=None) -> Experience:
    """Cut sampled ``(B, T)`` responses at their stop id and collect log-probs, values and scores.

    Forwards run in chunks of ``cfg.mini_batch_size`` rows to bound activation memory. Without a critic the
    values are 0; without a reference (no KL used) the reference log-probs are the policy's; an on-policy
    critic-free run (``cfg.needs_rollout_logprobs`` false) stores 0 as log-probs and the update uses its own. The raw score is
    the reward model's, or, with ``reward_fn``, ``reward_fn(response_ids, response_mask, model_scores)``:
    ``(B, T)`` cut ids, their mask and the ``(B,)`` reward-model scores (None without a reward model) ->
    ``(B,)`` scores (the weighted mix of the reward sources, :class:`align_kit.ppo.rewards.Rewarder`).
    """
    response_ids, response_mask, ended = cut_at_stop(response_ids, stop_ids, pad_id)
    prompt_len = query_ids.shape[1]
    ids = torch.cat([query_ids, response_ids], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "scores": []}
    for start in range(0, ids.shape[0], cfg.mini_batch_size):
        rows = slice(start, start + cfg.mini_batch_size)
        c_ids, c_mask, c_resp = ids[rows], mask[rows], response_ids[rows]
        c_query = (query_ids[rows], query_mask[rows], c_resp, response_mask[rows])
        if cfg.needs_rollout_logprobs:
            logits = response_logits(policy, *c_query, share_prompts=cfg.share_prompts)
            parts["logprobs"].append(_response_logprobs(logits, c_resp, cfg.temperature))
            del logits
        else:  # on-policy (see PPOConfig.needs_rollout_logprobs): the update supplies them; 0 as placeholders
            parts["logprobs"].append(torch.zeros(c_resp.shape, dtype=torch.float32, device=c_resp.device))
        if cfg.needs_reference:
            ref_logits = models.reference_response_logits(policy, *c_query, share_prompts=cfg.share_prompts)
            parts["ref_logprobs"].append(_response_logprobs(ref_logits, c_resp, cfg.temperature))
            del ref_logits
        else:  # no KL anywhere: the reference is never loaded, and its log-probs equal the policy's
            parts["ref_logprobs"].append(parts["logprobs"][-1].clone())
        if critic is not None:
            parts["values"].append(critic(c_ids, c_mask)[:, prompt_len - 1 : -1])
        else:
            parts["values"].append(torch.zeros_like(parts["logprobs"][-1]))
        if models.has_reward_model:
            # the reward head is read at the last real token: prompt_len - 1 + response length
            head = models.reward_forward(critic, c_ids, c_mask)
            last = prompt_len - 1 + response_mask[rows].sum(dim=1)
            parts["scores"].append(head.gather(1, last.unsqueeze(1)).squeeze(1))
    model_scores = torch.cat(parts["scores"]) if parts["scores"] else None
    if reward_fn is not None:
        raw_scores = reward_fn(response_ids, response_mask, model_scores).to(query_ids.device)
    elif model_scores is not None:
        raw_scores = model_scores
    else:
        raise ValueError("no reward: the run has neither a reward model nor reward functions")
    scores = raw_scores.clone()
    if cfg.missing_eos_score is not None:
        scores = torch.where(ended, scores, torch.full_like(scores, cfg.missing_eos_score))
    scores = scores - cfg.missing_eos_penalty * (~ended).to(scores.dtype)
    scores = scores + overlong_penalty(response_mask.sum(dim=1), cfg.max_new_tokens, cfg.overlong_buffer,
                                       cfg.overlong_penalty).to(scores.dtype)
    scores = normalise_scores(scores, cfg.score_norm, cfg.score_clip)
    return Experience(
        query_ids=query_ids, query_mask=query_mask, response_ids=response_ids, response_mask=response_mask,
        logprobs=torch.cat(parts["logprobs"]), ref_logprobs=torch.cat(parts["ref_logprobs"]),
        values=torch.cat(parts["values"]), scores=scores, raw_scores=raw_scores, ended=ended,
    )


def add_advantages(exp: Experience, cfg: PPOConfig, kl_coef: float) -> Experience:
    """Fill ``kl``, ``rewards``, ``advantages``, ``returns`` (and ``keep``) of a rollout (in place; also returned).

    - ``gae``: per-token rewards (the score at the last token, ``-kl_coef x KL`` on every token when the KL is
      in the reward), GAE over the critic's values, whitened per batch if ``whiten_advantages``.
    - critic-free: the score becomes its group-baselined value (:func:`group_baseline_scores`), the per-token
      rewards are built from it the same way, and the advantage of each token is its return
      (:func:`discounted_returns`); ``reinforce_pp*`` then whiten over the batch's kept tokens (REINFORCE++).
      With the KL as a loss term (or ``kl_coef`` 0) every token of a response gets its sequence advantage.
    - ``dynamic_sampling``: rows of all-equal groups get ``keep`` False: no weight in any loss.
    """
    mask = exp.response_mask
    exp.kl = torch.where(mask.bool(), kl_per_token(exp.logprobs, exp.ref_logprobs, cfg.kl_estimator),
                         torch.zeros_like(exp.logprobs))
    reward_kl = kl_coef if cfg.kl_in == "reward" else 0.0
    if cfg.dynamic_sampling:
        exp.keep = ~all_equal_groups(exp.scores, cfg.num_generations).repeat_interleave(cfg.num_generations)
    if cfg.uses_critic:
        exp.rewards = per_token_rewards(exp.scores, exp.kl, mask, reward_kl)
        advantages, exp.returns = gae(exp.rewards, exp.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages and exp.loss_mask.sum() > 1:
            advantages = masked_whiten(advantages, exp.loss_mask)
    else:
        sequence = group_baseline_scores(exp.scores, cfg.num_generations, cfg.advantage_estimator,
                                         cfg.scale_rewards)
        exp.rewards = per_token_rewards(sequence, exp.kl, mask, reward_kl)
        advantages = exp.returns = discounted_returns(exp.rewards, mask, cfg.gamma)
        if cfg.advantage_estimator.startswith("reinforce_pp") and exp.loss_mask.sum() > 1:
            advantages = masked_whiten(advantages, exp.loss_mask)
    exp.advantages = advantages
    return exp

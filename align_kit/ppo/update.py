"""The update half of the RL loop: ``ppo_epochs`` passes of clipped minibatch updates over one rollout batch.

:class:`UpdateMixin` is mixed into :class:`align_kit.ppo.loop.PPOTrainer` (which owns the models, optimisers,
accelerator and guards); it reads ``self.cfg``, ``self.acc``, ``self.policy``, ``self.critic``, the optimisers and
schedulers, ``self.kl_ctl``, ``self.demonstrations``, ``self.pad_id`` and ``self.step_done``. Shapes as in
``experience.py``: ``b`` rows in a minibatch, ``P`` prompt tokens, ``T`` response tokens, ``V`` vocabulary.
"""

from __future__ import annotations

import contextlib

import torch

from align_kit.data.tokenize import Tokenized
from align_kit.engines import tis_weights
from align_kit.ppo.experience import Experience
from align_kit.ppo.forward import response_logits
from align_kit.ppo.kl import kl_per_token
from align_kit.ppo.losses import (
    aggregate,
    entropy_from_logits,
    logprobs_of,
    policy_loss,
    ptx_loss,
    value_loss,
)
from align_kit.ppo.modelset import causal_logits


def right_pad_demos(demos: list[Tokenized], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, L)`` ids, attention mask and labels of tokenised demonstrations (the SFT stage's
    :class:`~align_kit.data.tokenize.Tokenized`): padded on the right, labelled ``-100`` wherever the
    assistant mask is 0 (the prompt, template text) and on the padding.

    >>> ids, mask, labels = right_pad_demos([Tokenized([5, 6, 7], [0, 0, 1]), Tokenized([8, 9], [0, 1])], 0)
    >>> ids.tolist(), mask.tolist(), labels.tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]], [[-100, -100, 7], [-100, 9, -100]])
    """
    width = max(len(d.input_ids) for d in demos)
    pad = [width - len(d.input_ids) for d in demos]
    ids = torch.tensor([d.input_ids + [pad_id] * n for d, n in zip(demos, pad)], dtype=torch.long)
    mask = torch.tensor([[1] * len(d.input_ids) + [0] * n for d, n in zip(demos, pad)], dtype=torch.long)
    labels = torch.tensor([[t if m else -100 for t, m in zip(d.input_ids, d.assistant_masks)] + [-100] * n
                           for d, n in zip(demos, pad)], dtype=torch.long)
    return ids, mask, labels




class UpdateMixin:
    """``_update(exp)``: the optimiser steps of one RL step (see the module docstring)."""

    def _update(self, exp: Experience) -> dict:
        cfg, acc = self.cfg, self.acc
        size = cfg.mini_batch_size
        sums: dict[str, float] = {}
        count = 0
        # demonstrations for the PPO-ptx term: drawn from a generator seeded by the step and the process, so a
        # resumed run draws the same rows without storing any data-loader state
        ptx_draw = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step_done * 101 + acc.process_index)
        updates, stopped = 0, False
        for _ in range(cfg.ppo_epochs):
            if stopped:
                break
            order = torch.randperm(len(exp))
            for update in range(cfg.updates_per_epoch):
                finite, update_kl = True, 0.0
                for micro in range(cfg.gradient_accumulation_steps):
                    first = (update * cfg.gradient_accumulation_steps + micro) * size
                    mb = exp.select(order[first:first + size].to(exp.query_ids.device)).trimmed()
                    last = micro == cfg.gradient_accumulation_steps - 1
                    if cfg.ptx_coef > 0:
                        with acc.no_sync(self.policy):  # its gradient is reduced with the PPO loss's below
                            ptx = self._ptx_loss(ptx_draw)
                            finite &= bool(torch.isfinite(ptx))
                            acc.backward(cfg.ptx_coef * ptx / cfg.gradient_accumulation_steps)
                        sums["ptx_loss"] = sums.get("ptx_loss", 0.0) + ptx.item()
                    with contextlib.ExitStack() as stack:
                        if not last:  # all-reduce gradients once per optimiser step, not per minibatch
                            for model in self._trained():
                                stack.enter_context(acc.no_sync(model))
                        loss, parts = self._minibatch_loss(mb)
                        finite &= bool(torch.isfinite(loss))
                        acc.backward(loss / cfg.gradient_accumulation_steps)
                    for key, value in parts.items():
                        sums[key] = sums.get(key, 0.0) + value
                    update_kl += parts["approx_kl"] / cfg.gradient_accumulation_steps
                    count += 1
                bad = acc.reduce(torch.tensor(0.0 if finite else 1.0, device=acc.device), reduction="sum")
                if bad.item() > 0:
                    self._stop("the PPO loss became NaN or infinite")
                if cfg.target_kl is not None:
                    # approx KL of these minibatches under the policy before this update, averaged over the
                    # processes so that all of them stop together; past 1.5 x target the update is dropped
                    kl_now = acc.reduce(torch.tensor(update_kl, device=acc.device), reduction="mean").item()
                    if kl_now > 1.5 * cfg.target_kl:
                        for opt in self._optimizers():
                            opt.zero_grad(set_to_none=True)
                        stopped = True
                        break
                updates += 1
                for model, opt, sched in zip(self._trained(), self._optimizers(), self._schedulers()):
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
        local = torch.tensor([sums[k] / count for k in sorted(sums)], device=acc.device)
        out = dict(zip(sorted(sums), acc.reduce(local, reduction="mean").tolist()))
        out["updates"] = float(updates)  # optimiser steps taken; fewer than planned when target_kl stopped them
        return out

    def _trained(self) -> list:
        return [m for m in (self.policy, self.critic) if m is not None]

    def _optimizers(self) -> list:
        return [o for o in (self.opt_policy, self.opt_critic) if o is not None]

    def _schedulers(self) -> list:
        return [s for s in (self.sched_policy, self.sched_critic) if s is not None]

    def _minibatch_loss(self, mb: Experience) -> tuple[torch.Tensor, dict]:
        # loss_mask: the response tokens of the rows dynamic sampling kept (all of them when it is off)
        cfg, mask, prompt_len = self.cfg, mb.loss_mask, mb.query_ids.shape[1]
        # the policy's logits for the response tokens; each distinct prompt runs once (forward.py)
        logits = response_logits(self.policy, mb.query_ids, mb.query_mask, mb.response_ids, mb.response_mask,
                                 share_prompts=cfg.share_prompts)
        logits = logits / cfg.temperature
        logprobs = logprobs_of(logits, mb.response_ids)
        low = cfg.clip_range if cfg.clip_range_low is None else cfg.clip_range_low
        high = cfg.clip_range if cfg.clip_range_high is None else cfg.clip_range_high
        # on-policy runs skip the rollout forward: the policy has not moved since sampling, so these are the old ones
        old = mb.logprobs if cfg.needs_rollout_logprobs else logprobs.detach()
        advantages = mb.advantages
        if cfg.rollout.tis_cap is not None and mb.engine_logprobs is not None:  # the engine sampled, not the policy
            advantages = advantages * tis_weights(mb.logprobs, mb.engine_logprobs, cfg.rollout.tis_cap)
        pg = policy_loss(logprobs, old, advantages, mask, low, cfg.approx_kl_estimator,
                         clip_range_high=high, aggregation=cfg.loss_aggregation, max_tokens=cfg.max_new_tokens)
        entropy = entropy_from_logits(logits, mask)
        loss = pg.loss - cfg.entropy_coef * entropy
        parts = {"policy_loss": pg.loss.item(), "clip_fraction": pg.clip_fraction.item(),
                 "approx_kl": pg.approx_kl.item(), "entropy": entropy.item()}
        if cfg.kl_in == "loss" and self.kl_ctl.kl_coef > 0:
            # GRPO's KL term: the estimator (k3 in the recipes) between the current policy and the reference,
            # with gradient, aggregated like the policy loss
            kl = aggregate(kl_per_token(logprobs, mb.ref_logprobs, cfg.kl_estimator), mask, cfg.loss_aggregation,
                           cfg.max_new_tokens)
            loss = loss + self.kl_ctl.kl_coef * kl
            parts["kl_loss"] = kl.item()
        if self.critic is not None:
            values = self.critic(mb.input_ids, mb.attention_mask)[:, prompt_len - 1 : -1]
            vl = value_loss(values, mb.values, mb.returns, mask, cfg.clip_range_value)
            loss = loss + cfg.vf_coef * vl.loss
            parts.update(value_loss=vl.loss.item(), value_clip_fraction=vl.clip_fraction.item())
        return loss, parts

    def _ptx_loss(self, draw: torch.Generator) -> torch.Tensor:
        """SFT loss of ``mini_batch_size`` demonstrations drawn with ``draw`` (assistant tokens only)."""
        rows = torch.randint(len(self.demonstrations), (self.cfg.mini_batch_size,), generator=draw).tolist()
        ids, mask, labels = right_pad_demos([self.demonstrations[i] for i in rows], self.pad_id)
        device = self.acc.device
        logits = causal_logits(self.policy, ids.to(device), mask.to(device))
        return ptx_loss(logits, labels.to(device))

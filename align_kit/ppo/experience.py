"""One RL batch of experience: what a rollout produced and what the advantage estimator derived from it.

Shapes: ``B`` responses = prompts x ``G`` (``num_generations``), the ``G`` responses to one prompt in
adjacent rows (a group); ``P`` prompt tokens (left-padded), ``T`` response tokens (right-padded after
the EOS). Rows of ``query_ids + response_ids`` are the full sequences the policy saw, ``(B, P + T)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Experience:
    query_ids: torch.Tensor  # (B, P) long, prompts left-padded with the pad id
    query_mask: torch.Tensor  # (B, P) long, 1 = real prompt token
    response_ids: torch.Tensor  # (B, T) long, sampled tokens cut after the first stop id, then pad ids
    response_mask: torch.Tensor  # (B, T) long, 1 = real response token (the EOS included)
    logprobs: torch.Tensor  # (B, T) float, policy log-probs of the response tokens at rollout time
    ref_logprobs: torch.Tensor  # (B, T) float, reference log-probs of the same tokens
    values: torch.Tensor  # (B, T) float, critic V(s_t) of the state before response token t (0 without a critic)
    scores: torch.Tensor  # (B,) float, rewards after the missing-EOS/overlong penalties and normalisation
    raw_scores: torch.Tensor  # (B,) float, the weighted sum of the reward sources as they gave it (for logging)
    ended: torch.Tensor  # (B,) bool, whether the response contains a stop id
    kl: torch.Tensor | None = None  # (B, T) float, per-token KL estimate used in the reward
    rewards: torch.Tensor | None = None  # (B, T) float, -kl_coef * kl plus the score at the last real token
    advantages: torch.Tensor | None = None  # (B, T) float, GAE advantages (whitened when configured)
    returns: torch.Tensor | None = None  # (B, T) float, advantages + values before whitening: critic target
    keep: torch.Tensor | None = None  # (B,) bool, rows in the loss (dynamic sampling drops all-equal groups)
    engine_logprobs: torch.Tensor | None = None  # (B, T) float, a separate engine's log-probs of its samples (0 on pad)

    @property
    def loss_mask(self) -> torch.Tensor:
        """``(B, T)`` the response mask with dropped rows zeroed: the tokens the losses average over."""
        if self.keep is None:
            return self.response_mask
        return self.response_mask * self.keep.to(self.response_mask.dtype)[:, None]

    @property
    def input_ids(self) -> torch.Tensor:
        """``(B, P + T)`` full sequences."""
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``(B, P + T)`` 1 for real prompt and response tokens."""
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    def select(self, index: torch.Tensor) -> Experience:
        """Rows ``index`` (``(b,)`` longs) of every tensor: a minibatch."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            picked[f.name] = None if value is None else value[index]
        return Experience(**picked)

    def trimmed(self) -> Experience:
        """The same rows without the prompt columns that are padding in every row (on the left) and the response
        columns that are padding in every row (on the right): a minibatch's forward then spans its own longest
        prompt and response, not the whole batch's. Positions come from the masks, so nothing else changes."""
        start = int(self.query_mask.any(dim=0).long().argmax())  # the first column holding a real prompt token
        real = self.response_mask.any(dim=0).nonzero()
        end = int(real[-1]) + 1 if len(real) else 1
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in ("query_ids", "query_mask"):
                value = value[:, start:]
            elif value is not None and value.dim() == 2:  # the (B, T) per-token tensors
                value = value[:, :end]
            picked[f.name] = value
        return Experience(**picked)


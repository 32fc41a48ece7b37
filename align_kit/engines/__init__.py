"""Rollout engines: what samples the RL loop's responses. ``rollout.engine`` in the recipe picks one.

- ``hf``: transformers' ``generate`` on the policy itself, in the training process (the default).
- ``vllm``: a vLLM server in its own environment (:mod:`align_kit.engines.vllm_engine`), started once per run and
  given the policy's weights after every update. Its log-probs of the sampled tokens come back with them; the
  loss still uses the policy's own, and the gap between the two is logged each step (``engine_logprob_diff``)
  and, with ``rollout.tis_cap``, bounded by truncated importance sampling (:func:`tis_weights`).

Both engines take the same prompts, sampling settings and stop ids, and return ``(B, T)`` response ids in the
shape ``ppo.rollout.generate`` returns them (right-padded, not yet cut at the stop).
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)


def tis_weights(policy_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """``(B, T)`` truncated importance weights ``min(pi_policy / pi_engine, cap)`` of the sampled tokens.

    The engine sampled from its own distribution; the loss assumes the policy's. Weighting each token's advantage
    by the ratio corrects that, and the cap bounds the variance a rare token could add (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"). No gradient flows through the weights.

    >>> tis_weights(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -3.0]]), 2.0).tolist()
    [[1.0, 2.0]]
    """
    return torch.exp(policy_logprobs.detach() - engine_logprobs).clamp(max=cap)


def logprob_gap(policy_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean ``|engine - policy|`` log-prob over the real (mask 1) tokens; 0.0 when there are none.

    >>> logprob_gap(torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -2.0, -9.0]]), torch.tensor([[1, 1, 0]]))
    0.25
    """
    real = mask.bool()
    if not real.any():
        return 0.0
    return (policy_logprobs - engine_logprobs).abs()[real].mean().item()


def row_seeds(seed: int, step: int, process: int, rows: int) -> list[int]:
    """A distinct sampling seed per response row, a function of (run seed, step, process, row) alone: a resumed
    run draws the same samples, and the rows of one group differ.

    >>> row_seeds(0, 1, 0, 3)
    [4194304, 4194305, 4194306]
    """
    base = ((seed * 1_000_003 + step) * 64 + process) * 65_536
    return [(base + row) % (1 << 62) for row in range(rows)]


def right_pad(rows: list[list], pad, width: int | None = None, dtype=torch.long) -> torch.Tensor:
    """``(B, T)`` rows padded on the right to the longest (at least 1 column, or ``width``).

    >>> right_pad([[5, 6], [7]], 0).tolist()
    [[5, 6], [7, 0]]
    """
    width = width or max(1, max((len(r) for r in rows), default=0))
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=dtype)


def sharded(distributed_type: str, zero_stage: int | None = None) -> bool:
    """Whether an accelerate setup shards the parameters across processes (FSDP, DeepSpeed ZeRO-3).

    >>> sharded("MULTI_GPU"), sharded("FSDP"), sharded("DEEPSPEED", 2), sharded("DEEPSPEED", 3)
    (False, True, False, True)
    """
    return distributed_type == "FSDP" or (distributed_type == "DEEPSPEED" and zero_stage == 3)


def refuse_sharded(accelerator, key: str) -> None:
    """A vLLM engine is given one process's full weights; under FSDP / ZeRO-3 a process holds a shard, so the
    engine would load a fraction of the model. One clear error before any model loads or engine starts."""
    from align_kit.errors import ConfigError

    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    if sharded(kind, getattr(plugin, "zero_stage", None)):
        raise ConfigError(f"{key}: vllm syncs each process's full weights into its own engine, and {kind} shards "
                          "them across processes; expected a DDP or single-process launch (recipes/accelerate/"
                          "ddp.yaml), or the hf engine")


class HFRollout:
    """transformers' ``generate`` on the policy: no engine log-probs, nothing to sync."""

    name = "hf"

    def generate(self, policy, query_ids, query_mask, cfg, stop_ids, pad_id, step, process=0):
        from align_kit.ppo.rollout import generate

        return generate(policy, query_ids, query_mask, cfg, stop_ids, pad_id), None, {}

    def engine_for(self, policy, step: int) -> None:
        """No engine: the evaluation generates with the policy itself."""
        return None

    def close(self) -> None:
        pass


class VLLMRollout:
    """The vLLM server behind the RL loop: started on the first rollout (after a resume has loaded the
    checkpoint, so it starts from the resumed weights), re-synced whenever the policy has been updated since."""

    name = "vllm"

    def __init__(self, rollout_cfg, max_model_len: int, seed: int, log_path=None, device_index=None):
        self.cfg, self.max_model_len, self.seed = rollout_cfg, max_model_len, seed
        self.log_path, self.device_index = log_path, device_index
        self.engine = None
        self.synced_step: int | None = None
        self.pending: dict[str, float] = {}  # start/sync seconds spent outside a rollout, logged with the next one

    def _ready(self, policy, step: int) -> dict:
        from align_kit.engines.vllm_engine import VLLMEngine

        if self.engine is None:
            clock = time.perf_counter()
            self.engine = VLLMEngine(policy, self.max_model_len, self.seed, python=self.cfg.python,
                                     kv_cache_gib=self.cfg.kv_cache_gib, log_path=self.log_path,
                                     device_index=self.device_index)
            self.synced_step = step
            return {"time_engine_start": time.perf_counter() - clock}
        if self.synced_step != step:  # the policy was updated since the engine last saw it
            seconds = self.engine.sync(policy)
            self.synced_step = step
            return {"time_sync": seconds}
        return {}

    def generate(self, policy, query_ids, query_mask, cfg, stop_ids, pad_id, step, process=0):
        """``(B, T)`` response ids, ``(B, T)`` engine log-probs (0 on padding) and the start/sync seconds."""
        timings = {**self.pending, **self._ready(policy, step)}
        self.pending = {}
        prompts = [row[mask.bool()].tolist() for row, mask in zip(query_ids.cpu(), query_mask.cpu())]
        tokens, logprobs = self.engine.generate(
            prompts, row_seeds(cfg.seed, step, process, len(prompts)), max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, stop_ids=stop_ids)
        device = query_ids.device
        return (right_pad(tokens, pad_id).to(device), right_pad(logprobs, 0.0, dtype=torch.float32).to(device),
                timings)

    def engine_for(self, policy, step: int):
        """The engine holding ``policy``'s weights as of ``step`` (started or synced first): the run's evaluations
        generate with it. Its start or sync seconds are logged with the next rollout's."""
        for key, seconds in self._ready(policy, step).items():
            self.pending[key] = self.pending.get(key, 0.0) + seconds
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def make_rollout(cfg, max_model_len: int, log_path=None, process: int = 0):
    """The rollout engine of a PPOConfig ``cfg`` (``cfg.rollout.engine``)."""
    if cfg.rollout.engine == "hf":
        return HFRollout()
    return VLLMRollout(cfg.rollout, max_model_len, cfg.seed + process, log_path=log_path, device_index=process)

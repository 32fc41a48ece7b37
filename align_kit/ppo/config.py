"""The PPO trainer's settings: one dataclass, one comment per field, validated on construction.

Batch arithmetic (per process): each step samples ``batch_size`` prompts, so ``batch_size x processes``
episodes per step; each PPO epoch cuts them into minibatches of ``mini_batch_size`` rows and takes
one optimiser step every ``gradient_accumulation_steps`` minibatches. E.g. 16 prompts, minibatch 4,
accumulation 2: 16 / (4 x 2) = 2 optimiser steps per epoch, x ``ppo_epochs`` per PPO step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from align_kit.errors import ConfigError
from align_kit.ppo.kl import KL_ESTIMATORS


@dataclass
class PPOConfig:
    # --- models and memory
    memory_mode: str = "separate"  # "separate": four models; "lora": policy/reference share a base, critic/reward too
    critic_init: str = "reward"  # "reward" (InstructGPT) or "policy": which checkpoint the critic starts from
    quantize_frozen: bool = False  # load the frozen reference and reward model in 4-bit NF4 (bitsandbytes)
    lora_r: int = 16  # LoRA rank of the policy and critic adapters in lora mode
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on LoRA inputs; 0 keeps rollout and update forwards identical
    lora_target_modules: list[str] | None = None  # None: every linear layer of the attention and MLP blocks
    # --- schedule
    steps: int = 20  # PPO steps (rollout + update) in the run
    batch_size: int = 8  # prompts per process per step
    mini_batch_size: int = 4  # rows per forward/backward in the update
    gradient_accumulation_steps: int = 1  # minibatches per optimiser step
    ppo_epochs: int = 2  # passes over each rollout batch
    learning_rate: float = 1e-5  # policy learning rate
    critic_learning_rate: float = 1e-5  # critic learning rate
    weight_decay: float = 0.0  # AdamW weight decay for both optimisers
    warmup_steps: int = 0  # optimiser steps of linear warm-up
    lr_scheduler: str = "constant"  # "constant" or "linear" (decay to 0 at the last optimiser step)
    max_grad_norm: float = 1.0  # clip each model's gradient norm to this
    # --- sampling
    max_new_tokens: int = 32  # response length limit
    temperature: float = 1.0  # sampling temperature; log-probs use the same temperature
    top_k: int = 0  # 0 = off; top-k/top-p make the sampler differ from pi, so keep them off for exact PPO
    top_p: float = 1.0  # nucleus sampling mass; 1.0 = off
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop ids besides the tokenizer's EOS
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never stops
    missing_eos_score: float | None = None  # if set, the score of a response that never stops (e.g. -1)
    # --- rewards, KL and advantages
    score_norm: str = "none"  # "none" or "batch": whiten the scores within each rollout batch
    score_clip: float | None = None  # clip scores to [-score_clip, score_clip] after normalising
    kl_estimator: str = "k1"  # per-token KL in the reward: "k1", "k2" or "k3" (see ppo/kl.py)
    kl_coef: float = 0.05  # beta, the KL penalty weight (initial value if adaptive)
    adaptive_kl: bool = False  # Ziegler et al. 2019 controller towards kl_target
    kl_target: float = 6.0  # adaptive target for the mean per-response KL (k3 summed over tokens, nats)
    kl_horizon: float = 10000.0  # episodes over which the controller closes the error
    kl_limit: float | None = None  # stop when the mean per-response KL (k3, summed) exceeds this
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool = True  # normalise advantages per batch (mean 0, std 1 over real tokens)
    clip_range: float = 0.2  # PPO ratio clip epsilon
    clip_range_value: float = 0.2  # value clip epsilon (reward units)
    vf_coef: float = 0.1  # value-loss weight in the combined loss
    entropy_coef: float = 0.0  # entropy bonus weight (subtracted from the loss)
    ptx_coef: float = 0.0  # PPO-ptx (InstructGPT): weight of an SFT loss on demonstrations added per minibatch
    approx_kl_estimator: str = "k3"  # logged approx KL(old||new): "k3" or "sq" (0.5 * logratio^2)
    target_kl: float | None = None  # stop a step's remaining updates once approx KL passes 1.5 x this (SB3-style)
    # --- logging and checkpoints
    logging_steps: int = 1  # log metrics every N steps
    sample_steps: int = 5  # log a few decoded generations every N steps
    num_samples: int = 2  # generations per sample log
    save_steps: int = 10  # checkpoint every N steps (and at the end)
    save_total_limit: int | None = 2  # keep this many newest checkpoints; None keeps all
    resume: bool = True  # continue from the newest complete checkpoint in the output dir
    seed: int = 0  # seeds sampling, prompt order and minibatch order

    def __post_init__(self) -> None:
        choices = {
            "memory_mode": ("separate", "lora"), "critic_init": ("reward", "policy"),
            "lr_scheduler": ("constant", "linear"), "score_norm": ("none", "batch"),
            "kl_estimator": KL_ESTIMATORS, "approx_kl_estimator": ("k3", "sq"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ppo: {name} = {getattr(self, name)!r}; expected one of {list(allowed)}")
        positive = ("steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs",
                    "max_new_tokens", "logging_steps", "sample_steps", "save_steps", "lora_r")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"ppo: {name} = {getattr(self, name)!r}; expected a positive integer")
        per_update = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % per_update:
            raise ConfigError(
                f"ppo: batch_size {self.batch_size} is not a multiple of mini_batch_size x "
                f"gradient_accumulation_steps = {self.mini_batch_size} x {self.gradient_accumulation_steps}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("ppo: sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError(f"ppo: gamma {self.gamma} and lam {self.lam} must lie in [0, 1]")
        if self.clip_range <= 0 or self.clip_range_value <= 0:
            raise ConfigError("ppo: clip_range and clip_range_value must be positive")
        if self.kl_limit is not None and self.kl_limit <= 0:
            raise ConfigError(f"ppo: kl_limit {self.kl_limit} must be positive (or null for no limit)")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ConfigError(f"ppo: target_kl {self.target_kl} must be positive (or null for no early stop)")
        if self.ptx_coef < 0:
            raise ConfigError(f"ppo: ptx_coef {self.ptx_coef} must be >= 0 (0 turns PPO-ptx off)")
        if self.memory_mode == "lora" and self.critic_init != "reward":
            raise ConfigError("ppo: memory_mode 'lora' shares one base between critic and reward model, "
                              "so critic_init must be 'reward'")

    @property
    def updates_per_epoch(self) -> int:
        """Optimiser steps per PPO epoch: batch_size / (mini_batch_size x gradient_accumulation_steps)."""
        return self.batch_size // (self.mini_batch_size * self.gradient_accumulation_steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PPOConfig:
        """Build from a recipe section; an unknown key is an error that names the closest field."""
        import difflib

        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ConfigError(f"ppo: unknown setting {key!r}{hint}")
        return cls(**values)

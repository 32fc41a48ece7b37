"""The RL trainer's settings (PPO, GRPO, RLOO, REINFORCE++): one dataclass, one comment per field, validated
on construction, so a recipe's ``--check`` refuses what a run would refuse.

Batch arithmetic (per process): each step samples ``batch_size`` prompts and ``num_generations`` responses to
each, so ``batch_size x num_generations`` rows per process and ``x processes`` episodes per step. A prompt's
group of responses is generated, scored and given its advantages on one process, before any minibatch is cut,
so no baseline depends on how rows are split. Each epoch cuts the rows into minibatches of
``mini_batch_size`` rows and takes one optimiser step every ``gradient_accumulation_steps`` minibatches.
E.g. 4 prompts x 8 generations = 32 rows, minibatch 8, accumulation 2: 32 / (8 x 2) = 2 optimiser steps per
epoch, x ``ppo_epochs`` per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from align_kit.errors import ConfigError
from align_kit.ppo.kl import KL_ESTIMATORS

# advantage estimator -> whether it needs a critic (a learned value model with its own optimiser)
ESTIMATORS = {"gae": True, "grpo": False, "rloo": False, "reinforce_pp": False, "reinforce_pp_baseline": False}
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")  # baselines taken within a prompt's group
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")
ENGINES = ("hf", "vllm")


@dataclass
class RolloutConfig:
    """What samples the responses (``trainer.rollout`` in a recipe; align_kit/engines, docs/rl.md)."""

    engine: str = "hf"  # "hf": transformers' generate on the policy; "vllm": a vLLM server in its own environment
    python: str | None = None  # the vLLM environment's python; None: $ALIGN_KIT_VLLM_PYTHON or <repo>/.venv-vllm
    kv_cache_gib: float = 1.0  # memory the vLLM engine reserves for its KV cache (GiB)
    max_model_len: int | None = None  # longest prompt + response the engine holds; None: longest prompt + max_new_tokens
    tis_cap: float | None = None  # truncated importance sampling: each token's advantage x min(pi / pi_engine, cap)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"trainer.rollout.engine: expected one of {', '.join(ENGINES)}, found {self.engine!r}")
        if isinstance(self.kv_cache_gib, bool) or not isinstance(self.kv_cache_gib, (int, float)) \
                or self.kv_cache_gib <= 0:
            raise ConfigError(f"trainer.rollout.kv_cache_gib: expected a positive number, found {self.kv_cache_gib!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ConfigError(f"trainer.rollout.max_model_len: expected an integer >= 2, found {self.max_model_len!r}")
        if self.tis_cap is not None and (isinstance(self.tis_cap, bool) or not isinstance(self.tis_cap, (int, float))
                                         or self.tis_cap < 1):
            raise ConfigError(f"trainer.rollout.tis_cap: expected a number >= 1 (or null: off), found {self.tis_cap!r}")
        if self.tis_cap is not None and self.engine != "vllm":
            raise ConfigError(f"trainer.rollout.tis_cap: {self.tis_cap} corrects for a separate engine's sampling, "
                              "and engine hf samples from the policy itself; set rollout.engine: vllm or drop tis_cap")

    @classmethod
    def from_dict(cls, values: dict) -> RolloutConfig:
        return _from_dict(cls, values, "rollout.")


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
    # --- estimator
    advantage_estimator: str = "gae"  # gae (critic) | grpo | rloo | reinforce_pp | reinforce_pp_baseline (no critic)
    num_generations: int = 1  # responses per prompt (a group); grpo, rloo, reinforce_pp_baseline need >= 2
    scale_rewards: bool = True  # grpo: divide by the group's std; false = Dr. GRPO (centred only)
    # --- schedule
    steps: int = 20  # RL steps (rollout + update) in the run
    batch_size: int = 8  # prompts per process per step (x num_generations rows)
    mini_batch_size: int = 4  # rows (responses) per forward/backward in the update
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
    share_prompts: bool = True  # run each distinct prompt once per batch in every forward (ppo/forward.py)
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop ids besides the tokenizer's EOS
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never stops
    missing_eos_score: float | None = None  # if set, the score of a response that never stops (e.g. -1)
    # --- rewards, KL and advantages
    score_norm: str = "none"  # "none" or "batch": whiten the scores within each rollout batch
    score_clip: float | None = None  # clip scores to [-score_clip, score_clip] after normalising
    kl_estimator: str = "k1"  # per-token KL estimator: "k1", "k2" or "k3" (see ppo/kl.py); k3 for kl_in loss
    kl_in: str = "reward"  # "reward": -kl_coef x KL per token in the reward (PPO); "loss": + kl_coef x KL term (GRPO)
    kl_coef: float = 0.05  # beta, the KL penalty weight (initial value if adaptive); 0 = no KL at all
    adaptive_kl: bool = False  # Ziegler et al. 2019 controller towards kl_target
    kl_target: float = 6.0  # adaptive target for the mean per-response KL (k3 summed over tokens, nats)
    kl_horizon: float = 10000.0  # episodes over which the controller closes the error
    kl_limit: float | None = None  # stop when the mean per-response KL (k3, summed) exceeds this
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool = True  # normalise advantages per batch (mean 0, std 1 over real tokens)
    clip_range: float = 0.2  # PPO ratio clip epsilon (both sides unless the next two are set)
    clip_range_low: float | None = None  # ratio floor 1 - this; None = clip_range
    clip_range_high: float | None = None  # ratio ceiling 1 + this; None = clip_range (DAPO clip-higher: 0.28)
    loss_aggregation: str = "token_mean"  # token_mean (DAPO) | seq_mean_token_mean (GRPO) | constant (Dr. GRPO)
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal from the loss (DAPO); logged
    overlong_buffer: int = 0  # DAPO soft overlong penalty: the last N tokens before max_new_tokens ramp it in
    overlong_penalty: float = 1.0  # the penalty at max_new_tokens (0 at max_new_tokens - overlong_buffer)
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
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # engine that samples (hf | vllm), TIS cap

    def __post_init__(self) -> None:
        """Every field in its range (the one table, align_kit.ranges), then what fields must satisfy together.
        Keys are named as a recipe writes them (``trainer.<field>``)."""
        from align_kit.ranges import check_fields

        if isinstance(self.rollout, dict):  # from a recipe's trainer.rollout block
            self.rollout = RolloutConfig.from_dict(self.rollout)
        if self.rollout.engine == "vllm" and self.quantize_frozen and self.memory_mode == "lora":
            raise ConfigError("trainer.rollout.engine: vllm syncs full weights with the LoRA adapter merged in, and a "
                              "4-bit base (quantization block) cannot be merged exactly; drop quantization or use hf")
        choices = {
            "memory_mode": ("separate", "lora"), "critic_init": ("reward", "policy"),
            "lr_scheduler": ("constant", "linear"), "score_norm": ("none", "batch"),
            "kl_estimator": KL_ESTIMATORS, "approx_kl_estimator": ("k3", "sq"),
            "advantage_estimator": tuple(ESTIMATORS), "kl_in": ("reward", "loss"),
            "loss_aggregation": LOSS_AGGREGATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"trainer.{name}: expected one of {', '.join(allowed)}, found {getattr(self, name)!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "int | None") and value is not None and (isinstance(value, bool)
                                                                          or not isinstance(value, int)):
                raise ConfigError(f"trainer.{f.name}: expected an integer, found {value!r}")
        check_fields(self, "trainer")
        per_update = self.mini_batch_size * self.gradient_accumulation_steps
        if self.rows_per_process % per_update:
            raise ConfigError(
                f"trainer.batch_size: batch_size x num_generations = {self.batch_size} x {self.num_generations} = "
                f"{self.rows_per_process} rows per process; expected a multiple of mini_batch_size x "
                f"gradient_accumulation_steps = {self.mini_batch_size} x {self.gradient_accumulation_steps} = "
                f"{per_update}")
        if self.advantage_estimator in GROUP_ESTIMATORS and self.num_generations < 2:
            raise ConfigError(f"trainer.num_generations: advantage_estimator {self.advantage_estimator!r} takes its "
                              f"baseline within a prompt's group; expected >= 2, found {self.num_generations}")
        if self.dynamic_sampling and self.num_generations < 2:
            raise ConfigError("trainer.num_generations: dynamic_sampling drops groups whose rewards are all equal; "
                              f"expected >= 2, found {self.num_generations}")
        if self.overlong_buffer >= self.max_new_tokens:
            raise ConfigError(f"trainer.overlong_buffer: expected 0 (off) up to max_new_tokens - 1 = "
                              f"{self.max_new_tokens - 1}, found {self.overlong_buffer}")
        if self.memory_mode == "lora" and self.critic_init != "reward":
            raise ConfigError(f"trainer.critic_init: memory_mode 'lora' shares one base between critic and reward "
                              f"model; expected 'reward', found {self.critic_init!r}")

    @property
    def uses_critic(self) -> bool:
        """Whether the estimator learns a value model (only ``gae``); the others build no critic or its optimiser."""
        return ESTIMATORS[self.advantage_estimator]

    @property
    def needs_reference(self) -> bool:
        """Whether any KL to the reference is used (penalty, controller or limit); if not, no reference is loaded
        or run, and the logged ``kl`` is 0."""
        return self.kl_coef > 0 or self.adaptive_kl or self.kl_limit is not None

    @property
    def needs_rollout_logprobs(self) -> bool:
        """Whether the rollout runs the policy over its samples. A critic-free run with no KL and one optimiser
        step per rollout (one epoch, one update) is on-policy: the update's own log-probs, detached, are the old
        ones (ratio 1, the gradient of plain policy gradient), so that forward is skipped, as TRL's GRPO does.
        Not with a vLLM engine: its samples are scored by the policy at rollout (the loss's old log-probs, the
        logged engine gap, the TIS weights)."""
        return (self.uses_critic or self.needs_reference or self.ppo_epochs > 1 or self.updates_per_epoch > 1
                or self.rollout.engine != "hf")  # another engine sampled: the policy's own log-probs are the old ones

    @property
    def rows_per_process(self) -> int:
        """Responses per process per step: batch_size prompts x num_generations."""
        return self.batch_size * self.num_generations

    @property
    def updates_per_epoch(self) -> int:
        """Optimiser steps per epoch: batch_size x num_generations / (mini_batch_size x gradient_accumulation_steps)."""
        return self.rows_per_process // (self.mini_batch_size * self.gradient_accumulation_steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PPOConfig:
        """Build from a recipe section; an unknown key is an error that names the closest field."""
        return _from_dict(cls, values, "")



def _from_dict(cls, values: dict, prefix: str):
    """``cls(**values)``; an unknown key is an error naming the closest field (keys shown as ``trainer.<prefix>key``)."""
    import difflib

    if not isinstance(values, dict):
        raise ConfigError(f"trainer.{prefix.rstrip('.')}: expected a mapping, found {values!r}")
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"trainer.{prefix}{key}: not a {cls.__name__} setting{hint}")
    return cls(**values)

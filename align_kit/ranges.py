"""Ranges and meanings of recipe settings: a value that would train nothing, or report something meaningless,
is refused before anything loads with one line naming the key, the value and what is expected.

:data:`RANGES` is the one table: every numeric field of a recipe section, of each stage's trainer config (TRL's
SFTConfig, RewardConfig, DPOConfig, KTOConfig, transformers' TrainingArguments, align_kit's PPOConfig) and of each
stage's options has a rule here or a reason in :data:`UNCHECKED` (tests/unit/test_ranges.py asserts both
ways). Rules are keyed by where the value sits in a recipe (``trainer.gamma``, ``ppo.eval_prompts``); list items
share their list's rule (``data.train[2].weight`` is checked by ``data.train.weight``). A number must also be
finite: ``.inf`` or ``.nan`` would train nothing meaningful anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from align_kit.errors import ConfigError

_AT_LEAST_1 = (lambda v: v >= 1, "an integer of at least 1")
_AT_LEAST_0 = (lambda v: v >= 0, "a number >= 0")
_OFF_OR_MORE = (lambda v: v >= 0, "a number >= 0 (0 turns it off)")
_POSITIVE = (lambda v: v > 0, "a positive number")
_PROBABILITY = (lambda v: 0 <= v < 1, "a probability in [0, 1)")
_SHARE = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
_STEPS = (lambda v: v > 0, "a positive number of steps (or a ratio in (0, 1))")
_SEED = (lambda v: 0 <= v < 2**32, "a seed in [0, 2^32) (numpy refuses others)")
_FINITE = (lambda v: True, "a finite number")

RANGES = {
    # ---- recipe sections
    "seed": _SEED,
    "peft.r": (lambda v: v >= 1, "a rank of at least 1"),
    "peft.alpha": (lambda v: v > 0, "a positive number (the update is scaled by alpha / r: 0 trains nothing)"),
    "peft.dropout": _PROBABILITY,
    "data.eval_fraction": (lambda v: 0 <= v < 1, "a share in [0, 1): 0 holds nothing out, 1 would train on nothing"),
    "data.seed": _SEED,
    "data.train.max_rows": (lambda v: v >= 1, "a positive number of rows (or no max_rows)"),
    "data.eval.max_rows": (lambda v: v >= 1, "a positive number of rows (or no max_rows)"),
    "data.train.weight": (lambda v: v > 0, "a positive, finite mixing weight"),
    "data.eval.weight": (lambda v: v > 0, "a positive, finite mixing weight"),
    "evaluation.harness.limit": (lambda v: v >= 1, "a positive number of documents (or no limit)"),
    "evaluation.harness.batch_size": _AT_LEAST_1,
    "evaluation.kv_cache_gib": (lambda v: v > 0, "a positive number of GiB for the vLLM engine's KV cache"),
    # ---- trainer: transformers' TrainingArguments (every stage but ppo)
    "trainer.per_device_train_batch_size": _AT_LEAST_1,
    "trainer.per_device_eval_batch_size": _AT_LEAST_1,
    "trainer.gradient_accumulation_steps": _AT_LEAST_1,
    "trainer.num_train_epochs": _POSITIVE,
    "trainer.max_steps": (lambda v: v == -1 or v > 0, "a positive number of steps, or -1 to use num_train_epochs"),
    "trainer.learning_rate": _POSITIVE,
    "trainer.warmup_steps": (lambda v: v >= 0, "zero or more steps"),
    "trainer.weight_decay": _AT_LEAST_0,
    "trainer.adam_beta1": _PROBABILITY,
    "trainer.adam_beta2": _PROBABILITY,
    "trainer.adam_epsilon": _POSITIVE,
    "trainer.max_grad_norm": (lambda v: v >= 0, "a number >= 0 (0 turns clipping off)"),
    "trainer.label_smoothing_factor": _PROBABILITY,
    "trainer.neftune_noise_alpha": _POSITIVE,
    "trainer.torch_empty_cache_steps": _AT_LEAST_1,
    "trainer.logging_steps": _STEPS,
    "trainer.eval_steps": _STEPS,
    "trainer.save_steps": _STEPS,
    "trainer.eval_delay": _AT_LEAST_0,
    "trainer.eval_accumulation_steps": _AT_LEAST_1,
    "trainer.save_total_limit": (lambda v: v >= 1, "at least 1 checkpoint kept (or null to keep all)"),
    "trainer.data_seed": _SEED,
    "trainer.dataloader_num_workers": (lambda v: v >= 0, "zero or more worker processes"),
    "trainer.dataloader_prefetch_factor": _AT_LEAST_1,
    "trainer.ddp_bucket_cap_mb": _AT_LEAST_1,
    "trainer.ddp_timeout": (lambda v: v >= 1, "a positive number of seconds"),
    # ---- trainer: TRL's SFT, reward, DPO and KTO configs
    "trainer.router_aux_loss_coef": _OFF_OR_MORE,
    "trainer.dataset_num_proc": _AT_LEAST_1,
    "trainer.max_length": (lambda v: v >= 1, "a positive number of tokens (or null for no limit)"),
    "trainer.pad_to_multiple_of": _AT_LEAST_1,
    "trainer.precompute_ref_batch_size": _AT_LEAST_1,
    "trainer.center_rewards_coefficient": _OFF_OR_MORE,
    "trainer.beta": (lambda v: v > 0, "a positive number (the KL weight; 0 would ignore the reference)"),
    "trainer.label_smoothing": (lambda v: 0 <= v < 0.5, "a label-noise probability in [0, 0.5)"),
    "trainer.ld_alpha": _SHARE,
    "trainer.f_alpha_divergence_coef": _POSITIVE,
    "trainer.discopop_tau": _POSITIVE,
    "trainer.ref_model_mixup_alpha": _SHARE,
    "trainer.ref_model_sync_steps": _AT_LEAST_1,
    "trainer.desirable_weight": _POSITIVE,
    "trainer.undesirable_weight": _POSITIVE,
    # ---- trainer: align_kit's PPOConfig (ppo stage: PPO, GRPO, RLOO, REINFORCE++)
    "trainer.lora_r": _AT_LEAST_1,
    "trainer.lora_alpha": _POSITIVE,
    "trainer.lora_dropout": _PROBABILITY,
    "trainer.num_generations": _AT_LEAST_1,
    "trainer.steps": _AT_LEAST_1,
    "trainer.batch_size": _AT_LEAST_1,
    "trainer.mini_batch_size": _AT_LEAST_1,
    "trainer.ppo_epochs": _AT_LEAST_1,
    "trainer.critic_learning_rate": _POSITIVE,
    "trainer.max_new_tokens": _AT_LEAST_1,
    "trainer.temperature": (lambda v: v > 0, "a positive temperature (log-probs are divided by it)"),
    "trainer.top_k": (lambda v: v >= 0, "an integer >= 0 (0 turns it off)"),
    "trainer.top_p": (lambda v: 0 < v <= 1, "a probability mass in (0, 1] (1 turns it off)"),
    "trainer.missing_eos_penalty": _OFF_OR_MORE,
    "trainer.missing_eos_score": _FINITE,
    "trainer.score_clip": _POSITIVE,
    "trainer.kl_coef": _OFF_OR_MORE,
    "trainer.kl_target": _POSITIVE,
    "trainer.kl_horizon": _POSITIVE,
    "trainer.kl_limit": _POSITIVE,
    "trainer.gamma": (lambda v: 0 <= v <= 1, "a discount in [0, 1]"),
    "trainer.lam": (lambda v: 0 <= v <= 1, "a GAE lambda in [0, 1]"),
    "trainer.clip_range": _POSITIVE,
    "trainer.clip_range_low": (lambda v: 0 < v < 1, "a number in (0, 1) (the ratio floor is 1 - clip_range_low)"),
    "trainer.clip_range_high": _POSITIVE,
    "trainer.clip_range_value": _POSITIVE,
    "trainer.overlong_buffer": _OFF_OR_MORE,
    "trainer.overlong_penalty": _AT_LEAST_0,
    "trainer.vf_coef": _OFF_OR_MORE,
    "trainer.entropy_coef": _OFF_OR_MORE,
    "trainer.ptx_coef": (lambda v: v >= 0, "a number >= 0 (0 turns PPO-ptx off)"),
    "trainer.target_kl": _POSITIVE,
    "trainer.sample_steps": _AT_LEAST_1,
    "trainer.num_samples": (lambda v: v >= 0, "an integer >= 0"),
    # ---- stage options (the block named after the stage)
    "sft.verifier_max_new_tokens": _AT_LEAST_1,
    "dpo.verifier_max_new_tokens": _AT_LEAST_1,
    "kto.verifier_max_new_tokens": _AT_LEAST_1,
    "dpo.logprob_token_tile": (lambda v: v >= 0, "0 (TRL's tile) or a positive number of tokens"),
    "kto.logprob_token_tile": (lambda v: v >= 0, "0 (TRL's tile) or a positive number of tokens"),
    "reward.calibration_bins": (lambda v: v >= 1, "at least 1 bin (0 bins would report a perfect ECE of 0.0)"),
    "pretrain.block_size": (lambda v: v >= 2, "at least 2 tokens per block"),
    "pretrain.embedding_warmup_steps": (lambda v: v >= 0, "zero or more steps"),
    "pretrain.max_eval_blocks": _AT_LEAST_1,
    "pretrain.shuffle_buffer": (lambda v: v >= 0, "an integer >= 0 (0 or 1 keeps the shards' order)"),
    "pretrain.extend_vocab.max_new_tokens": _AT_LEAST_1,
    "pretrain.extend_vocab.sentencepiece.vocab_size": (lambda v: v >= 2, "at least 2 pieces"),
    "pretrain.extend_vocab.sentencepiece.character_coverage": (lambda v: 0.98 <= v <= 1.0,
                                                               "a share in [0.98, 1.0] (SentencePiece's range)"),
    "pretrain.extend_vocab.sentencepiece.max_sentences": _AT_LEAST_1,
    "ppo.reward_model_weight": _FINITE,
    "ppo.rewards.weight": _FINITE,
    "ppo.reward_timeout": (lambda v: v > 0, "a positive number of seconds"),
    "ppo.reward_fallback": _FINITE,
    "ppo.max_prompt_length": _AT_LEAST_1,
    "ppo.eval_max_new_tokens": _AT_LEAST_1,
    "ppo.eval_prompts": (lambda v: v >= 0, "an integer >= 0 (0 turns it off)"),
    "ppo.eval_samples": (lambda v: v >= 0, "an integer >= 0 (0 turns it off)"),
}

# Numeric fields deliberately without a range rule, and why.
UNCHECKED = {
    "trainer.seed": "reserved: align_kit fills it from the recipe's top-level seed (checked as `seed`)",
    "trainer.local_rank": "set by the launcher, not by a recipe",
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value(rule: str, key: str, value) -> None:
    """``value`` (shown as ``key``) inside the range :data:`RANGES` gives ``rule``; non-numbers and rules not in
    the table pass (types are checked where the recipe is built).

    >>> check_value("trainer.gamma", "trainer.gamma", 2)
    Traceback (most recent call last):
    align_kit.errors.ConfigError: trainer.gamma: expected a discount in [0, 1], found 2
    >>> check_value("trainer.learning_rate", "trainer.learning_rate", float("inf"))
    Traceback (most recent call last):
    align_kit.errors.ConfigError: trainer.learning_rate: expected a finite number, found inf
    """
    if not _is_number(value):
        return
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, found {value}")
    if rule in RANGES:
        test, expected = RANGES[rule]
        if not test(value):
            raise ConfigError(f"{key}: expected {expected}, found {value}")


def check_fields(obj, prefix: str, rule_prefix: str | None = None) -> None:
    """Every numeric field of dataclass ``obj`` (recursively: nested dataclasses and lists of them) in range.
    Keys shown are ``prefix.field`` (list items ``prefix.field[i]``); rules are looked up without indices."""
    rule_prefix = prefix if rule_prefix is None else rule_prefix
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key, rule = f"{prefix}.{f.name}" if prefix else f.name, f"{rule_prefix}.{f.name}" if rule_prefix else f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, key, rule)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_fields(item, f"{key}[{i}]", rule)
                else:
                    check_value(rule, f"{key}[{i}]", item)
        else:
            check_value(rule, key, value)


def check_ranges(recipe) -> None:
    """Each numeric setting of a built recipe in its range, or one line naming key, value and what is expected.

    >>> from align_kit.config import Recipe, build
    >>> check_ranges(build(Recipe, {"stage": "sft", "model": {"name_or_path": "x"}, "peft": {"alpha": 0}}))
    Traceback (most recent call last):
    align_kit.errors.ConfigError: peft.alpha: expected a positive number (the update is scaled by alpha / r: 0 trains nothing), found 0
    """
    check_value("seed", "seed", recipe.seed)
    for section in ("peft", "quantization", "data", "evaluation"):
        if getattr(recipe, section) is not None:
            check_fields(getattr(recipe, section), section)
    for key, value in recipe.trainer.items():
        check_value(f"trainer.{key}", f"trainer.{key}", value)
    if recipe.options is not None:
        check_fields(recipe.options, recipe.stage)
    out = Path(recipe.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: expected a folder (or a path that does not exist yet), found an existing "
                          f"file {out}")

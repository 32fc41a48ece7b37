"""RL from rewards (PPO, GRPO, RLOO, REINFORCE++): the SFT policy learns from a reward model and/or reward
functions and verifiers, with a KL leash to itself. align_kit's own loop (``align_kit/ppo/``); the recipe's
``trainer:`` block fills :class:`align_kit.ppo.config.PPOConfig` (``advantage_estimator`` picks the algorithm).

``model`` is the SFT checkpoint (the stage folder or its ``model/``), ``ppo.reward_model`` the reward
stage's output (optional when ``ppo.rewards`` lists functions or verifiers, see ``align_kit/ppo/rewards.py``).
``data`` gives prompts: conversations (the final assistant turn is dropped) or
preference pairs (their prompt). A ``peft:`` block selects and configures LoRA mode; a
``quantization:`` block loads the frozen parts (the shared bases in LoRA mode) in 4-bit. With
``trainer.ptx_coef > 0`` the same rows (a conversation, a pair's prompt with its chosen answer), tokenised
as the SFT stage does, are the demonstrations of the PPO-ptx term. Before and
after training the held-out prompts are answered greedily and scored; ``eval.json`` holds both.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from align_kit.errors import ConfigError
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.rewards import RewardSource

log = logging.getLogger("align_kit")
TRAINER_CONFIG = PPOConfig


@dataclass
class Options:
    reward_model: str | None = None
    """The reward stage's output folder (or its model/): a one-label sequence classifier. None: rewards only."""
    reward_model_weight: float = 1.0
    """Weight of the reward model's score when ``rewards`` are mixed in."""
    rewards: list[RewardSource] = dataclasses.field(default_factory=list)
    """Reward functions (module:function) and builtin verifiers, each with a weight (align_kit/ppo/rewards.py)."""
    reward_timeout: float = 10.0
    """Seconds a reward function may take for one response before it counts as hung."""
    reward_on_error: Literal["stop", "fallback"] = "stop"
    """A reward function that raises, hangs or returns no number: stop the run, or score reward_fallback."""
    reward_fallback: float = 0.0
    """The score given on a reward-function failure when reward_on_error is fallback (counted in the log)."""
    prompts_from: Literal["conversations", "preferences", "prompts"] = "conversations"
    """Read data as conversations (drop the last assistant turn), preference pairs (take the prompt), or prompt
    rows with reference fields for reward functions (align_kit/data/prompts.py: prompts, flan_cot, gsm8k)."""
    max_prompt_length: int = 256
    """Prompts longer than this many tokens are dropped (and counted in the log)."""
    verifier: str | None = None
    """module:function judging (prompt, response[, reference]) -> bool, or a builtin verifier name (exact,
    normalised, last_number, boxed, choice: against the reference field 'answer'); its accuracy on the held-out
    prompts is reported before and after."""
    eval_max_new_tokens: int = 16
    """Response length of the greedy before/after evaluation."""
    eval_prompts: int = 200
    """At most this many held-out prompts in the before/after evaluation."""
    eval_samples: int = 0
    """Also answer each held-out prompt this many times by sampling at the training temperature (0 = off)."""


OPTIONS = Options


def checkpoint_dir(path: str) -> Path:
    """A stage's output folder resolves to its ``model/``; any other folder is taken as it is."""
    folder = Path(path)
    if (folder / "model" / "config.json").exists():
        return folder / "model"
    if not (folder / "config.json").exists():
        raise ConfigError(f"'{path}' is not a checkpoint folder (no config.json in it or in its model/)")
    return folder


def _check(recipe) -> None:
    if recipe.data is None:
        raise ConfigError("data: expected prompts (data.train) for the ppo stage, found no data section")
    opts = recipe.options  # ranges of its numbers: align_kit.ranges
    if not opts.reward_model and not opts.rewards:
        raise ConfigError("ppo.rewards: expected a reward: ppo.reward_model (a reward stage's output) and/or "
                          "ppo.rewards (functions module:function or builtin verifiers), found neither")
    from align_kit.ppo.rewards import resolve_sources

    resolve_sources(opts.rewards)  # imports each function now: --check names one that is not importable
    if opts.verifier:
        try:
            eval_verifier(opts.verifier)
        except ConfigError as exc:  # resolved as a reward source: name the recipe key it came from
            raise ConfigError("ppo.verifier:" + str(exc).split(":", 1)[1]) from None
    cfg = recipe.trainer_config()  # PPOConfig checked its ranges and the batch arithmetic when the loader built it
    if cfg.uses_critic and not opts.reward_model and (cfg.memory_mode == "lora" or cfg.critic_init == "reward"):
        raise ConfigError(f"ppo.reward_model: advantage_estimator gae learns a critic that starts from the reward "
                          f"model (memory_mode {cfg.memory_mode}, critic_init {cfg.critic_init}); expected a reward "
                          "stage's output, found none. Or set trainer.critic_init: policy (separate mode), or pick a "
                          "critic-free estimator (grpo, rloo, reinforce_pp)")
    if opts.prompts_from == "prompts" and cfg.ptx_coef > 0:
        raise ConfigError(f"trainer.ptx_coef: PPO-ptx trains on demonstrations and prompt rows (ppo.prompts_from: "
                          f"prompts) have none; expected 0, found {cfg.ptx_coef} (or read conversations or preferences)")
    if cfg.rollout.engine == "vllm":  # its own environment must exist before any model loads
        from align_kit.engines.vllm_engine import vllm_python

        vllm_python(cfg.rollout.python)
    if recipe.peft is not None and cfg.memory_mode != "lora":
        raise ConfigError(f"trainer.memory_mode: a peft: block in a ppo recipe means LoRA mode; expected lora, found "
                          f"{cfg.memory_mode!r}")
    if cfg.memory_mode == "lora" and recipe.peft is None:
        raise ConfigError("peft: trainer.memory_mode: lora needs a peft: block (rank, alpha, target modules); "
                          "found none")


VALIDATORS = (_check,)


def eval_verifier(spec: str):
    """``ppo.verifier`` as a reward source called (prompt, response, reference): a builtin verifier name (against
    the reference field ``answer``) or module:function."""
    from align_kit.ppo.rewards import VERIFIER_NAMES, resolve_source

    if spec in VERIFIER_NAMES:
        return resolve_source(RewardSource(verifier=spec), 0)
    return resolve_source(RewardSource(function=spec), 0)


def ppo_config(recipe, family_targets) -> PPOConfig:
    """The trainer config, with LoRA and 4-bit settings taken from the recipe's peft/quantization blocks."""
    cfg = recipe.trainer_config()
    if recipe.peft is not None:
        p = recipe.peft
        targets = list(family_targets) if p.target_modules == "auto" else list(p.target_modules)
        cfg = dataclasses.replace(cfg, lora_r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout,
                                  lora_target_modules=targets)
    if recipe.quantization is not None:
        cfg = dataclasses.replace(cfg, quantize_frozen=True)
    return cfg


def encode_prompts(rows: list[dict], tokenizer, kind: str, max_len: int,
                   references: list[dict] | None = None) -> tuple[list[list[int]], list[str]]:
    """Chat-template token ids (generation prompt appended) and the last user text of each prompt.

    ``references`` (given, it is filled): each kept row's reference fields: a prompt row's ``reference``, or
    ``{"answer": ...}`` with the last assistant turn of a conversation (the chosen answer of a pair)."""
    ids, texts, dropped = [], [], 0
    for row in rows:
        messages = row["messages"][:-1] if kind == "conversations" else row["prompt"]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False).input_ids
        if len(enc) > max_len:
            dropped += 1
            continue
        ids.append(enc)
        texts.append(messages[-1]["content"])
        if references is not None:  # a conversation's (a pair's chosen) last answer is its reference "answer"
            reference = row.get("reference") or {"answer": (row["messages"] if kind == "conversations"
                                                           else row.get("chosen") or [{}])[-1].get("content")}
            references.append({k: v for k, v in reference.items() if v is not None})
    if dropped:
        log.warning("ppo: %d of %d prompts are longer than max_prompt_length=%d and were dropped", dropped,
                    len(rows), max_len)
    return ids, texts


def encode_demonstrations(rows: list[dict], tokenizer, kind: str, max_len: int, stop_ids: list[int]) -> list:
    """The PPO-ptx demonstrations: each row's whole conversation (a pair's prompt and chosen answer)
    tokenised exactly as the SFT stage does (``tokenize_conversation``: assistant replies and their
    end-of-turn token trained, everything else masked; a row the template cannot mark is a DataError naming
    it). Rows longer than ``max_len`` tokens are left out and counted in the log.
    """
    from align_kit.data.tokenize import tokenize_conversation

    demos, dropped = [], 0
    for i, row in enumerate(rows):
        messages = row["messages"] if kind == "conversations" else row["prompt"] + row["chosen"]
        demo = tokenize_conversation(tokenizer, messages, stop_ids, where=("data.train (all sources, in order)", i))
        if len(demo.input_ids) > max_len:
            dropped += 1
            continue
        demos.append(demo)
    if dropped:
        log.warning("ppo: %d of %d demonstrations are longer than %d tokens and were left out of the ptx term",
                    dropped, len(rows), max_len)
    return demos


def run(recipe) -> Path:
    from accelerate import Accelerator

    from align_kit.data.sources import load_data
    from align_kit.families import family_for_model_type, get_family, get_template, stop_token_ids
    from align_kit.models import load_tokenizer, resolve_dtype
    from align_kit.ppo.evaluate import evaluate_policy
    from align_kit.ppo.loop import PPOTrainer
    from align_kit.ppo.modelset import build_models
    from align_kit.ppo.rewards import Rewarder, resolve_sources
    from align_kit.rundir import finish_run, start_run
    from align_kit.stages import common

    opts, out = recipe.options, Path(recipe.output_dir)
    policy_dir = checkpoint_dir(recipe.model.name_or_path)
    reward_dir = checkpoint_dir(opts.reward_model) if opts.reward_model else None
    tokenizer = load_tokenizer(dataclasses.replace(recipe.model, name_or_path=str(policy_dir)))
    stops = stop_token_ids(tokenizer, get_template(tokenizer.align_kit_template))
    kind = {"conversations": "instruction", "preferences": "preference", "prompts": "prompt"}[opts.prompts_from]
    data = load_data(recipe.data, kind)
    train_refs: list[dict] = []
    train_ids, train_texts = encode_prompts(data.train, tokenizer, opts.prompts_from, opts.max_prompt_length,
                                            train_refs)
    eval_refs: list[dict] = []
    eval_ids, eval_texts = encode_prompts(data.eval[: opts.eval_prompts], tokenizer, opts.prompts_from,
                                          opts.max_prompt_length, eval_refs)
    if recipe.model.family == "auto":
        from transformers import AutoConfig

        family = family_for_model_type(AutoConfig.from_pretrained(policy_dir).model_type)
    else:
        family = get_family(recipe.model.family)
    cfg = ppo_config(recipe, family.lora_targets)
    acc = Accelerator()
    common.check_processes_joined(acc)
    if cfg.rollout.engine == "vllm":
        from align_kit.engines import refuse_sharded

        refuse_sharded(acc, "trainer.rollout.engine")
    models = build_models(cfg, str(policy_dir), str(reward_dir) if reward_dir else None,
                          dtype=resolve_dtype(recipe.model.dtype), pad_token_id=tokenizer.pad_token_id)
    if acc.is_main_process:
        log.info("ppo: advantage_estimator %s; %s", cfg.advantage_estimator, models.describe())
    rewarder = None
    if opts.rewards:
        rewarder = Rewarder(resolve_sources(opts.rewards), opts.reward_model_weight if reward_dir else None,
                            opts.reward_timeout, opts.reward_on_error, opts.reward_fallback)
    run_info = start_run(recipe, data, extra={
        "train_prompts": len(train_ids), "eval_prompts": len(eval_ids),
        # prompts over max_prompt_length are dropped by encode_prompts (logged there): counted here too
        "long_prompts_dropped": {"train": len(data.train) - len(train_ids),
                                 "eval": len(data.eval[: opts.eval_prompts]) - len(eval_ids)}})
    verify = None
    if opts.verifier:  # the evaluation calls verify(prompt, response): each held-out prompt's reference is looked up
        source, refs = eval_verifier(opts.verifier), dict(zip(eval_texts, eval_refs))

        def verify(prompt: str, response: str) -> bool:
            return bool(source.score(prompt, response, refs.get(prompt, {})))
    demos = None
    if cfg.ptx_coef > 0:
        limit = opts.max_prompt_length + cfg.max_new_tokens
        demos = encode_demonstrations(data.train, tokenizer, opts.prompts_from, limit, stops)
        if not demos:
            raise ConfigError(f"ppo: ptx_coef {cfg.ptx_coef} needs demonstrations, but every training row is longer "
                              f"than max_prompt_length + max_new_tokens = {limit} tokens; raise either or set "
                              "trainer.ptx_coef: 0")
    trainer = PPOTrainer(cfg, models, tokenizer, train_ids, out, accelerator=acc, stop_token_ids=stops,
                         demonstrations=demos, rewarder=rewarder, prompt_rows=list(zip(train_texts, train_refs)))

    def evaluate() -> dict:
        if not eval_ids or not acc.is_main_process:
            return {}
        policy = acc.unwrap_model(trainer.policy)
        critic = acc.unwrap_model(trainer.critic) if trainer.critic is not None else None
        # the rollout engine answers when it is vLLM: started (or synced) with the policy's current weights
        return evaluate_policy(models, policy, critic,
                               tokenizer, eval_ids, eval_texts, stops, opts.eval_max_new_tokens, verify,
                               samples=opts.eval_samples, temperature=cfg.temperature, top_k=cfg.top_k,
                               top_p=cfg.top_p, seed=recipe.seed,
                               engine=trainer.engine.engine_for(policy, trainer.step_done))

    try:
        evals = {"before": evaluate()} if trainer.step_done == 0 else {}
        trainer.train(keep_engine=True)
        evals["after"] = evaluate()
    finally:
        trainer.close()
    evals["generated_by"] = cfg.rollout.engine
    if acc.is_main_process:
        log.info("ppo eval: before %s after %s", evals.get("before"), evals["after"])
    finish_run(run_info, None, evals)  # the loop logged as it went: log_history.jsonl is read back for the report
    acc.wait_for_everyone()
    return out

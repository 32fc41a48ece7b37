"""The RL loop: rollout -> rewards and KL -> advantages -> several epochs of clipped updates, repeated.

One loop for PPO (GAE over a critic) and the critic-free estimators (GRPO, RLOO, REINFORCE++): the
estimator changes which models exist and how advantages are made (``rollout.add_advantages``), nothing else.
Runs on one process or many under ``accelerate launch``: each process samples its own prompts
(``batch_size`` of them, a disjoint slice of the global batch) and all ``num_generations`` responses to
each, so a group is never split across processes; the gradients of the policy (and the critic) are
averaged by DDP. Metrics are averaged over processes before they are logged.

Outputs in ``output_dir``, laid out as every stage's (``align_kit.rundir``): ``log_history.jsonl`` (one line
of metrics per logged step), ``samples.jsonl`` (decoded generations), ``checkpoint-N/`` (see ``checkpoint.py``)
and ``model/``, the final policy that loads with plain ``transformers`` (LoRA merged; the adapter also in
``adapter/``) together with the tokenizer. The update half (minibatch losses, optimiser steps) is ``update.py``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from align_kit import rundir
from align_kit.data.tokenize import Tokenized
from align_kit.engines import logprob_gap, make_rollout
from align_kit.errors import AlignKitError
from align_kit.ppo import checkpoint
from align_kit.ppo.advantages import all_equal_groups, masked_mean
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.experience import Experience
from align_kit.ppo.kl import AdaptiveKLController, FixedKLController, kl_per_token
from align_kit.ppo.losses import explained_variance
from align_kit.ppo.modelset import PPOModels, load_trainable_state, trainable_state
from align_kit.ppo.rewards import Rewarder, RewardFunctionError
from align_kit.ppo.rollout import add_advantages, score_responses
from align_kit.ppo.update import UpdateMixin

log = logging.getLogger(__name__)


class PPODivergedError(AlignKitError):
    """Training stopped because a loss became NaN/inf or the KL passed ``kl_limit``."""


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, P)`` ids and mask of prompts padded on the left to the longest one.

    >>> ids, mask = left_pad([[5, 6], [7]], 0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask


class PPOTrainer(UpdateMixin):
    """Trains ``models.policy`` (and the critic) with PPO on ``prompts`` (token-id lists, chat template applied).

    ``demonstrations`` (conversations tokenised as the SFT stage does, with their assistant masks) feed the
    PPO-ptx term when ``cfg.ptx_coef > 0``: each policy minibatch also takes ``mini_batch_size`` of them
    and adds ``ptx_coef`` times their SFT loss (the assistant tokens only).

    ``rewarder`` (:class:`align_kit.ppo.rewards.Rewarder`) mixes reward functions, verifiers and the reward
    model; without it the reward model's score is the reward. ``prompt_rows[i]`` is ``(text, reference)`` of
    ``prompts[i]``: the last user message and the row's reference fields, which reward functions receive.
    """

    def __init__(self, cfg: PPOConfig, models: PPOModels, tokenizer, prompts: list[list[int]], output_dir,
                 accelerator=None, stop_token_ids: list[int] | None = None,
                 demonstrations: list[Tokenized] | None = None, rewarder: Rewarder | None = None,
                 prompt_rows: list[tuple[str, dict]] | None = None):
        from accelerate import Accelerator

        if not prompts:
            raise AlignKitError("ppo: no prompts to train on")
        if rewarder is None and not models.has_reward_model:
            raise AlignKitError("ppo: no reward: give a reward model or reward functions")
        if rewarder is not None and (prompt_rows is None or len(prompt_rows) != len(prompts)):
            raise AlignKitError("ppo: reward functions need each prompt's text and reference fields (prompt_rows)")
        if (models.critic is not None) != cfg.uses_critic:
            raise AlignKitError(f"ppo: advantage_estimator {cfg.advantage_estimator!r} "
                                f"{'needs' if cfg.uses_critic else 'takes no'} critic; the models were built for "
                                "the other kind")
        if cfg.ptx_coef > 0 and not demonstrations:
            raise AlignKitError("ppo: ptx_coef > 0 needs demonstrations (prompt + reference answer) for the "
                                "SFT term; none were given")
        for i, demo in enumerate(demonstrations or []):
            if len(demo.input_ids) != len(demo.assistant_masks) or 1 not in demo.assistant_masks:
                raise AlignKitError(f"ppo: demonstration {i} has {len(demo.input_ids)} tokens and "
                                    f"{sum(demo.assistant_masks)} trained of {len(demo.assistant_masks)} mask entries; "
                                    "expected one mask entry per token and at least one trained token")
        self.cfg, self.models, self.tokenizer, self.prompts = cfg, models, tokenizer, prompts
        self.rewarder, self.prompt_rows = rewarder, prompt_rows
        self.demonstrations = demonstrations or []
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.acc = accelerator or Accelerator()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = tokenizer.eos_token_id
        self.stop_ids = sorted({*(stop_token_ids or []), *cfg.stop_token_ids, *([eos] if eos is not None else [])})
        if not self.stop_ids:
            raise AlignKitError("ppo: the tokenizer has no EOS and no stop_token_ids were given")
        self._seed(cfg.seed + self.acc.process_index)
        # critic-free estimators build no critic and no critic optimiser (None throughout)
        if models.critic is not None:
            self.policy, self.critic = self.acc.prepare(models.policy, models.critic)
        else:
            self.policy, self.critic = self.acc.prepare(models.policy), None
        for frozen in (models.reference, models.reward):
            if frozen is not None and not getattr(frozen, "is_loaded_in_4bit", False):
                frozen.to(self.acc.device)
        total = cfg.steps * cfg.ppo_epochs * cfg.updates_per_epoch
        self.opt_policy = self._optimizer(models.policy, cfg.learning_rate)
        self.sched_policy = self._scheduler(self.opt_policy, total)
        self.opt_critic = self.sched_critic = None
        if models.critic is not None:
            self.opt_critic = self._optimizer(models.critic, cfg.critic_learning_rate)
            self.sched_critic = self._scheduler(self.opt_critic, total)
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(cfg.kl_coef))
        self.step_done = 0
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, prompt permutation) cache
        self.last_checkpoint: Path | None = None
        # the sampler (align_kit/engines): a vLLM server starts on the first rollout, after any resume below
        self.engine = make_rollout(cfg, cfg.rollout.max_model_len or max(map(len, prompts)) + cfg.max_new_tokens,
                                   self.output_dir / f"engine-{self.acc.process_index}.log",
                                   self.acc.local_process_index)
        if cfg.resume:
            self._resume()
        if self.acc.is_main_process:  # the log keeps the steps up to the checkpoint this run starts from
            rundir.resume_log(self.output_dir, self.step_done)

    # ---- setup ------------------------------------------------------------------------------------

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _optimizer(self, model, lr: float) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.weight_decay)

    def _scheduler(self, opt, total: int):
        warm, linear = self.cfg.warmup_steps, self.cfg.lr_scheduler == "linear"

        def factor(i: int) -> float:
            if i < warm:
                return (i + 1) / warm
            return max(0.0, (total - i) / max(1, total - warm)) if linear else 1.0

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    # ---- data ---------------------------------------------------------------------------------------

    def _batch_prompts(self, step: int) -> list[list[int]]:
        """This process's prompts for ``step`` (0-based), each ``num_generations`` times in adjacent rows."""
        return [self.prompts[i] for i in self._batch_indices(step)]

    def _batch_indices(self, step: int) -> list[int]:
        """Indices of this process's prompts for ``step``: a function of the step alone, so resume needs no
        data state. The global batch of ``batch_size x processes`` walks a seeded permutation per epoch; each
        index is repeated ``num_generations`` times (one group, on this process)."""
        n, per, world = len(self.prompts), self.cfg.batch_size, self.acc.num_processes
        start = step * per * world + self.acc.process_index * per
        picked = []
        for k in range(start, start + per):
            epoch, pos = divmod(k, n)
            if self._order[0] != epoch:
                gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
                self._order = (epoch, torch.randperm(n, generator=gen).tolist())
            picked += [self._order[1][pos]] * self.cfg.num_generations
        return picked

    # ---- one step -----------------------------------------------------------------------------------

    def step(self) -> dict:
        """One RL step: rollout, advantages, ``ppo_epochs`` of minibatch updates. Returns averaged metrics."""
        cfg, acc = self.cfg, self.acc
        exp, sources, timings = self._rollout(self._batch_indices(self.step_done))
        metrics = self._rollout_metrics(exp, sources)
        self._guard(metrics, ("score", "kl") + (("value_mean",) if self.critic is not None else ()))
        if cfg.kl_limit is not None and metrics["kl"] > cfg.kl_limit:
            self._stop(f"mean KL to the reference {metrics['kl']:.3f} exceeds kl_limit {cfg.kl_limit}")
        clock = time.perf_counter()
        metrics.update(self._update(exp))
        timings["time_update"] = time.perf_counter() - clock
        metrics.update(timings)  # seconds on the main process (the slowest rank sets the pace anyway)
        self.kl_ctl.update(metrics["kl"], cfg.rows_per_process * acc.num_processes)
        self.step_done += 1
        metrics["step"] = self.step_done
        if self.step_done % cfg.sample_steps == 0 or self.step_done == 1:
            self._log_samples(exp)
        return metrics

    def _rollout(self, indices: list[int]) -> tuple[Experience, dict[str, torch.Tensor], dict[str, float]]:
        """Generate for the prompts ``indices`` (groups in adjacent rows), score, and fill the advantages.

        Returns the experience, each reward source's ``(B,)`` raw values, and the generation/scoring seconds. A
        reward function that fails on any process stops every process here, before the next collective."""
        cfg, acc = self.cfg, self.acc
        query_ids, query_mask = left_pad([self.prompts[i] for i in indices], self.pad_id)
        policy_u = acc.unwrap_model(self.policy)
        critic_u = acc.unwrap_model(self.critic) if self.critic is not None else None
        self.models.eval()
        query_ids, query_mask = query_ids.to(acc.device), query_mask.to(acc.device)
        clock = time.perf_counter()
        response_ids, engine_logprobs, engine_times = self.engine.generate(
            policy_u, query_ids, query_mask, cfg, self.stop_ids, self.pad_id, self.step_done, acc.process_index)
        timings = {"time_generate": time.perf_counter() - clock - sum(engine_times.values()), **engine_times}
        clock = time.perf_counter()
        sources: dict[str, torch.Tensor] = {}
        failure: list[str] = []
        reward_fn = None
        if self.rewarder is not None:
            def reward_fn(ids, mask, model_scores):
                texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
                rows = [self.prompt_rows[i] for i in indices]
                try:
                    total, parts = self.rewarder.score([r[0] for r in rows], texts, [r[1] for r in rows], model_scores)
                except RewardFunctionError as exc:  # every process must learn of it before the next collective
                    failure.append(str(exc))
                    return torch.zeros(len(texts))
                sources.update(parts)
                return total
        exp = score_responses(self.models, policy_u, critic_u, query_ids, query_mask, response_ids, cfg,
                              self.stop_ids, self.pad_id, reward_fn=reward_fn)
        if engine_logprobs is not None:  # the engine's log-probs of its samples beside the policy's recomputed ones
            exp.engine_logprobs = engine_logprobs * exp.response_mask
            gap = logprob_gap(exp.logprobs, exp.engine_logprobs, exp.response_mask)
            timings["engine_logprob_diff"] = acc.reduce(torch.tensor(gap, device=acc.device), reduction="mean").item()
        if self.rewarder is not None:
            failed = acc.reduce(torch.tensor(float(bool(failure)), device=acc.device), reduction="sum").item()
            if failed:
                self._stop(failure[0] if failure else "a reward function failed on another process (see its log)",
                           advice="fix the function, or set ppo.reward_on_error: fallback, and resume")
        add_advantages(exp, cfg, self.kl_ctl.kl_coef)
        timings["time_score"] = time.perf_counter() - clock
        return exp, sources, timings

    def _rollout_metrics(self, exp: Experience, sources: dict[str, torch.Tensor]) -> dict:
        """The rollout's numbers, averaged over processes (counts summed)."""
        cfg, acc, mask = self.cfg, self.acc, exp.response_mask
        # KL per response, summed over its tokens with k3 (unbiased and never negative, unlike k1), whatever
        # estimator the reward uses: the controller, kl_limit and the logs all read this one number.
        k3 = kl_per_token(exp.logprobs, exp.ref_logprobs, "k3")
        seq_kl = torch.where(mask.bool(), k3, torch.zeros_like(k3)).sum(dim=1)
        names = ["score", "score_penalised", "kl", "response_length", "ended"]
        values = [exp.raw_scores.mean(), exp.scores.mean(), seq_kl.mean(), mask.sum(1).float().mean(),
                  exp.ended.float().mean()]
        if self.critic is not None:
            names += ["explained_variance", "value_mean", "return_mean"]
            values += [explained_variance(exp.values, exp.returns, mask) if mask.sum() > 1 else torch.tensor(0.0),
                       masked_mean(exp.values, mask), masked_mean(exp.returns, mask)]
        for name, per_row in sources.items():  # each reward source on its own (raw values, before weights)
            names.append(f"reward/{name}")
            values.append(per_row.mean())
        if cfg.num_generations > 1:  # how often a whole group agrees (no signal for a group baseline)
            names.append("groups_all_equal")
            values.append(all_equal_groups(exp.scores.float().cpu(), cfg.num_generations).float().mean())
        rollout_stats = torch.stack([torch.as_tensor(v).float().cpu() for v in values])
        metrics = dict(zip(names, acc.reduce(rollout_stats.to(acc.device), reduction="mean").tolist()))
        if cfg.dynamic_sampling:  # groups left out of the loss this step, over all processes
            dropped = torch.tensor(float((~exp.keep).sum().item() // cfg.num_generations), device=acc.device)
            metrics["groups_dropped"] = acc.reduce(dropped, reduction="sum").item()
        if self.rewarder is not None and self.rewarder.on_error == "fallback":
            names = sorted(self.rewarder.fallbacks)
            counts = torch.tensor([float(self.rewarder.fallbacks[n]) for n in names], device=acc.device)
            for name, count in zip(names, acc.reduce(counts, reduction="sum").tolist()):
                metrics[f"reward_fallbacks/{name}"] = count  # running totals since this process started
        metrics["kl_coef"] = self.kl_ctl.kl_coef
        return metrics

    # ---- guards and logging ----------------------------------------------------------------------------

    def _guard(self, metrics: dict, keys) -> None:
        bad = [k for k in keys if not math.isfinite(metrics[k])]
        if bad:
            self._stop(f"{', '.join(bad)} became NaN or infinite")

    def _stop(self, why: str, advice: str = "lower the learning rate or raise kl_coef and resume") -> None:
        kept = self.last_checkpoint.name if self.last_checkpoint else "none written yet"
        raise PPODivergedError(f"ppo stopped at step {self.step_done + 1}: {why}. The last good checkpoint "
                               f"is kept ({kept}); {advice}.")

    def _log_samples(self, exp: Experience) -> None:
        if not self.acc.is_main_process:
            return
        rows = []
        for i in range(min(self.cfg.num_samples, len(exp))):
            prompt = exp.query_ids[i][exp.query_mask[i].bool()]
            response = exp.response_ids[i][exp.response_mask[i].bool()]
            rows.append({"step": self.step_done, "prompt": self.tokenizer.decode(prompt),
                         "response": self.tokenizer.decode(response), "score": round(exp.raw_scores[i].item(), 4)})
        with open(self.output_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                log.info("sample step %d score %.3f: %r -> %r", row["step"], row["score"], row["prompt"][-80:],
                         row["response"][:120])

    def _log_metrics(self, metrics: dict) -> None:
        if not self.acc.is_main_process:
            return
        rundir.append_log(self.output_dir, metrics)
        critic = (f"  vf {metrics['value_loss']:.4f}  ev {metrics['explained_variance']:.3f}"
                  if "value_loss" in metrics else "")
        log.info("step %d/%d  score %.3f  kl %.3f  kl_coef %.4f  entropy %.3f  clip %.3f  approx_kl %.4f  "
                 "pg %.4f%s  len %.1f", metrics["step"], self.cfg.steps, metrics["score"], metrics["kl"],
                 metrics["kl_coef"], metrics["entropy"], metrics["clip_fraction"], metrics["approx_kl"],
                 metrics["policy_loss"], critic, metrics["response_length"])

    # ---- checkpoints and the run -------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        acc = self.acc
        final = rundir.checkpoint_path(self.output_dir, self.step_done)
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            rundir.staging(final)
        acc.wait_for_everyone()
        checkpoint.write_rng(tmp, acc.process_index)
        if acc.is_main_process:
            optimizers = {"policy": self.opt_policy.state_dict(), "sched_policy": self.sched_policy.state_dict()}
            critic_state = {}  # a critic-free run writes an empty critic.safetensors
            if self.critic is not None:
                optimizers.update(critic=self.opt_critic.state_dict(), sched_critic=self.sched_critic.state_dict())
                critic_state = trainable_state(acc.unwrap_model(self.critic))
            state = {"step": self.step_done, "episodes": self.step_done * self.cfg.rows_per_process * acc.num_processes,
                     "num_processes": acc.num_processes, "config": self.cfg.to_dict(),
                     rundir.MARKER_KEY: rundir.COMPLETE}
            checkpoint.write_files(tmp, trainable_state(acc.unwrap_model(self.policy)), critic_state, optimizers,
                                   self.kl_ctl.state_dict(), state)
        acc.wait_for_everyone()
        if acc.is_main_process:
            checkpoint.finalize(tmp, final, self.cfg.save_total_limit)
        acc.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def _resume(self) -> None:
        path = rundir.last_checkpoint(self.output_dir)
        if path is None:
            return
        saved = checkpoint.read(path, self.acc.process_index)
        load_trainable_state(self.acc.unwrap_model(self.policy), saved["policy"])
        self.opt_policy.load_state_dict(saved["optimizers"]["policy"])
        self.sched_policy.load_state_dict(saved["optimizers"]["sched_policy"])
        if self.critic is not None:
            load_trainable_state(self.acc.unwrap_model(self.critic), saved["critic"])
            self.opt_critic.load_state_dict(saved["optimizers"]["critic"])
            self.sched_critic.load_state_dict(saved["optimizers"]["sched_critic"])
        elif saved["critic"]:
            raise AlignKitError(f"ppo: {path.name} was written by a run with a critic (advantage_estimator gae); "
                                f"this run's estimator {self.cfg.advantage_estimator!r} has none")
        self.kl_ctl.load_state_dict(saved["kl_controller"])
        self.step_done = int(saved["trainer_state"]["step"])
        if saved["rng"] is not None and saved["trainer_state"]["num_processes"] == self.acc.num_processes:
            checkpoint.set_rng_state(saved["rng"])
        else:  # a different process count cannot replay the same samples; continue with fresh seeds
            log.warning("checkpoint was written by %s processes, now %d: RNG streams reseeded",
                        saved["trainer_state"]["num_processes"], self.acc.num_processes)
            self._seed(self.cfg.seed + 7919 * self.step_done + self.acc.process_index)
        self.last_checkpoint = path
        if self.acc.is_main_process:
            log.info("resumed from %s (step %d of %d)", path.name, self.step_done, self.cfg.steps)

    def train(self, keep_engine: bool = False) -> Path:
        """Run until ``cfg.steps``, checkpointing every ``save_steps``; returns the final policy directory.

        The rollout engine is closed at the end unless ``keep_engine`` (the stage evaluates the trained policy
        with it, then calls :meth:`close`); a failure closes it either way."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            while self.step_done < self.cfg.steps:
                metrics = self.step()
                if self.step_done % self.cfg.logging_steps == 0 or self.step_done == self.cfg.steps:
                    self._log_metrics(metrics)
                if self.step_done % self.cfg.save_steps == 0 or self.step_done == self.cfg.steps:
                    self.save_checkpoint()
        except BaseException:
            self.close()
            raise
        if not keep_engine:
            self.close()
        return self.save_policy()

    def close(self) -> None:
        """Stop the rollout engine (a vLLM server process); nothing to do for the hf engine."""
        self.engine.close()

    def save_policy(self) -> Path:
        """Write ``model/`` (plain transformers weights, LoRA merged unless the base is 4-bit) and the tokenizer."""
        self.acc.wait_for_everyone()
        # every rank: under FSDP / ZeRO-3 gathering the weights to save them is collective
        rundir.save_final(self.policy, self.tokenizer, self.output_dir, accelerator=self.acc)
        self.acc.wait_for_everyone()
        return rundir.model_dir(self.output_dir)

"""Before/after numbers for a PPO run: greedy answers to held-out prompts, their mean reward-model score
and, when the task has one, the share a verifier accepts; optionally the same for sampled answers at the
training temperature, which is the distribution PPO optimises (greedy decoding can hide its gains and
its losses: sharpening a policy moves sampled accuracy long before it flips an argmax).

The answers come from transformers' ``generate`` on the policy, or from the run's vLLM engine
(``trainer.rollout.engine: vllm``) holding the policy's current weights: the same prompt tokens, stop ids and
decoding (greedy answers equal across engines, tests/stages/test_vllm_engine.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from align_kit.ppo.loop import left_pad
from align_kit.ppo.modelset import PPOModels
from align_kit.ppo.rollout import cut_at_stop


@torch.no_grad()
def evaluate_policy(models: PPOModels, policy, critic, tokenizer, prompt_ids: list[list[int]],
                    prompt_texts: list[str] | None, stop_ids: list[int], max_new_tokens: int,
                    verify: Callable[[str, str], bool] | None = None, batch_size: int = 32,
                    samples: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, engine=None) -> dict:
    """Mean reward-model score (when the run has a reward model), verifier accuracy, ended share and mean length
    of greedy responses.

    With ``samples > 0`` each prompt is also answered ``samples`` times by sampling as the rollout does
    (``temperature``, ``top_k``, ``top_p``; seeded, so before and after see the same random stream), and
    ``sampled_reward_mean`` and ``sampled_verifier_accuracy`` are added.

    ``policy``/``critic`` are the unwrapped trained models (the reward model is read through ``models``,
    which in lora mode is the critic with its adapter off). ``prompt_texts[i]`` is what the verifier
    sees as the prompt of ``prompt_ids[i]`` (the last user turn). ``engine``: a
    :class:`~align_kit.engines.vllm_engine.VLLMEngine` already holding the policy's weights answers instead of
    ``policy.generate``; its samples are seeded per row from ``seed``, so before and after see the same seeds.
    """
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    common = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad, bos_token_id=None)
    was_training = policy.training
    policy.eval()
    texts = prompt_texts if verify is not None else None
    greedy = _answer(models, policy, critic, tokenizer, prompt_ids, texts, stop_ids, pad, verify, batch_size,
                     GenerationConfig(do_sample=False, **common), engine)
    n = max(len(greedy["ended"]), 1)
    result = {"ended": sum(greedy["ended"]) / n, "response_length": sum(greedy["lengths"]) / n,
              "prompts": len(greedy["ended"])}
    if greedy["scores"]:
        result["reward_mean"] = sum(greedy["scores"]) / n
    if greedy["correct"]:
        result["verifier_accuracy"] = sum(greedy["correct"]) / len(greedy["correct"])
    if samples > 0:
        device = next(policy.parameters()).device
        # evaluation must not shift the training run's random streams (this device's, and the CPU's)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            sampled = _answer(models, policy, critic, tokenizer, [p for p in prompt_ids for _ in range(samples)],
                              None if texts is None else [t for t in texts for _ in range(samples)], stop_ids, pad,
                              verify, batch_size, GenerationConfig(do_sample=True, temperature=temperature,
                                                                   top_k=top_k, top_p=top_p, **common),
                              engine, seed)
        if sampled["scores"]:
            result["sampled_reward_mean"] = sum(sampled["scores"]) / len(sampled["scores"])
        result["samples_per_prompt"] = samples
        if sampled["correct"]:
            result["sampled_verifier_accuracy"] = sum(sampled["correct"]) / len(sampled["correct"])
    policy.train(was_training)
    return result


def _answer(models: PPOModels, policy, critic, tokenizer, prompt_ids: list[list[int]], prompt_texts: list[str] | None,
            stop_ids: list[int], pad: int, verify, batch_size: int, gen_cfg, engine=None,
            seed: int = 0) -> dict[str, list]:
    """Generate with ``gen_cfg`` (on ``engine`` when given) and collect per-answer reward scores, ended flags,
    lengths and verdicts."""
    device = next(policy.parameters()).device
    got: dict[str, list] = {"scores": [], "ended": [], "lengths": [], "correct": []}
    for start in range(0, len(prompt_ids), batch_size):
        ids, mask = left_pad(prompt_ids[start:start + batch_size], pad)
        ids, mask = ids.to(device), mask.to(device)
        if engine is None:
            out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)[:, ids.shape[1]:]
        else:
            out = _engine_answers(engine, prompt_ids[start:start + batch_size], gen_cfg, stop_ids, pad, seed,
                                  start).to(device)
        resp, resp_mask, has_stop = cut_at_stop(out, stop_ids, pad)
        if models.has_reward_model:
            full_ids, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, resp_mask], 1)
            head = models.reward_forward(critic, full_ids, full_mask)
            last = ids.shape[1] - 1 + resp_mask.sum(1)
            got["scores"] += head.gather(1, last[:, None])[:, 0].tolist()
        got["ended"] += has_stop.tolist()
        got["lengths"] += resp_mask.sum(1).tolist()
        if verify is not None and prompt_texts is not None:
            texts = tokenizer.batch_decode(resp, skip_special_tokens=True)
            got["correct"] += [bool(verify(p, r)) for p, r in zip(prompt_texts[start:start + batch_size], texts)]
    return got


def _engine_answers(engine, prompts: list[list[int]], gen_cfg, stop_ids: list[int], pad: int, seed: int,
                    first_row: int):
    """``(B, T)`` right-padded responses from a vLLM engine with ``gen_cfg``'s decoding: greedy is temperature 0;
    sampled rows get seeds ``seed``-derived and fixed by their row, so every evaluation draws the same ones."""
    from align_kit.engines import right_pad, row_seeds

    sample = bool(gen_cfg.do_sample)
    seeds = row_seeds(seed, 0, 63, first_row + len(prompts))[first_row:]  # process slot 63: not a rollout stream
    tokens, _ = engine.generate(prompts, seeds, max_new_tokens=gen_cfg.max_new_tokens,
                                temperature=gen_cfg.temperature if sample else 0.0,
                                top_k=(gen_cfg.top_k or 0) if sample else 0,
                                top_p=(gen_cfg.top_p if gen_cfg.top_p is not None else 1.0) if sample else 1.0,
                                stop_ids=stop_ids)
    return right_pad(tokens, pad)

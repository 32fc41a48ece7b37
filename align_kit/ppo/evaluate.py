"""Before/after numbers for a PPO run: greedy answers to held-out prompts, their mean reward-model score
and, when the task has one, the share a verifier accepts."""

from __future__ import annotations

from collections.abc import Callable

import torch

from align_kit.ppo.loop import left_pad
from align_kit.ppo.modelset import PPOModels
from align_kit.ppo.rollout import cut_at_stop


@torch.no_grad()
def evaluate_policy(models: PPOModels, policy, critic, tokenizer, prompt_ids: list[list[int]],
                    prompt_texts: list[str] | None, stop_ids: list[int], max_new_tokens: int,
                    verify: Callable[[str, str], bool] | None = None, batch_size: int = 32) -> dict:
    """Mean reward, verifier accuracy, ended share and mean length of greedy responses.

    ``policy``/``critic`` are the unwrapped trained models (the reward model is read through ``models``,
    which in lora mode is the critic with its adapter off). ``prompt_texts[i]`` is what the verifier
    sees as the prompt of ``prompt_ids[i]`` (the last user turn).
    """
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                               pad_token_id=pad, bos_token_id=None)
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    scores, correct, ended, lengths = [], [], [], []
    for start in range(0, len(prompt_ids), batch_size):
        ids, mask = left_pad(prompt_ids[start:start + batch_size], pad)
        ids, mask = ids.to(device), mask.to(device)
        out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)[:, ids.shape[1]:]
        resp, resp_mask, has_stop = cut_at_stop(out, stop_ids, pad)
        full_ids, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, resp_mask], 1)
        head = models.reward_forward(critic, full_ids, full_mask)
        last = ids.shape[1] - 1 + resp_mask.sum(1)
        scores += head.gather(1, last[:, None])[:, 0].tolist()
        ended += has_stop.tolist()
        lengths += resp_mask.sum(1).tolist()
        if verify is not None and prompt_texts is not None:
            texts = tokenizer.batch_decode(resp, skip_special_tokens=True)
            correct += [bool(verify(p, r)) for p, r in zip(prompt_texts[start:start + batch_size], texts)]
    policy.train(was_training)
    n = max(len(scores), 1)
    result = {"reward_mean": sum(scores) / n, "ended": sum(ended) / n, "response_length": sum(lengths) / n,
              "prompts": len(scores)}
    if correct:
        result["verifier_accuracy"] = sum(correct) / len(correct)
    return result

"""Shared prompts (ppo/forward.py) and per-minibatch padding trims (Experience.trimmed) are speed-ups only: on a tiny
Llama the response log-probs, the loss and every parameter's gradient match the plain forward over
``prompt + response`` rows, generation samples the same tokens, and a model whose cache would drop positions
falls back to the plain forward."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from align_kit.ppo.config import PPOConfig
from align_kit.ppo.experience import Experience
from align_kit.ppo.forward import response_logits
from align_kit.ppo.loop import left_pad
from align_kit.ppo.losses import logprobs_of
from align_kit.ppo.rollout import cut_at_stop, generate

PAD, EOS = 0, 2


def tiny_llama(cls_name: str = "Llama", **extra):
    import transformers

    config = getattr(transformers, f"{cls_name}Config")(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, **extra)
    torch.manual_seed(0)
    return getattr(transformers, f"{cls_name}ForCausalLM")(config).eval()


def batch(groups: int = 3, generations: int = 4, seed: int = 1):
    """Left-padded prompts of different lengths, each repeated ``generations`` times, rows shuffled (as a minibatch
    is), and right-padded responses of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 40, (n,), generator=gen).tolist() for n in (5, 9, 7, 4)[:groups]]
    rows = [p for p in prompts for _ in range(generations)]
    order = torch.randperm(len(rows), generator=gen).tolist()
    query_ids, query_mask = left_pad([rows[i] for i in order], PAD)
    sampled = torch.randint(3, 40, (len(rows), 6), generator=gen)
    for row, stop in enumerate(torch.randint(0, 8, (len(rows),), generator=gen).tolist()):
        if stop < 6:
            sampled[row, stop] = EOS
    response_ids, response_mask, _ = cut_at_stop(sampled, [EOS], PAD)
    return query_ids, query_mask, response_ids, response_mask


def forwards_seen(model) -> list[tuple[int, int]]:
    """Record ``(rows, columns)`` of every input the model's forward receives."""
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    return seen


def loss_and_grads(model, share: bool, q, qm, r, rm):
    model.zero_grad(set_to_none=True)
    logprobs = logprobs_of(response_logits(model, q, qm, r, rm, share_prompts=share), r)
    advantages = torch.linspace(-1, 1, len(r))[:, None]
    loss = -(logprobs * advantages * rm).sum() / rm.sum()
    loss.backward()
    return logprobs.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_gives_the_plain_forwards_logprobs_loss_and_gradients(lora):
    model = tiny_llama()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    q, qm, r, rm = batch()
    seen = forwards_seen(model)
    plain = loss_and_grads(model, False, q, qm, r, rm)
    assert seen == [(12, q.shape[1] + r.shape[1])]
    seen.clear()
    shared = loss_and_grads(model, True, q, qm, r, rm)
    # the shared path ran: the 3 distinct prompts once, then the 12 rows' responses over the gathered cache
    assert seen == [(3, q.shape[1]), (12, r.shape[1])]
    real = rm.bool()
    torch.testing.assert_close(shared[0][real], plain[0][real], rtol=0, atol=1e-5)
    torch.testing.assert_close(shared[1], plain[1], rtol=0, atol=1e-6)
    assert shared[2].keys() == plain[2].keys() and any(g.abs().sum() > 0 for g in plain[2].values())
    for name, grad in plain[2].items():
        torch.testing.assert_close(shared[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # negative control: gathering the wrong prompt's cache would be caught by this comparison
    wrong = loss_and_grads(model, False, q.roll(1, dims=0), qm.roll(1, dims=0), r, rm)
    assert not torch.allclose(wrong[0][real], plain[0][real], atol=1e-3)


def test_no_repeated_prompt_or_a_short_sliding_window_runs_the_plain_forward():
    q, qm, r, rm = batch(groups=4, generations=1)
    model = tiny_llama()
    seen = forwards_seen(model)
    response_logits(model, q, qm, r, rm)
    assert seen == [(4, q.shape[1] + r.shape[1])]  # nothing to share
    windowed = tiny_llama("Mistral", sliding_window=4)  # the cache would keep 4 of the 15 positions
    seen = forwards_seen(windowed)
    q, qm, r, rm = batch()
    logits = response_logits(windowed, q, qm, r, rm)
    assert seen == [(12, q.shape[1] + r.shape[1])] and logits.shape == (12, r.shape[1], 40)


def test_generation_with_a_shared_prompt_prefill_samples_the_same_tokens():
    model = tiny_llama()
    q, qm, _, _ = batch()
    cfg = PPOConfig(advantage_estimator="grpo", num_generations=4, batch_size=3, mini_batch_size=12,
                    max_new_tokens=6, kl_coef=0.0)
    seen = forwards_seen(model)
    torch.manual_seed(5)
    shared = generate(model, q, qm, cfg, [EOS], PAD)
    assert seen[0] == (3, q.shape[1] - 1)  # the prefill: 3 distinct prompts, all columns but the last
    torch.manual_seed(5)
    plain = generate(model, q, qm, replace(cfg, share_prompts=False), [EOS], PAD)
    assert torch.equal(shared, plain) and shared.shape[1] > 1


def test_trimmed_minibatch_drops_only_all_padding_columns_and_keeps_the_logprobs():
    q, qm, r, rm = batch()
    q = torch.cat([torch.full((12, 3), PAD), q], dim=1)  # 3 columns of padding in every row
    qm = torch.cat([torch.zeros(12, 3, dtype=qm.dtype), qm], dim=1)
    r, rm = torch.cat([r, torch.full((12, 2), PAD)], dim=1), torch.cat([rm, torch.zeros(12, 2, dtype=rm.dtype)], 1)
    n, t = len(r), r.shape[1]
    per_token = torch.arange(n * t, dtype=torch.float).view(n, t)
    exp = Experience(q, qm, r, rm, logprobs=per_token, ref_logprobs=per_token, values=per_token,
                     scores=torch.ones(n), raw_scores=torch.ones(n), ended=torch.ones(n, dtype=torch.bool),
                     advantages=per_token)
    trimmed = exp.trimmed()
    width = int(rm.sum(1).max())
    assert trimmed.query_ids.shape[1] == q.shape[1] - 3 and trimmed.response_ids.shape[1] == width
    assert torch.equal(trimmed.query_ids, q[:, 3:]) and torch.equal(trimmed.advantages, per_token[:, :width])
    assert torch.equal(trimmed.scores, exp.scores)
    model = tiny_llama()
    with torch.no_grad():
        full = logprobs_of(response_logits(model, q, qm, r, rm), r)[:, :width]
        short = logprobs_of(response_logits(model, trimmed.query_ids, trimmed.query_mask, trimmed.response_ids,
                                            trimmed.response_mask), trimmed.response_ids)
    real = trimmed.response_mask.bool()
    torch.testing.assert_close(short[real], full[real], rtol=0, atol=1e-5)

"""Batched greedy/sampled generation from conversations (verifier accuracy: ``align_kit.evaluation``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from align_kit.errors import ConfigError


def load_callable(spec: str) -> Callable:
    """``module:function`` -> the function (e.g. ``align_kit.quickstart.tasks:verify``)."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"verifier '{spec}': expected module:function of an importable module") from None


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 16, batch_size: int = 32,
             do_sample: bool = False, **sampling) -> list[str]:
    """Responses to conversations (each ending with a user turn), decoded without special tokens."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    outs = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[i: i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outs

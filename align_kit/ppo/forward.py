"""Response logits of a causal LM, with each distinct prompt computed once.

An RL batch holds ``num_generations`` responses to each prompt, so most of the tokens a plain forward processes
are copies of the same prompt: in the quickstart 8 responses of ~3 tokens follow each ~40-token prompt. With
``share_prompts`` the distinct prompts run once (keeping their keys and values), the cache is gathered out to
every row, and only the response tokens run on top of it. The gradient still reaches the prompt's computation
through the gathered keys and values (the gather's backward sums the rows' contributions), so the loss and its
gradient are those of the plain forward up to float rounding (``tests/unit/test_shared_prompt.py``).

Shapes: ``b`` rows, ``P`` prompt tokens (left-padded), ``T`` response tokens (right-padded), ``U`` distinct
prompts, ``V`` vocabulary. The logits at position ``P - 1 + t`` predict response token ``t``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` positions that skip left padding, as ``generate`` computes them.

    Every forward (rollout and update) passes these, so a left-padded prompt gives the same
    log-probs whatever its padding.

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])).tolist()
    [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _inner(model: nn.Module) -> nn.Module:
    """The transformers model under a DDP and/or PEFT wrapper."""
    from peft import PeftModel

    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.base_model.model if isinstance(model, PeftModel) else model


def _forward_params(model: nn.Module) -> tuple[bool, str]:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do: then the LM head runs on
    the response positions only, not on the prompt, which with a 150k vocabulary is most of the logits), and the
    name of its cache argument (``cache`` from transformers 5.2x, ``past_key_values`` before)."""
    params = inspect.signature(_inner(model).forward).parameters
    return "logits_to_keep" in params, "cache" if "cache" in params else "past_key_values"


def distinct_rows(query_ids: torch.Tensor, query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U,)`` index of the first row of each distinct prompt and ``(b,)`` each row's distinct prompt (0..U-1),
    in order of first appearance.

    >>> first, inverse = distinct_rows(torch.tensor([[7, 8], [5, 6], [7, 8], [5, 6]]), torch.ones(4, 2))
    >>> first.tolist(), inverse.tolist()
    ([0, 1], [0, 1, 0, 1])
    """
    key = torch.cat([query_ids, query_mask.to(query_ids.dtype)], dim=1)
    seen: dict[tuple, int] = {}
    first, inverse = [], []
    for row, values in enumerate(key.tolist()):
        slot = seen.setdefault(tuple(values), len(seen))
        if slot == len(first):
            first.append(row)
        inverse.append(slot)
    return torch.tensor(first, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def _plain_cache(model: nn.Module, length: int):
    """An empty ``DynamicCache`` for ``model`` if every layer keeps all ``length`` positions (full attention, or a
    sliding window at least that long); None otherwise (the caller runs the plain forward)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=_inner(model).config)
    except Exception:  # a model whose cache is not a DynamicCache (recurrent/hybrid layers): no sharing
        return None
    for layer in cache.layers:
        window = getattr(layer, "sliding_window", None)
        if not isinstance(layer, DynamicLayer) or (window is not None and window < length):
            return None
    return cache


def shared_prompt_cache(model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor, upto: int,
                        length: int):
    """The keys and values of the first ``upto`` prompt columns, computed once per distinct prompt and gathered out
    to all ``b`` rows, with the ``(b, 1, V)`` logits of column ``upto - 1``; ``(cache, logits, name)``, ``name``
    being the forward's cache argument. None when no prompt repeats, ``upto`` is 0, or the model's cache would not
    keep ``length`` positions: the caller then runs the plain forward."""
    first, inverse = distinct_rows(query_ids, query_mask)
    cache = _plain_cache(model, length) if upto > 0 and len(first) < len(inverse) else None
    if cache is None:
        return None
    keeps_logits, cache_arg = _forward_params(model)
    first, inverse = first.to(query_ids.device), inverse.to(query_ids.device)
    ids, mask = query_ids[first, :upto], query_mask[first, :upto]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True,
                **{cache_arg: cache}, **({"logits_to_keep": 1} if keeps_logits else {}))
    cache.batch_select_indices(inverse)  # (U, ...) -> (b, ...) keys and values: a gather, differentiable
    return cache, out.logits[:, -1:][inverse], cache_arg


def response_logits(model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                    response_mask: torch.Tensor, share_prompts: bool = True) -> torch.Tensor:
    """``(b, T, V)`` logits predicting each response token: those of positions ``P - 1 .. P + T - 2``.

    Positions skip the left padding (:func:`position_ids_from_mask`), as in generation.
    With ``share_prompts`` and repeated prompts among the rows, each distinct prompt runs once (see the module
    docstring); otherwise one forward over ``prompt + response``.
    """
    prompt_len, width = query_ids.shape[1], response_ids.shape[1]
    mask = torch.cat([query_mask, response_mask], dim=1)
    keeps_logits, _ = _forward_params(model)
    shared = (shared_prompt_cache(model, query_ids, query_mask, prompt_len, prompt_len + width) if share_prompts
              else None)
    if shared is None:
        ids = torch.cat([query_ids, response_ids], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False,
                       **({"logits_to_keep": width + 1} if keeps_logits else {})).logits
        return logits[:, -(width + 1):-1]
    cache, last, cache_arg = shared  # last: (b, 1, V), predicts response token 0
    positions = position_ids_from_mask(mask)[:, prompt_len:]
    tail = model(input_ids=response_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                 **{cache_arg: cache}).logits
    return torch.cat([last, tail[:, :-1]], dim=1)

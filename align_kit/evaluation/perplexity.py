"""Perplexity: of held-out texts (``align-kit eval --task perplexity``) and of pretraining blocks.

Perplexity is ``exp(sum NLL / tokens)`` over every scored token (the ``token_perplexity`` metric of
:mod:`align_kit.metrics`). Comparing two models is fair only over the same tokens: when a stage adds a token
the base model never saw between documents (continued pretraining's EOS after every document, ``pretrain.
add_eos``), the base model's "before" figure pays for predicting that token and the token after it, and the
gain looks larger than it is. :func:`block_perplexity` therefore also reports the figure without the
positions whose target is such a token or follows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from align_kit.errors import DataError, describe
from align_kit.evaluation.generated import progress
from align_kit.metrics import compute


def _windows(ids: list[int], max_length: int) -> list[list[int]]:
    """Split a long token list into consecutive windows of at most ``max_length`` tokens.

    >>> _windows(list(range(7)), 3)
    [[0, 1, 2], [3, 4, 5], [6]]
    """
    return [ids[i:i + max_length] for i in range(0, len(ids), max_length)]


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8) -> list[list[float]]:
    """Natural-log probability of every predicted token of each text, one list per text.

    A text longer than ``max_length`` is cut into consecutive windows; the first token of each window is
    given (not scored), so each window scores ``len - 1`` tokens. Padding is never scored.
    """
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pieces: list[tuple[int, list[int]]] = []  # (text index, window ids)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError("texts", i + 1, "text", describe(text), "a non-empty string")
        for window in _windows(tokenizer(text)["input_ids"], max_length):
            if len(window) > 1:
                pieces.append((i, window))
    out: list[list[float]] = [[] for _ in texts]
    device = next(model.parameters()).device
    for start in progress(range(0, len(pieces), batch_size), "perplexity", total=-(-len(pieces) // batch_size)):
        chunk = pieces[start:start + batch_size]
        width = max(len(w) for _, w in chunk)
        ids = torch.tensor([w + [pad] * (width - len(w)) for _, w in chunk], device=device)
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for _, w in chunk], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        # logits[:, t] predicts token t + 1: shift by one and read the log-prob of the actual next token
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        for row, (text_index, window) in enumerate(chunk):
            out[text_index].extend(logp[row, : len(window) - 1].tolist())
    return out


def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8) -> dict:
    """Token-weighted perplexity of held-out texts: ``exp(sum NLL / tokens)`` (see ``token_perplexity``)."""
    return compute("token_perplexity", logprobs=token_logprobs(model, tokenizer, texts, max_length, batch_size))




def unseen_positions(block: Sequence[int], token_id: int) -> list[bool]:
    """For each predicted position ``t`` (target ``block[t + 1]``): whether the target is ``token_id`` or is
    predicted right after it.

    >>> unseen_positions([5, 2, 1, 7, 8], token_id=2)
    [True, True, False, False]
    """
    return [block[t + 1] == token_id or block[t] == token_id for t in range(len(block) - 1)]


@torch.no_grad()
def block_logprobs(model, blocks: Sequence[Sequence[int]], batch_size: int = 8) -> list[list[float]]:
    """Log-probability of every predicted token of each equal-length block (no padding: blocks are full)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor([list(b) for b in blocks[start:start + batch_size]], device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        out += (logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, -1)).tolist()
    model.train(was_training)
    return out


def block_perplexity(model, blocks: Sequence[Sequence[int]], without_id: int | None = None,
                     batch_size: int = 8) -> dict:
    """Token perplexity of pretraining blocks; with ``without_id``, also ``perplexity_without`` and
    ``mean_nll_without`` over the positions :func:`unseen_positions` leaves in (and ``tokens_left_out``)."""
    logps = block_logprobs(model, blocks, batch_size)
    result = compute("token_perplexity", logprobs=logps)
    if without_id is not None:
        kept = [[lp for lp, skip in zip(row, unseen_positions(block, without_id)) if not skip]
                for row, block in zip(logps, blocks)]
        rest = compute("token_perplexity", logprobs=kept)
        result.update(perplexity_without=rest["perplexity"], mean_nll_without=rest["mean_nll"],
                      tokens_left_out=result["num_tokens"] - rest["num_tokens"])
    return result

"""Pretraining text -> fixed-length blocks: tokenise documents, separate them with EOS, concatenate, cut.

This is the GPT-2/3 recipe (and Hugging Face's ``run_clm`` ``group_texts``): documents are one token stream
with ``[BOS] doc [EOS]`` per document, cut every ``block_size`` tokens. A block may hold the end of one
document and the start of the next; the EOS between them tells the model a new document begins (attention
crosses the boundary, as in those models). Every block has exactly ``block_size`` tokens and labels equal the
input ids (the model shifts them), so no padding and no loss mask are needed and a batch's mean loss is the
mean over its tokens. The last partial block of a stream is **dropped** (at most ``block_size - 1`` tokens
per source); :func:`pack_blocks` reports how many tokens that was.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class Packed:
    blocks: list[list[int]]
    """Rows of exactly ``block_size`` token ids."""
    documents: int
    tokens: int
    """Tokens in the stream (EOS/BOS included) before the partial block was dropped."""
    dropped_tokens: int
    """Tokens of the last partial block, not trained on."""


def document_ids(ids: list[int], bos_id: int | None, eos_id: int | None) -> list[int]:
    """One document's ids with BOS before and EOS after (either may be None: not added).

    >>> document_ids([7, 8], bos_id=1, eos_id=2)
    [1, 7, 8, 2]
    >>> document_ids([7, 8], bos_id=None, eos_id=2)
    [7, 8, 2]
    """
    return ([bos_id] if bos_id is not None else []) + list(ids) + ([eos_id] if eos_id is not None else [])


def pack_blocks(documents: list[list[int]], block_size: int, bos_id: int | None = None,
                eos_id: int | None = None) -> Packed:
    """Concatenate ``[BOS] doc [EOS]`` for every document and cut into rows of ``block_size``.

    >>> p = pack_blocks([[5, 6, 7], [8, 9], [10]], block_size=4, eos_id=2)
    >>> p.blocks
    [[5, 6, 7, 2], [8, 9, 2, 10]]
    >>> p.tokens, p.dropped_tokens
    (9, 1)
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (one input and one target), got {block_size}")
    stream: list[int] = []
    for ids in documents:
        stream += document_ids(ids, bos_id, eos_id)
    full = len(stream) // block_size * block_size
    blocks = [stream[i:i + block_size] for i in range(0, full, block_size)]
    return Packed(blocks, len(documents), len(stream), len(stream) - full)


def tokenize_documents(texts: list[str], tokenizer, batch_size: int = 256) -> list[list[int]]:
    """Token ids of each text without special tokens (BOS/EOS are added by :func:`pack_blocks`)."""
    out: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], add_special_tokens=False, verbose=False)
        out += enc["input_ids"]
    return out


def mix_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Blocks each source contributes: shares of the total proportional to the weights, rounded by largest
    remainder so the counts add up to exactly the total.

    >>> mix_counts([6, 2], [1.0, 1.0]), mix_counts([485, 486], [1.0, 1.0]), mix_counts([10, 10, 10], [1, 1, 1])
    ([4, 4], [486, 485], [10, 10, 10])
    """
    total, wsum = sum(sizes), sum(weights)
    exact = [total * w / wsum for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix_blocks(parts: list[tuple[list[list[int]], float]], seed: int) -> list[list[int]]:
    """Mix sources' blocks by weight. Weights share **tokens** (every block has the same length), not
    documents: a Wikipedia article is 100x a Chinese line, so document-level weights would mean nothing.
    The total stays the sum of all blocks; a source below its share is repeated (whole passes over it, then a
    random remainder), a source above it is subsampled without replacement.

    >>> a, b = [[1, 1]] * 6, [[2, 2]] * 2
    >>> mixed = mix_blocks([(a, 1.0), (b, 1.0)], seed=0)
    >>> len(mixed), sum(row == [2, 2] for row in mixed)
    (8, 4)
    """
    if len(parts) == 1:
        return list(parts[0][0])
    rng = random.Random(seed)
    out: list[list[int]] = []
    for (blocks, _), n in zip(parts, mix_counts([len(b) for b, _ in parts], [w for _, w in parts])):
        if n <= len(blocks):
            out += rng.sample(blocks, n)
        else:
            out += blocks * (n // len(blocks)) + rng.sample(blocks, n % len(blocks))
    rng.shuffle(out)
    return out


def collate_blocks(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Stack equal-length blocks; labels are the input ids (the causal-LM loss shifts them).

    Shapes: ``input_ids``, ``labels``: [B, block_size]. No attention mask: nothing is padded.

    >>> batch = collate_blocks([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}])
    >>> batch["labels"].tolist(), tuple(batch["input_ids"].shape)
    ([[1, 2, 3], [4, 5, 6]], (2, 3))
    """
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}

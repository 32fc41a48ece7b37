"""Block packing for pretraining: EOS between documents, exact block length, dropped tail, weighted mixing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from align_kit.data.blocks import collate_blocks, mix_blocks, mix_counts, pack_blocks, tokenize_documents


def test_documents_are_separated_by_eos_and_cut_into_equal_blocks():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33], [40]]
    packed = pack_blocks(docs, block_size=5, bos_id=1, eos_id=2)
    # stream: 1 10 11 12 2 | 1 20 21 2 1 | 30 31 32 33 2 | 1 40 2  -> 18 tokens, 3 blocks, 3 dropped
    assert packed.blocks == [[1, 10, 11, 12, 2], [1, 20, 21, 2, 1], [30, 31, 32, 33, 2]]
    assert (packed.documents, packed.tokens, packed.dropped_tokens) == (4, 18, 3)
    plain = pack_blocks(docs, block_size=5)
    assert plain.blocks == [[10, 11, 12, 20, 21], [30, 31, 32, 33, 40]] and plain.dropped_tokens == 0
    assert pack_blocks([[5]], block_size=4, eos_id=2).blocks == []  # shorter than a block: nothing to train
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        pack_blocks(docs, block_size=1)


def test_real_text_round_trips_through_blocks(shared):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(shared) / "models" / "stories260K")
    lines = (Path(shared) / "data/pretrain/chinese.txt").read_text(encoding="utf-8").splitlines()[:40]
    docs = tokenize_documents(lines, tok, batch_size=16)
    assert docs == [tok(line, add_special_tokens=False).input_ids for line in lines]
    packed = pack_blocks(docs, 64, tok.bos_token_id, tok.eos_token_id)
    flat = [t for block in packed.blocks for t in block]
    assert all(len(b) == 64 for b in packed.blocks)
    ends, pos = [], 0
    for ids in docs:  # [BOS] doc [EOS]: the EOS of each document sits at its last position
        pos += len(ids) + 2
        ends.append(pos - 1)
    assert [i for i, t in enumerate(flat) if t == tok.eos_token_id] == [e for e in ends if e < len(flat)]
    assert packed.tokens == pos and len(flat) == pos - packed.dropped_tokens
    text = tok.decode(flat[: flat.index(tok.eos_token_id)], skip_special_tokens=True)
    assert text == lines[0]  # decodes back to the document, trailing space included


def test_mixing_shares_blocks_by_weight_and_keeps_the_total():
    assert mix_counts([100, 300], [3.0, 1.0]) == [300, 100]
    assert sum(mix_counts([7, 11, 13], [1.0, 2.0, 0.5])) == 31
    small, large = [[1, 1]] * 3, [[2, 2]] * 97
    mixed = mix_blocks([(small, 1.0), (large, 1.0)], seed=0)
    counts = Counter(tuple(b) for b in mixed)
    assert len(mixed) == 100 and counts[(1, 1)] == 50 and counts[(2, 2)] == 50
    distinct = [[i, i] for i in range(10, 13)]
    repeated = Counter(tuple(b) for b in mix_blocks([(distinct, 1.0), (large, 1.0)], seed=1))
    assert sorted(repeated[(i, i)] for i in range(10, 13)) == [16, 17, 17]  # whole passes first, then a remainder
    assert mix_blocks([(small, 1.0), (large, 1.0)], seed=0) == mixed  # seeded


def test_collate_gives_labels_equal_to_inputs():
    batch = collate_blocks([{"input_ids": [1, 2, 3, 4]}, {"input_ids": [5, 6, 7, 8]}])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, 4)
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["labels"] is not batch["input_ids"]
    assert "attention_mask" not in batch

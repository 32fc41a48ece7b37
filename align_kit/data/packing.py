"""Packing tokenised samples into rows without cross-contamination.

Samples are placed into rows of at most ``max_length`` tokens by best-fit decreasing. Each row keeps
``seq_lengths``; the collator turns them into position ids that restart at 0 for every sample and passes
**no attention mask** and ``use_cache=False``, so transformers derives a block-diagonal causal mask from the position ids
(``find_packed_sequence_indices``): a token only sees earlier tokens of its own sample. Unlike
padding-free flattening of the whole batch into one row, attention cost stays O(rows x max_length^2),
which is what matters without a varlen FlashAttention kernel (CPU, SDPA).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

IGNORE = -100


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each bin's total length <= capacity.

    >>> best_fit_decreasing([5, 3, 4, 2, 6], 8)
    [[4, 3], [0, 1], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin index)
    for i in order:
        need = lengths[i]
        pos = bisect.bisect_left(free, (need, -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - need, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - need, len(bins) - 1))
    return bins


def pack_samples(samples: list[dict], max_length: int, pack: bool = True) -> list[dict]:
    """``{"input_ids", "assistant_masks"}`` samples -> rows ``{"input_ids", "labels", "seq_lengths"}``.

    Labels are the ids where trained and -100 elsewhere; a sample longer than ``max_length`` is cut to it.

    >>> rows = pack_samples([{"input_ids": [1, 2, 3], "assistant_masks": [0, 1, 1]},
    ...                      {"input_ids": [4, 5], "assistant_masks": [0, 1]}], max_length=8)
    >>> rows
    [{'input_ids': [1, 2, 3, 4, 5], 'labels': [-100, 2, 3, -100, 5], 'seq_lengths': [3, 2]}]
    """
    cut = [{"input_ids": s["input_ids"][:max_length], "mask": s["assistant_masks"][:max_length]} for s in samples]
    groups = best_fit_decreasing([len(s["input_ids"]) for s in cut], max_length) if pack else [[i] for i in range(len(cut))]
    rows = []
    for group in groups:
        ids, labels, lengths = [], [], []
        for i in sorted(group):  # keep the data's order inside a row: deterministic and readable
            s = cut[i]
            ids += s["input_ids"]
            # The first token of a sample is never a target: across a boundary it would be "predicted"
            # from the previous sample's last token.
            labels += [IGNORE] + [t if m else IGNORE for t, m in zip(s["input_ids"][1:], s["mask"][1:])]
            lengths.append(len(s["input_ids"]))
        rows.append({"input_ids": ids, "labels": labels, "seq_lengths": lengths})
    return rows


def position_ids(seq_lengths: list[int], total: int) -> list[int]:
    """Positions restarting at 0 per sample; padding after the last sample counts as one more sample.

    >>> position_ids([3, 2], 7)
    [0, 1, 2, 0, 1, 0, 1]
    """
    pos = [p for n in seq_lengths for p in range(n)]
    return pos + list(range(total - len(pos)))


@dataclass
class PackedCollator:
    """Batch packed rows: right-pad to the longest row, position ids per sample, no attention mask.

    Shapes: ``input_ids``, ``labels``, ``position_ids``: [B, L] with L = longest row (rounded up to
    ``pad_to_multiple_of``). Padded positions have label -100.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, pos = [], [], []
        for r in rows:
            pad = longest - len(r["input_ids"])
            ids.append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(r["labels"]) + [IGNORE] * pad)
            pos.append(position_ids(list(r["seq_lengths"]), longest))
        # use_cache=False matters: with a KV cache transformers skips packed-sequence detection and the
        # samples of a row would attend to each other (tests/stages/test_sft.py checks this).
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos),
                "use_cache": False}

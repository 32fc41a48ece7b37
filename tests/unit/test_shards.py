"""Token shards (align_kit.data.shards): what the pretrain stage refuses to stream, and the windowed order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from align_kit.data.shards import ShardBlocks, list_shards, write_shard
from align_kit.errors import DataError


def test_unfinished_truncated_and_mixed_shards_are_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="no token shards"):
        list_shards(tmp_path)
    write_shard(tmp_path, "00000", np.arange(100), {"tokenizer": "a"})
    (tmp_path / "00001.bin").write_bytes(b"\0" * 40)  # a task killed before its .json: never read
    assert [p.name for p, _ in list_shards(tmp_path)] == ["00000.bin"]
    with (tmp_path / "00000.bin").open("r+b") as f:
        f.truncate(396)
    with pytest.raises(DataError, match=r"00000.bin: expected 100 uint32 tokens, as 00000.json says, found a "
                                        "missing or truncated token file"):
        list_shards(tmp_path)
    write_shard(tmp_path, "00000", np.arange(100), {"tokenizer": "a"})
    write_shard(tmp_path, "00002", np.arange(10), {"tokenizer": "b"})
    with pytest.raises(DataError, match="field 'tokenizer': expected one tokenizer, found a, b"):
        list_shards(tmp_path)
    (tmp_path / "00002.json").write_text("{not json")
    with pytest.raises(DataError, match="00002.json: expected the JSON written beside a token shard"):
        list_shards(tmp_path)


def test_windowed_shuffle_is_a_seeded_permutation_within_each_window(tmp_path):
    write_shard(tmp_path, "00000", np.arange(4 * 50), {"tokenizer": "a"})
    ds = ShardBlocks(tmp_path, block_size=4, shuffle_buffer=8, seed=3)
    starts = [ds[i]["input_ids"][0] // 4 for i in range(len(ds))]
    assert sorted(starts) == list(range(50)) and starts != list(range(50))
    for w in range(0, 50, 8):  # a block never leaves its window of 8: reads stay within 8 consecutive blocks
        assert sorted(starts[w:w + 8]) == list(range(w, min(w + 8, 50)))
    again = ShardBlocks(tmp_path, 4, 8, seed=3)
    assert [again[i]["input_ids"] for i in range(len(again))] == [ds[i]["input_ids"] for i in range(len(ds))]
    assert json.loads((tmp_path / "00000.json").read_text())["tokens"] == 200
    with pytest.raises(IndexError):
        ds[50]

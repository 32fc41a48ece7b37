"""Token shards: what ``align-kit data run`` writes with a ``tokenize`` step and the pretrain stage streams.

A shard is two files: ``{name}.bin``, the token stream ``[BOS] doc [EOS] [BOS] doc [EOS] ...`` as
little-endian uint32 (the :func:`~align_kit.data.blocks.pack_blocks` stream of one task's documents), and
``{name}.json``, written after it, with ``tokens``, ``documents``, the tokenizer's name, vocabulary size
and BOS/EOS ids. A ``.bin`` without its ``.json`` is an unfinished shard and is never read. Blocks are cut
when reading (``block_size`` is a training choice, not a data one); each shard's last partial block is
dropped, as :func:`pack_blocks` drops a stream's tail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from align_kit.errors import DataError

DTYPE = np.dtype("<u4")


def write_shard(folder: str | Path, name: str, ids: np.ndarray, meta: dict) -> None:
    """Write ``ids`` (uint32) and then ``meta`` (plus ``tokens``) next to it; the meta marks completion."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids, dtype=DTYPE)
    tmp = folder / f"{name}.bin.tmp"
    ids.tofile(tmp)
    tmp.replace(folder / f"{name}.bin")
    (folder / f"{name}.json").write_text(json.dumps({**meta, "tokens": int(ids.size), "dtype": "uint32"}))


def list_shards(folder: str | Path) -> list[tuple[Path, dict]]:
    """Every finished shard of ``folder`` as ``(bin path, meta)``, sorted by name.

    Raises :class:`DataError` when there is none, or when shards disagree on the tokenizer."""
    folder = Path(folder)
    metas = sorted(folder.glob("*.json")) if folder.is_dir() else []
    shards = []
    for meta_path in metas:
        bin_path = meta_path.with_suffix(".bin")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(str(meta_path), None, None, f"an unreadable shard description ({exc})",
                            "the JSON written beside a token shard") from None
        if not bin_path.exists() or bin_path.stat().st_size != meta.get("tokens", -1) * DTYPE.itemsize:
            raise DataError(str(bin_path), None, None, "a missing or truncated token file",
                            f"{meta.get('tokens')} uint32 tokens, as {meta_path.name} says")
        shards.append((bin_path, meta))
    if not shards:
        raise DataError(str(folder), None, None, "no token shards (*.bin with *.json)",
                        "the tokens/ folder of `align-kit data run` with a tokenize step")
    names = {m.get("tokenizer") for _, m in shards}
    if len(names) > 1:
        raise DataError(str(folder), None, "tokenizer", ", ".join(sorted(map(str, names))), "one tokenizer")
    return shards


def shard_blocks(path: Path, tokens: int, block_size: int) -> np.ndarray:
    """The shard's token stream as a read-only memory map of shape ``[tokens // block_size, block_size]``:
    nothing is loaded until a block is indexed.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> write_shard(d, "00000", np.arange(10), {"documents": 1})
    >>> shard_blocks(Path(d) / "00000.bin", 10, 4).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    n = tokens // block_size
    if n == 0:
        return np.zeros((0, block_size), dtype=DTYPE)
    return np.memmap(path, dtype=DTYPE, mode="r", shape=(n, block_size))


class ShardBlocks:
    """Training blocks streamed from token shards: a map-style dataset over memory-mapped files, so a
    process reads only the blocks its sampler hands it (two processes under accelerate each read their own
    batches) and a resumed run skips to its position without reading the blocks before it.

    Order: the shards in a seeded order, one after another, and within every window of ``shuffle_buffer``
    consecutive blocks a seeded permutation: a shuffle whose memory and read span are bounded by the window
    (reads stay inside ``shuffle_buffer`` consecutive blocks), the same at every run with the same seed, so
    the Trainer's sequential sampler (``train_sampling_strategy="sequential"``) resumes mid-shard exactly.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> write_shard(d, "00000", np.arange(12), {"documents": 1}); write_shard(d, "00001", np.arange(100, 108), {})
    >>> ds = ShardBlocks(d, block_size=4, shuffle_buffer=0, seed=0)
    >>> len(ds), [ds[i]["input_ids"][0] for i in range(len(ds))]
    (5, [0, 4, 8, 100, 104])
    >>> sorted(ShardBlocks(d, 4, shuffle_buffer=3, seed=1)[i]["input_ids"][0] for i in range(5))
    [0, 4, 8, 100, 104]
    """

    def __init__(self, folder: str | Path, block_size: int, shuffle_buffer: int = 1024, seed: int = 0):
        import random

        found = list_shards(folder)
        self.metas = [m for _, m in found]
        self.shards = [(path, m["tokens"] // block_size) for path, m in found]
        self.order = list(range(len(self.shards)))
        random.Random(seed).shuffle(self.order)
        self.offsets, total = [], 0
        for s in self.order:
            self.offsets.append(total)
            total += self.shards[s][1]
        self.total, self.block_size, self.window, self.seed = total, block_size, shuffle_buffer, seed
        self._maps: dict = {}
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.total

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}, "_perm": None}  # memory maps are reopened in each process

    def _position(self, i: int) -> int:
        if self.window <= 1:
            return i
        w, k = divmod(i, self.window)
        if self._perm is None or self._perm[0] != w:
            size = min(self.window, self.total - w * self.window)
            self._perm = (w, np.random.default_rng([self.seed, w]).permutation(size))
        return w * self.window + int(self._perm[1][k])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.total:
            raise IndexError(i)
        import bisect

        j = self._position(i)
        s = bisect.bisect_right(self.offsets, j) - 1
        path, _ = self.shards[self.order[s]]
        if path not in self._maps:
            self._maps[path] = shard_blocks(path, self.metas[self.order[s]]["tokens"], self.block_size)
        return {"input_ids": self._maps[path][j - self.offsets[s]].astype(np.int64).tolist()}

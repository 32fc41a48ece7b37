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

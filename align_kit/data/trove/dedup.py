"""Exact and MinHash near-dedup on datatrove's multi-stage dedup, with align_kit's settings.

Stages (each a datatrove pipeline; the file layout under ``work`` is what they exchange):

1. :class:`DedupSignature` (every task, after the per-document steps): align_kit's shingles
   (:func:`~align_kit.data.dedup.shingles`: 5-word or 5-character n-grams of the normalised text) hashed by
   datatrove into ``bands x rows`` MinHash values, written as datatrove's sorted bucket files; beside them
   each document's exact key (:func:`~align_kit.data.dedup.exact_key`), id and full signature.
2. datatrove's :class:`MinhashDedupBuckets` (one task per band): candidate pairs sharing a band.
3. :class:`DedupCluster` (one task): exact-duplicate pairs from a merge of the sorted keys; candidate pairs
   verified against the Jaccard threshold (``verify="exact"``: the shingle sets of the two texts, read back;
   ``"minhash"``: the signatures' estimate), then union-find where the first document of a cluster (in
   input order: file, then position) is kept. Unlike datatrove's own stage 3, which keeps a cluster's root
   and does not verify, this is what ``align-kit data dedup`` does, so the two paths agree.
4. :class:`DedupFilter` (every task): drops what stage 3 listed, with ``reason``, ``detail`` and
   ``duplicate_of`` (the kept document's id), through an exclusion writer.

Memory: stage 1 holds one task's exact keys (24 bytes per document on disk, about 100 as Python tuples;
datatrove's exact dedup also holds a task's keys); stage 3 holds the duplicate pairs and the candidates'
texts, never the corpus.
"""

from __future__ import annotations

import heapq
import json
import posixpath
import struct
from collections.abc import Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import create_hash_func

from align_kit.data.dedup import MinHashConfig, cluster_duplicates, exact_key, jaccard, shingles

_KEY = struct.Struct("<16sII")  # blake2b-128 of the normalised text, input file index, document index
_FILE = struct.Struct("<I")


def datatrove_config(cfg: MinHashConfig) -> MinhashConfig:
    """align_kit's band/row split as datatrove's config (its ``n_grams`` is unused: we shingle ourselves)."""
    return MinhashConfig(n_grams=cfg.shingle_size, num_buckets=cfg.bands, hashes_per_bucket=cfg.rows,
                         seed=cfg.seed)


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


class DedupSignature(MinhashDedupSignature):
    """Stage 1. ``near=False`` (exact dedup only) writes keys and ids but no MinHash buckets."""

    name = "align_kit dedup signatures"

    def __init__(self, work: str, cfg: MinHashConfig, near: bool = True):
        # datatrove's __init__ loads a word tokenizer (spaCy for English) that align_kit's shingles replace,
        # so set its attributes here instead of calling it
        PipelineStep.__init__(self)
        self.output_folder = get_datafolder(posixpath.join(work, "sigs"))
        self.config = datatrove_config(cfg)
        self.num_hashes = self.config.num_buckets * self.config.hashes_per_bucket
        self._parameters = None
        self._hash_func = create_hash_func(self.config.hash_config, bytes)
        self.language, self.word_tokenizer, self.skip_existing_sigs = None, None, False
        self.work, self.cfg, self.near = work, cfg, near
        self._pending: tuple[np.ndarray, list] | None = None

    # The parent's run() shingles and signs each document and writes and sorts the bucket files; these two
    # hand it what _tap already computed with align_kit's shingles, so each document is signed once.
    def get_shingles(self, text: str) -> np.ndarray:
        return self._pending[0]

    def get_signature(self, shingle_hashes: np.ndarray) -> list[list[int]]:
        return self._pending[1]

    def _sign(self, text: str) -> tuple[np.ndarray, list]:
        hashed = np.fromiter((self._hash_func(s.encode()) for s in shingles(text, self.cfg)), dtype=np.uint64)
        hashed = hashed.reshape((-1, 1))
        return hashed, (MinhashDedupSignature.get_signature(self, hashed) if hashed.size else [])

    def _tap(self, data: DocumentsPipeline, rank: int, keys: list, ids, sigs, files) -> Iterator[Document]:
        width = self.config.num_buckets * self.config.hashes_per_bucket
        for idx, doc in enumerate(data):
            # the input file's index in the whole input list orders documents across tasks as the
            # in-memory path reads them, so "first copy" means the same document in both
            file_index = doc.metadata.get("file_index", rank)
            keys.append((bytes.fromhex(exact_key(doc.text)), file_index, idx))
            files.write(_FILE.pack(file_index))
            ids.write(json.dumps(doc.id, ensure_ascii=False) + "\n")
            if self.near:
                self._pending = self._sign(doc.text)
                flat = np.asarray(self._pending[1], dtype=np.uint64).reshape(-1)
                sigs.write((flat if flat.size else np.zeros(width, np.uint64)).astype("<u8").tobytes())
            yield doc

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        fs, root = _fs(self.work)
        keys: list[tuple[bytes, int, int]] = []
        for sub in ("exact", "ids", "fullsig", "fileidx"):
            fs.makedirs(posixpath.join(root, sub), exist_ok=True)
        with fs.open(posixpath.join(root, "ids", f"{rank:05d}.jsonl"), "w") as ids, \
                fs.open(posixpath.join(root, "fullsig", f"{rank:05d}.bin"), "wb") as sigs, \
                fs.open(posixpath.join(root, "fileidx", f"{rank:05d}.bin"), "wb") as files:
            tapped = self._tap(data, rank, keys, ids, sigs, files)
            if self.near:
                super().run(tapped, rank, world_size)
            else:
                for _ in tapped:
                    pass
        keys.sort()
        with fs.open(posixpath.join(root, "exact", f"{rank:05d}.keys"), "wb") as f:
            for key, file_index, idx in keys:
                f.write(_KEY.pack(key, file_index, idx))


def _read_keys(fs, path: str, rank: int) -> Iterator[tuple[bytes, tuple[int, int, int]]]:
    with fs.open(path, "rb") as f:
        for key, file_index, idx in read_tuples_from_file(f, "16sII", lines_to_buffer=1024):
            yield key, (file_index, rank, idx)


class DedupCluster(PipelineStep):
    """Stage 3 (one task): exact pairs, verified near pairs, clusters; writes ``remove/{rank:05d}.jsonl``."""

    type = "🫂 - DEDUP"
    name = "align_kit dedup clusters"

    def __init__(self, work: str, stage_input: str, tasks: int, cfg: MinHashConfig | None, exact: bool = True):
        super().__init__()
        self.work, self.stage_input, self.tasks, self.cfg, self.exact = work, stage_input, tasks, cfg, exact

    # A document is a node (input file index, task, position): tuples order like the in-memory path's list.
    def _exact(self, fs, root) -> dict[tuple[int, int, int], tuple[int, int, int]]:
        readers = [_read_keys(fs, posixpath.join(root, "exact", f"{r:05d}.keys"), r) for r in range(self.tasks)
                   if fs.exists(posixpath.join(root, "exact", f"{r:05d}.keys"))]
        dupes, last_key, first = {}, None, None
        for key, node in heapq.merge(*readers):  # sorted by key, then node: first copy first
            if key == last_key:
                dupes[node] = first
            else:
                last_key, first = key, node
        return dupes

    def _candidates(self, fs, root) -> set[tuple[tuple[int, int], tuple[int, int]]]:
        pairs = set()
        folder = posixpath.join(root, "buckets")
        for name in sorted(fs.ls(folder, detail=False)) if fs.exists(folder) else []:
            if not name.endswith(".dups"):
                continue
            with fs.open(name, "rb") as f:
                for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=1024):
                    a, b = sorted([(f1, d1), (f2, d2)])
                    pairs.add((a, b))
        return pairs

    @staticmethod
    def _records(fs, root, sub: str, positions, size: int) -> dict[tuple[int, int], bytes]:
        """Fixed-size records at ``positions`` (task, index) of ``{sub}/{task}.bin``: one open per task file,
        reads in file order."""
        by_rank: dict[int, list[int]] = {}
        for rank, idx in positions:
            by_rank.setdefault(rank, []).append(idx)
        out = {}
        for rank, idxs in by_rank.items():
            with fs.open(posixpath.join(root, sub, f"{rank:05d}.bin"), "rb") as f:
                for idx in sorted(idxs):
                    f.seek(idx * size)
                    out[(rank, idx)] = f.read(size)
        return out

    def _file_indices(self, fs, root, positions: set[tuple[int, int]]) -> dict[tuple[int, int], tuple]:
        raw = self._records(fs, root, "fileidx", positions, _FILE.size)
        return {(rank, idx): (_FILE.unpack(b)[0], rank, idx) for (rank, idx), b in raw.items()}

    def _texts(self, fs, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """Texts of the candidate documents only, one pass over each task's stage-1 output."""
        texts, by_rank = {}, {}
        for rank, idx in wanted:
            by_rank.setdefault(rank, set()).add(idx)
        sfs, sroot = _fs(self.stage_input)
        for rank, idxs in by_rank.items():
            with sfs.open(posixpath.join(sroot, f"{rank:05d}.jsonl"), "rb") as f:
                for idx, line in enumerate(f):
                    if idx in idxs:
                        texts[(rank, idx)] = json.loads(line)["text"]
        return texts

    def _verified(self, fs, root, pairs) -> list[tuple[tuple[int, int], tuple[int, int], float]]:
        nodes = {n for pair in pairs for n in pair}
        if self.cfg.verify == "exact":
            texts = self._texts(fs, {n[1:] for n in nodes})
            sets = {n: shingles(texts[n[1:]], self.cfg) for n in nodes}
            sims = {(a, b): jaccard(sets[a], sets[b]) for a, b in pairs}
        else:
            raw = self._records(fs, root, "fullsig", {n[1:] for n in nodes}, self.cfg.bands * self.cfg.rows * 8)
            sigs = {n: np.frombuffer(raw[n[1:]], dtype="<u8") for n in nodes}
            sims = {(a, b): float(np.mean(sigs[a] == sigs[b])) for a, b in pairs}
        self.stat_update("candidate_pairs", value=len(pairs))
        return sorted((a, b, s) for (a, b), s in sims.items() if s >= self.cfg.threshold)

    def _ids(self, fs, root, nodes: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
        ids, by_rank = {}, {}
        for rank, idx in nodes:
            by_rank.setdefault(rank, set()).add(idx)
        for rank, idxs in by_rank.items():
            with fs.open(posixpath.join(root, "ids", f"{rank:05d}.jsonl"), "r") as f:
                for idx, line in enumerate(f):
                    if idx in idxs:
                        ids[(rank, idx)] = json.loads(line)
        return ids

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        fs, root = _fs(self.work)
        exact = self._exact(fs, root) if self.exact else {}
        near: dict = {}
        best: dict = {}
        if self.cfg is not None:
            # an exact copy left before near-dedup in the in-memory path; its shingles are its original's
            copies = {n[1:] for n in exact}
            candidates = {(a, b) for a, b in self._candidates(fs, root) if a not in copies and b not in copies}
            node = self._file_indices(fs, root, {n for pair in candidates for n in pair})
            candidates = {tuple(sorted((node[a], node[b]))) for a, b in candidates}
            verified = self._verified(fs, root, candidates)
            for _, b, sim in verified:
                best[b] = max(best.get(b, 0.0), sim)
            near = cluster_duplicates(verified)
        ids = self._ids(fs, root, {n[1:] for n in (*exact.values(), *near.values())})
        rows: dict[int, list] = {}
        for (_, rank, idx), first in exact.items():
            rows.setdefault(rank, []).append((idx, "exact_duplicate", "", ids[first[1:]]))
        for (f, rank, idx), first in near.items():
            detail = f"jaccard {best.get((f, rank, idx), 0.0):.3f}"
            rows.setdefault(rank, []).append((idx, "near_duplicate", detail, ids[first[1:]]))
        fs.makedirs(posixpath.join(root, "remove"), exist_ok=True)
        for r in range(self.tasks):
            with fs.open(posixpath.join(root, "remove", f"{r:05d}.jsonl"), "w") as f:
                for idx, reason, detail, dup_of in sorted(rows.get(r, [])):
                    f.write(json.dumps({"idx": idx, "reason": reason, "detail": detail, "duplicate_of": dup_of},
                                       ensure_ascii=False) + "\n")
        self.stat_update("exact_duplicates", value=len(exact))
        self.stat_update("near_duplicates", value=len(near))


class DedupFilter(PipelineStep):
    """Stage 4: drops the documents stage 3 listed for this task, through ``exclusion_writer``."""

    type = "🫂 - DEDUP"
    name = "align_kit dedup filter"

    def __init__(self, work: str, exclusion_writer):
        super().__init__()
        self.work, self.exclusion_writer = work, exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        fs, root = _fs(self.work)
        with fs.open(posixpath.join(root, "remove", f"{rank:05d}.jsonl"), "r") as f:
            remove = {r["idx"]: r for r in map(json.loads, f)}
        with self.exclusion_writer as writer:
            for idx, doc in enumerate(data):
                row = remove.get(idx)
                if row is None:
                    yield doc
                    continue
                self.stat_update(f"dropped_{row['reason']}")
                step = "exact_dedup" if row["reason"] == "exact_duplicate" else "minhash_dedup"
                doc.metadata.update(step=step, filter_reason=row["reason"], detail=row["detail"],
                                    duplicate_of=row["duplicate_of"])
                writer.write(doc, rank)

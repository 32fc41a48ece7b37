"""Exact dedup on normalised text, and near-dedup with MinHash LSH from datasketch.

Near-dedup runs in three steps:

1. shingle each document (word n-grams for space-separated text, character n-grams for Chinese, decided per
   document by its CJK share) after the same normalisation exact dedup uses;
2. datasketch ``MinHash`` (``bands x rows`` permutations) + ``MinHashLSH(params=(bands, rows))`` proposes
   candidate pairs: a pair of Jaccard similarity ``s`` becomes a candidate with probability
   ``1 - (1 - s^rows)^bands`` (:func:`candidate_probability`), an S-curve whose midpoint is roughly
   ``(1/bands)^(1/rows)`` (:func:`lsh_threshold`);
3. each candidate is verified against ``MinHashConfig.threshold`` with the exact Jaccard of the shingle sets
   (``verify="exact"``) or the MinHash estimate (``verify="minhash"``, less memory, +-0.05 noise at 100 hashes).

The defaults put the LSH midpoint (0.55) well below the verified threshold (0.7), so a pair at exactly 0.7 is
proposed with probability 0.975 and one at 0.8 with 0.9996: recall is decided by the verified threshold, not
by the coin flips of the S-curve.

Duplicates are clustered (union-find over verified pairs); the first document of a cluster is kept and every
other one is reported as a duplicate of it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from datasketch import MinHash, MinHashLSH

from align_kit.data.clean import detect_language
from align_kit.errors import ConfigError

_PUNCT_RE = re.compile(r"[^\w\s]")
_SPACE_RE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace collapsed: what "the same text" means for dedup.

    >>> normalise("  Hello,   WORLD!\\n") == normalise("hello world"), normalise("你好，世界！")
    (True, '你好 世界')
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE_RE.sub(" ", _PUNCT_RE.sub(" ", text)).strip()


def exact_key(text: str) -> str:
    """Hash of the normalised text (blake2b, 128 bits: collisions are negligible at any corpus size).

    >>> exact_key("The cat.") == exact_key("the  CAT"), len(exact_key("x"))
    (True, 32)
    """
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).hexdigest()


def lsh_threshold(bands: int, rows: int) -> float:
    """Jaccard similarity at the LSH S-curve's (approximate) midpoint, ``(1/bands)^(1/rows)``.

    >>> round(lsh_threshold(20, 5), 3), round(lsh_threshold(14, 8), 3), round(lsh_threshold(9, 13), 3)
    (0.549, 0.719, 0.844)
    """
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of this Jaccard similarity share at least one LSH band.

    >>> [round(candidate_probability(s, 20, 5), 4) for s in (0.3, 0.5, 0.7, 0.8)]
    [0.0475, 0.4701, 0.9748, 0.9996]
    """
    return 1.0 - (1.0 - similarity ** rows) ** bands


@dataclass
class MinHashConfig:
    """Near-dedup settings; ``bands * rows`` is the number of MinHash permutations."""

    shingle_size: int = 5
    """Words per shingle for space-separated text (5-grams, as in GPT-3's and The Pile's fuzzy dedup)."""
    zh_shingle_size: int = 5
    """Characters per shingle for Chinese text."""
    bands: int = 20
    rows: int = 5
    """20 bands x 5 rows = 100 permutations; LSH midpoint (1/20)^(1/5) = 0.549."""
    threshold: float = 0.7
    """Verified Jaccard similarity at or above which two documents are near-duplicates."""
    verify: str = "exact"
    """"exact": Jaccard of the shingle sets (keeps them in memory); "minhash": the MinHash estimate."""
    seed: int = 1
    cjk_share: float = 0.3
    """A document is shingled by characters when CJK characters are at least this share of it."""

    def __post_init__(self):
        if self.bands < 1 or self.rows < 1 or self.shingle_size < 1 or self.zh_shingle_size < 1:
            raise ConfigError("bands, rows and shingle sizes must be positive integers")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup threshold must be in (0, 1], got {self.threshold}")
        if self.verify not in ("exact", "minhash"):
            raise ConfigError(f"dedup verify must be 'exact' or 'minhash', got {self.verify!r}")


def shingles(text: str, cfg: MinHashConfig | None = None) -> set[str]:
    """Word n-grams of the normalised text, or character n-grams when it is Chinese.

    >>> sorted(shingles("The cat sat on the mat.", MinHashConfig(shingle_size=4)))
    ['cat sat on the', 'sat on the mat', 'the cat sat on']
    >>> sorted(shingles("我们减少用水", MinHashConfig(zh_shingle_size=4)))
    ['们减少用', '减少用水', '我们减少']
    """
    cfg = cfg or MinHashConfig()
    norm = normalise(text)
    if detect_language(text, cfg.cjk_share) == "zh":
        units, n, sep = list(norm.replace(" ", "")), cfg.zh_shingle_size, ""
    else:
        units, n, sep = norm.split(), cfg.shingle_size, " "
    if len(units) <= n:
        return {sep.join(units)} if units else set()
    return {sep.join(units[i:i + n]) for i in range(len(units) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity of two sets (0 when both are empty).

    >>> jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int):
    # datasketch draws the permutations anew for every MinHash (half its cost on short documents);
    # sharing one template's draws gives the same sketches, since they depend only on (num_perm, seed)
    template = MinHash(num_perm=num_perm, seed=seed)
    return template.permutations, template.scheme


def sketch(text: str, cfg: MinHashConfig) -> tuple[set[str] | None, int, object]:
    """``(shingle set, shingle count, MinHash signature)`` of one document; pure, so it can run in a worker.
    The set is kept only for ``verify="exact"``: it is most of near-dedup's memory (~50 KB for a
    500-word page against 100 x 8 bytes of signature)."""
    shingle_set = shingles(text, cfg)
    num_perm = cfg.bands * cfg.rows
    permutations, scheme = _permutations(num_perm, cfg.seed)
    m = MinHash(num_perm=num_perm, seed=cfg.seed, permutations=permutations, scheme=scheme)
    m.update_batch([s.encode("utf-8") for s in shingle_set])
    return (shingle_set if cfg.verify == "exact" else None), len(shingle_set), m.hashvalues


def near_duplicate_pairs(texts: list[str], cfg: MinHashConfig | None = None,
                         sketches: list | None = None) -> list[tuple[int, int, float]]:
    """Every verified near-duplicate pair ``(i, j, similarity)`` with ``i < j``, sorted. ``sketches``: the
    :func:`sketch` of each text when already computed (in worker processes).

    >>> a = "the quick brown fox jumps over the lazy dog near the river bank today " * 3
    >>> [(i, j, round(s, 3)) for i, j, s in near_duplicate_pairs([a, a.replace("lazy", "sleepy", 1), "other"])]
    [(0, 1, 0.737)]
    """
    cfg = cfg or MinHashConfig()
    num_perm = cfg.bands * cfg.rows
    permutations, scheme = _permutations(num_perm, cfg.seed)
    lsh = MinHashLSH(num_perm=num_perm, params=(cfg.bands, cfg.rows))
    sketches = sketches if sketches is not None else [sketch(t, cfg) for t in texts]
    hashes = [MinHash(num_perm=num_perm, seed=cfg.seed, hashvalues=hv, permutations=permutations, scheme=scheme)
              for _, _, hv in sketches]
    pairs = []
    for i, ((shingle_set, count, _), m) in enumerate(zip(sketches, hashes)):
        if not count:
            continue  # an empty document has no shingles; exact dedup handles empties
        for j in lsh.query(m):
            sim = jaccard(shingle_set, sketches[j][0]) if cfg.verify == "exact" else m.jaccard(hashes[j])
            if sim >= cfg.threshold:
                pairs.append((j, i, sim))
        lsh.insert(i, m)
    return sorted(pairs)


def cluster_duplicates(pairs: list[tuple[int, int, float]]) -> dict[int, int]:
    """Union-find over pairs; maps every non-first member of a cluster to the cluster's first (kept) index.

    >>> cluster_duplicates([(0, 3, 0.9), (3, 5, 0.8), (1, 2, 0.75)])
    {2: 1, 3: 0, 5: 0}
    """
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])  # path halving keeps chains short
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # the lower index (first seen) stays the root
    return {x: root(x) for x in sorted(parent) if root(x) != x}


def exact_duplicates(texts: list[str]) -> dict[int, int]:
    """Maps each document whose normalised text appeared before to the first document with that text.

    >>> exact_duplicates(["A b.", "c", "a B", "C!", "d"])
    {2: 0, 3: 1}
    """
    first: dict[str, int] = {}
    dupes = {}
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first:
            dupes[i] = first[key]
        else:
            first[key] = i
    return dupes

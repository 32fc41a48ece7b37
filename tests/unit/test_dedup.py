"""Exact and MinHash near-dedup: planted duplicates in real English and Chinese text are found."""

from __future__ import annotations

import json
import random
from itertools import combinations

import pytest

from align_kit.data.dedup import (
    MinHashConfig,
    cluster_duplicates,
    exact_duplicates,
    jaccard,
    lsh_threshold,
    near_duplicate_pairs,
    shingles,
)
from align_kit.errors import ConfigError


def _edit(units: list[str], rate: float, vocab: list[str], rng: random.Random) -> list[str]:
    """Substitute, delete or insert at about ``rate`` of the positions."""
    out = []
    for unit in units:
        if rng.random() >= rate:
            out.append(unit)
            continue
        op = rng.choice(("sub", "del", "ins"))
        if op == "sub":
            out.append(rng.choice(vocab))
        elif op == "ins":
            out += [unit, rng.choice(vocab)]
    return out


def _english_docs(base) -> list[str]:
    c4 = [json.loads(line)["text"] for line in (base / "c4_demo.jsonl").read_text().splitlines()]
    c4 = [t for t in c4 if 80 <= len(t.split()) <= 600][:110]
    wiki_words = [w for line in (base / "wiki_demo.txt").read_text().splitlines()[:10] for w in line.split()]
    wiki = [" ".join(wiki_words[i:i + 300]) for i in range(0, 300 * 40, 300)]
    return c4 + wiki


def _chinese_docs(base) -> list[str]:
    docs, buf = [], ""
    for line in (base / "chinese.txt").read_text().splitlines()[:3000]:
        buf += line.strip()
        if len(buf) >= 300:
            docs.append(buf)
            buf = ""
    return docs[:150]


def _plant(docs: list[str], language: str, rng: random.Random) -> list[str]:
    """Originals, then a near-duplicate (1-5% edits) of every second one and an exact copy of every tenth."""
    split = (lambda t: t.split()) if language == "en" else list
    join = " ".join if language == "en" else "".join
    vocab = sorted({u for d in docs for u in split(d)})
    planted = list(docs)
    for i in range(0, len(docs), 2):
        planted.append(join(_edit(split(docs[i]), rng.uniform(0.01, 0.05), vocab, rng)))
    for i in range(1, len(docs), 10):
        planted.append(docs[i].upper() if language == "en" else docs[i] + " ")  # normalises to the same
    rng.shuffle(planted)
    return planted


@pytest.mark.parametrize("language", ["en", "zh"])
def test_near_dedup_recall_and_precision_on_planted_duplicates(shared, language):
    rng = random.Random(7)
    base = shared / "data" / "pretrain"
    docs = _plant(_english_docs(base) if language == "en" else _chinese_docs(base), language, rng)
    cfg = MinHashConfig()
    sets = [shingles(d, cfg) for d in docs]
    truth = {(i, j) for i, j in combinations(range(len(docs)), 2) if jaccard(sets[i], sets[j]) >= cfg.threshold}
    found = {(i, j) for i, j, _ in near_duplicate_pairs(docs, cfg)}
    hits = len(truth & found)
    recall, precision = hits / len(truth), hits / len(found)
    assert len(docs) > 230 and len(truth) >= 60, (len(docs), len(truth))
    # the planted edits spread similarities across the threshold, so the test is not trivially separable
    sims = sorted(jaccard(sets[i], sets[j]) for i, j in truth)
    assert sims[0] < 0.8, sims[:5]
    assert recall >= 0.95 and precision >= 0.95, (language, recall, precision, len(truth), len(found))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_minhash_estimate_verification_is_also_accurate(shared, language):
    rng = random.Random(11)
    base = shared / "data" / "pretrain"
    docs = _plant((_english_docs(base) if language == "en" else _chinese_docs(base))[:90], language, rng)
    cfg = MinHashConfig(verify="minhash", bands=32, rows=4)  # 128 hashes: estimate noise ~ +-0.04
    sets = [shingles(d, cfg) for d in docs]
    truth = {(i, j) for i, j in combinations(range(len(docs)), 2) if jaccard(sets[i], sets[j]) >= cfg.threshold}
    found = {(i, j) for i, j, _ in near_duplicate_pairs(docs, cfg)}
    hits = len(truth & found)
    assert hits / len(truth) >= 0.85 and hits / len(found) >= 0.85, (hits, len(truth), len(found))


def test_clusters_keep_the_first_document():
    text = " ".join(f"word{i}" for i in range(200))
    edited = text.replace("word50 ", "changed ").replace("word150 ", "other ")
    docs = ["unrelated text about ships " * 10, text, edited, "another unrelated text here " * 10, edited]
    pairs = near_duplicate_pairs(docs)
    assert [(i, j) for i, j, _ in pairs] == [(1, 2), (1, 4), (2, 4)]
    assert cluster_duplicates(pairs) == {2: 1, 4: 1}
    assert exact_duplicates(docs) == {4: 2}


def test_default_lsh_threshold_and_validation():
    cfg = MinHashConfig()
    assert round(lsh_threshold(cfg.bands, cfg.rows), 3) == 0.549 and cfg.bands * cfg.rows == 100
    with pytest.raises(ConfigError):
        MinHashConfig(threshold=1.5)
    with pytest.raises(ConfigError):
        MinHashConfig(verify="approximate")

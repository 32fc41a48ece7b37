"""Decontamination finds planted evaluation questions in real training text, and nothing in clean text."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from align_kit.data.clean import detect_language
from align_kit.data.decontam import ContaminationIndex, DecontamConfig, load_eval_items, units
from align_kit.errors import DataError


def _plant(docs: list[str], items: list[str], count: int, rng: random.Random) -> dict[int, int]:
    """Insert ``count`` items at random word/character positions of distinct docs; returns doc -> item."""
    planted = {}
    for doc_i, item_i in zip(rng.sample(range(len(docs)), count), rng.sample(range(len(items)), count)):
        doc = docs[doc_i]
        cut = rng.randrange(len(doc))
        docs[doc_i] = doc[:cut] + " " + items[item_i] + " " + doc[cut:]
        planted[doc_i] = item_i
    return planted


def _hh_prompts(path) -> list[str]:
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    return [r["chosen"].split("\n\nHuman: ")[1].split("\n\nAssistant:")[0] for r in rows]


def test_english_planted_questions_are_all_found(shared):
    rng = random.Random(3)
    data = shared / "data"
    qasc = load_eval_items(data / "flan" / "qasc_train.tsv", "question", ["question", "answer", "rationale"])
    hh = _hh_prompts(data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz")
    assert len(qasc) == 1084 and len(hh) == 2354
    docs = [json.loads(line)["text"] for line in (data / "pretrain" / "c4_demo.jsonl").read_text().splitlines()]
    long_hh = [i for i, p in enumerate(hh) if len(p.split()) >= 15]
    planted_q = _plant(docs, qasc, 20, rng)
    clean = [i for i in range(len(docs)) if i not in planted_q]
    planted_h = {}
    for doc_i, j in zip(rng.sample(clean, 10), rng.sample(long_hh, 10)):
        docs[doc_i] = docs[doc_i] + "\n" + hh[j]
        planted_h[doc_i] = j
    index = ContaminationIndex({"qasc": qasc, "hh": hh})
    hits = [h for i, d in enumerate(docs) for h in index.hits(d, i, f"c4-{i}")]
    found = {(h.doc_index, h.eval_set, h.eval_index) for h in hits}
    expected = {(d, "qasc", q) for d, q in planted_q.items()} | {(d, "hh", j) for d, j in planted_h.items()}
    assert expected <= found
    # qasc questions repeat across items ("What do plants need?" variants); any extra hit must be an
    # item whose text is really in the document, and no clean document is hit at all
    assert {h.doc_index for h in hits} == set(planted_q) | set(planted_h)
    for h in hits:
        assert h.ngram in " ".join(units(docs[h.doc_index]))
        assert h.doc_id == f"c4-{h.doc_index}" and len(h.ngram.split()) >= 8


def test_chinese_planted_answers_are_all_found(shared):
    rng = random.Random(5)
    data = shared / "data"
    alpaca = json.loads((data / "instruct" / "alpaca_zh_demo.json").read_text())
    outputs = [r["output"] for r in alpaca if len(r["output"]) >= 60 and detect_language(r["output"]) == "zh"]
    lines = [line for line in (data / "pretrain" / "chinese.txt").read_text().splitlines()[:2000] if line.strip()]
    docs = ["".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    index = ContaminationIndex({"alpaca_zh": outputs}, DecontamConfig(zh_n=25))
    # chinese.txt already quotes one alpaca answer (Wordsworth's "I wandered lonely as a cloud"): real overlap
    natural = {(h.doc_index, h.eval_index) for i, d in enumerate(docs) for h in index.hits(d, i)}
    assert len(natural) <= 2
    planted = {}
    for doc_i, item_i in zip(rng.sample(range(len(docs)), 15), rng.sample(range(len(outputs)), 15)):
        # a 50-character slice of the answer holding at least 30 units (code in an answer has few)
        piece = ""
        while len(units(piece)) < 30:
            start = rng.randrange(0, len(outputs[item_i]) - 50)
            piece = outputs[item_i][start:start + 50]
        docs[doc_i] = docs[doc_i][:50] + piece + docs[doc_i][50:]
        planted[doc_i] = item_i
    found = {(h.doc_index, h.eval_index) for i, d in enumerate(docs) for h in index.hits(d, i)}
    assert found == set(planted.items()) | natural


def test_short_items_match_whole_and_tiny_ones_are_ignored():
    index = ContaminationIndex({"s": ["Name the three primary colours of light please", "What is it?"]})
    assert index.items == 1
    hits = index.hits("Quiz: name the three primary colours of light, please! Answer: red, green, blue.")
    assert [(h.eval_index, h.ngram) for h in hits] == [(0, "name the three primary colours of light please")]
    assert index.hits("What is it? Nobody knows.") == []


def test_eval_items_from_files(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "a b c"}\n{"question": "d e f"}\n')
    assert load_eval_items(tmp_path / "q.jsonl") == ["a b c", "d e f"]
    (tmp_path / "bad.jsonl").write_text('{"question": "a"}\n{"question": null}\n')
    with pytest.raises(DataError, match="row 2"):
        load_eval_items(tmp_path / "bad.jsonl")
    (tmp_path / "items.txt").write_text("first item\n\nsecond item\n")
    assert load_eval_items(tmp_path / "items.txt") == ["first item", "second item"]

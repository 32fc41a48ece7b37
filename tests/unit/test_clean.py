"""Quality filters: each rule drops what it names, and real documents in ../shared are mostly kept."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import PROSE

from align_kit.data.clean import QualityThresholds, detect_language, quality_verdict, words


def test_clean_english_prose_is_kept():
    assert len(PROSE.split()) >= 50
    assert quality_verdict(PROSE).keep


@pytest.mark.parametrize("text, reason", [
    ("Only a handful of words here.", "too_short"),
    (PROSE + " ".join(["#tag"] * 10), "symbol_ratio"),
    ("\n".join([f"Line {i} of the story that goes on and on with the people and the town ..." for i in range(6)])
     + "\n" + PROSE, "ellipsis_lines"),
    ("\n".join(f"• item {i} is the one to have with the rest" for i in range(10)), "bullet_lines"),
    ("\n".join(["Buy the best shoes and have them with you today to the end."] * 4 + [PROSE]), "duplicate_lines"),
    (PROSE + " ".join(["the cat sat on the mat"] * 12), "top_ngram"),
    ("\n".join(["This site uses cookies. Accept cookies to continue.", "Privacy policy | Terms of use",
                "All rights reserved 2024.", PROSE]), "boilerplate"),
    (" ".join(f"alpha{i} beta{i} gamma{i}" for i in range(30)), "no_stop_words"),
])
def test_each_rule_names_its_reason(text, reason):
    verdict = quality_verdict(text)
    assert (verdict.keep, verdict.reason) == (False, reason), verdict


def test_duplicate_ngrams_rule_on_a_repeated_passage():
    passage = "a quick survey of the harbour shows that the boats have gone out to sea "
    text = PROSE + passage * 2 + " ".join(f"word{i}" for i in range(60))
    verdict = quality_verdict(text)
    assert verdict.reason == "duplicate_ngrams"
    # a looser threshold on every n keeps it: the rule, not another one, made the decision
    loose = QualityThresholds(dup_ngram_max_frac={n: 0.9 for n in range(5, 11)})
    assert quality_verdict(text, loose).keep


def test_chinese_counts_characters_and_has_its_own_length_rule():
    zh = "我们在日常生活中可以采取很多方法来减少用水，例如使用节水装置和收集雨水。"
    assert detect_language(zh) == "zh" and detect_language(PROSE) == "en"
    assert len(words(zh, "zh")) == len(zh)  # every character, punctuation included, is one unit
    assert quality_verdict(zh).keep
    assert quality_verdict("减少用水。").reason == "too_short"
    assert quality_verdict("我在用水。", QualityThresholds(zh_min_chars=3)).keep
    assert quality_verdict("电子邮件营销，搜索引擎优化，社交媒体推广").reason == "no_stop_words"


def test_thresholds_are_configurable():
    assert quality_verdict(PROSE, QualityThresholds(min_words=500)).reason == "too_short"
    assert quality_verdict(PROSE, QualityThresholds(max_words=20)).reason == "too_long"


def test_real_documents_are_mostly_kept(shared):
    base = shared / "data" / "pretrain"
    wiki = [line for line in (base / "wiki_demo.txt").read_text().splitlines() if line.strip()]
    c4 = [json.loads(line)["text"] for line in (base / "c4_demo.jsonl").read_text().splitlines()]
    zh = [line for line in (base / "chinese.txt").read_text().splitlines()[:2000]
          if line.strip() and detect_language(line) == "zh"]
    for name, docs, min_keep in (("wiki", wiki, 1.0), ("c4", c4, 0.8), ("zh", zh, 0.65)):
        reasons = Counter(quality_verdict(d).reason for d in docs)
        kept = reasons[None] / len(docs)
        assert kept >= min_keep, (name, kept, reasons)
    assert len(zh) > 1400

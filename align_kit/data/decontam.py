"""Decontamination: n-gram overlap between training documents and evaluation sets, with every hit reported.

A training document is contaminated by an evaluation item when they share an n-gram of normalised text
(:func:`align_kit.data.dedup.normalise`): 13 words for space-separated text (the GPT-3 paper's choice,
Brown et al. 2020, appendix C) and 25 characters for Chinese (about 13 words at roughly two characters
per word). An evaluation item shorter than n counts as one n-gram of its own length when it has at least
``min_units`` units (``zh_min_units`` characters), so short questions are still caught whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from align_kit.data.clean import detect_language
from align_kit.data.dedup import normalise
from align_kit.data.io import file_kind, read_records, read_text_documents
from align_kit.errors import ConfigError, DataError, describe


@dataclass
class DecontamConfig:
    """Overlap settings."""

    n: int = 13
    """Words per n-gram for space-separated text (GPT-3: 13)."""
    zh_n: int = 25
    """Characters per n-gram for Chinese text."""
    min_units: int = 8
    """An evaluation item shorter than n is matched whole from this many units on; shorter ones are skipped
    (an 8-word question is specific, "What is the capital?" is not)."""
    zh_min_units: int = 15
    """The same for Chinese characters: 8-character instructions such as 创建网站反馈表格 are generic."""
    cjk_share: float = 0.3

    def __post_init__(self):
        if min(self.n, self.zh_n, self.min_units, self.zh_min_units) < 1:
            raise ConfigError("decontamination n, zh_n and min_units must be positive integers")


@dataclass(frozen=True)
class Hit:
    """One contaminated (document, evaluation item) pair and the first n-gram they share."""

    doc_index: int
    doc_id: str
    eval_set: str
    eval_index: int
    ngram: str


_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_CJK_ONE = re.compile(f"[{_CJK}]")


def units(text: str) -> list[str]:
    """One tokenisation for every language: each CJK character is a unit, so is each other word. A Chinese
    passage quoted in an English page (or English names in a Chinese answer) is then matched either way.

    >>> units("Use 节水装置, e.g. low-flow!")
    ['use', '节', '水', '装', '置', 'e', 'g', 'low', 'flow']
    """
    return _TOKEN_RE.findall(normalise(text))


def readable(gram: tuple[str, ...]) -> str:
    """An n-gram as text: spaces between words, none between CJK characters.

    >>> readable(("用", "python", "3", "写", "代", "码"))
    '用python 3写代码'
    """
    out = gram[0] if gram else ""
    for prev, unit in zip(gram, gram[1:]):
        out += unit if _CJK_ONE.match(prev) or _CJK_ONE.match(unit) else " " + unit
    return out


class ContaminationIndex:
    """An index of every evaluation n-gram; :meth:`hits` scans one training document against it.

    >>> index = ContaminationIndex({"quiz": ["What is the process by which living things give rise to offspring?"]})
    >>> doc = "Notes. What is the process by which living things give rise to offspring? Sex."
    >>> [(h.eval_set, h.eval_index, h.ngram) for h in index.hits(doc)]
    [('quiz', 0, 'what is the process by which living things give rise to offspring')]
    >>> index.hits("Living things give rise to offspring by reproduction.")
    []
    """

    def __init__(self, eval_sets: dict[str, list[str]], cfg: DecontamConfig | None = None):
        self.cfg = cfg or DecontamConfig()
        # Every evaluation n-gram is filed under its first `seed` units (the shortest n in use), so a document
        # is scanned in one pass of seed-grams; a seed hit is then checked against the full n-gram.
        self.seed = min(self.cfg.min_units, self.cfg.zh_min_units)
        self.grams: dict[tuple[str, ...], list[tuple[tuple[str, ...], str, int]]] = {}
        self.items = 0
        for name, items in eval_sets.items():
            for idx, item in enumerate(items):
                self.items += self._add(name, idx, item)

    def _add(self, name: str, idx: int, item: str) -> bool:
        zh = detect_language(item, self.cfg.cjk_share) == "zh"
        n, least = (self.cfg.zh_n, self.cfg.zh_min_units) if zh else (self.cfg.n, self.cfg.min_units)
        item_units = units(item)
        if len(item_units) < n:
            if len(item_units) < least:
                return False
            n = len(item_units)
        for gram in set(zip(*(item_units[i:] for i in range(n)))):
            self.grams.setdefault(gram[:self.seed], []).append((gram, name, idx))
        return True

    def hits(self, text: str, doc_index: int = 0, doc_id: str = "") -> list[Hit]:
        """Every evaluation item this document shares an n-gram with, each once, with the first shared n-gram."""
        found: dict[tuple[str, int], str] = {}
        doc_units = units(text)
        for pos, seed in enumerate(zip(*(doc_units[i:] for i in range(self.seed)))):
            for gram, name, idx in self.grams.get(seed, ()):
                if (name, idx) not in found and tuple(doc_units[pos:pos + len(gram)]) == gram:
                    found[(name, idx)] = readable(gram)
        return [Hit(doc_index, doc_id, name, idx, gram) for (name, idx), gram in sorted(found.items())]


def load_eval_items(path: str | Path, field: str | None = None, columns: list[str] | None = None,
                    split: str = "line") -> list[str]:
    """Evaluation items from a file: one per line of a ``.txt``, or ``field`` of each record of a json/jsonl/
    csv/tsv/parquet file (``columns`` names a header-less csv/tsv, e.g. FLAN's question, answer, rationale).
    Without ``field`` a record must have exactly one string field or a ``question``/``prompt``/``text`` one."""
    if file_kind(path) == "txt":
        return [doc for _, doc in read_text_documents(path, split)]
    items = []
    for row, rec in read_records(path, columns):
        key = field or _default_field(rec)
        if key is None:
            raise DataError(str(path), row, None, describe(rec), "a record with a 'question', 'prompt' or "
                            "'text' field (or pass the field name)")
        value = rec.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(str(path), row, key, describe(value), "a non-empty string")
        items.append(value)
    return items


def _default_field(rec: dict) -> str | None:
    for key in ("question", "prompt", "text", "instruction"):
        if isinstance(rec.get(key), str):
            return key
    strings = [k for k, v in rec.items() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None

"""Compose pretraining data steps into a pipeline, run it, and write kept/dropped documents, counts and a card.

A pipeline is a plain list of steps over documents ``{"id": str, "text": str}``; every step keeps a document
or drops it with a reason, and dropped documents are kept (with ``reason``, ``step``, ``detail`` and, for
duplicates, ``duplicate_of``) for inspection::

    from align_kit.data.pipeline import run_pipeline, QualityFilter, PIIScrubber, ExactDedup, MinHashDedup
    result = run_pipeline(docs, [QualityFilter(), PIIScrubber(), ExactDedup(), MinHashDedup()], out_dir="out")
    result.counts  # Counter({'kept': 812, 'too_short': 77, 'near_duplicate': 31, ...})

Per-document steps (filter, scrub) stream; corpus steps (dedup, decontamination) see every document that
reached them, so one run holds its corpus in memory. For corpora that outgrow one machine see
docs/data_pipeline.md (datatrove executors on Slurm or Ray).
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import yaml

from align_kit.data.clean import QualityThresholds, detect_language, quality_verdict, words
from align_kit.data.decontam import ContaminationIndex, DecontamConfig
from align_kit.data.dedup import (
    MinHashConfig,
    cluster_duplicates,
    exact_duplicates,
    near_duplicate_pairs,
    sketch,
)
from align_kit.data.pii import PLACEHOLDERS, scrub_pii
from align_kit.errors import DataError, describe

Doc = dict


def _dropped(doc: Doc, step: str, reason: str, detail: str = "", **extra) -> Doc:
    return {**doc, "step": step, "reason": reason, "detail": detail, **extra}


@dataclass
class QualityFilter:
    """Gopher/C4 quality rules (:mod:`align_kit.data.clean`); drops with the failing rule's reason."""

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    name: str = "quality"

    def apply(self, docs: list[Doc], pool=None) -> tuple[list[Doc], list[Doc]]:
        kept, dropped = [], []
        verdicts = _map(pool, partial(quality_verdict, t=self.thresholds), [d["text"] for d in docs])
        for doc, verdict in zip(docs, verdicts):
            if verdict.keep:
                kept.append(doc)
            else:
                dropped.append(_dropped(doc, self.name, verdict.reason or "", verdict.detail))
        return kept, dropped

    def report(self) -> dict:
        return {"thresholds": asdict(self.thresholds)}


@dataclass
class PIIScrubber:
    """Replaces e-mails, phones, IPs and Chinese ID cards by placeholders; never drops."""

    kinds: tuple[str, ...] = tuple(PLACEHOLDERS)
    name: str = "pii"
    replacements: Counter = field(default_factory=Counter)
    documents_changed: int = 0

    def apply(self, docs: list[Doc], pool=None) -> tuple[list[Doc], list[Doc]]:
        out = []
        scrubbed = _map(pool, partial(scrub_pii, kinds=self.kinds), [d["text"] for d in docs])
        for doc, (text, counts) in zip(docs, scrubbed):
            if counts:
                self.replacements.update(counts)
                self.documents_changed += 1
                doc = {**doc, "text": text}
            out.append(doc)
        return out, []

    def report(self) -> dict:
        return {"replacements": dict(self.replacements), "documents_changed": self.documents_changed}


@dataclass
class ExactDedup:
    """Drops documents whose normalised text appeared before (``exact_duplicate``, ``duplicate_of``)."""

    name: str = "exact_dedup"

    def apply(self, docs: list[Doc], pool=None) -> tuple[list[Doc], list[Doc]]:
        dupes = exact_duplicates([d["text"] for d in docs])
        kept = [d for i, d in enumerate(docs) if i not in dupes]
        dropped = [_dropped(docs[i], self.name, "exact_duplicate", duplicate_of=docs[j]["id"])
                   for i, j in sorted(dupes.items())]
        return kept, dropped

    def report(self) -> dict:
        return {}


@dataclass
class MinHashDedup:
    """MinHash LSH near-dedup (:mod:`align_kit.data.dedup`); keeps the first document of each cluster."""

    config: MinHashConfig = field(default_factory=MinHashConfig)
    name: str = "minhash_dedup"
    pairs: int = 0

    def apply(self, docs: list[Doc], pool=None) -> tuple[list[Doc], list[Doc]]:
        sketches = _map(pool, partial(sketch, cfg=self.config), [d["text"] for d in docs])
        pairs = near_duplicate_pairs([d["text"] for d in docs], self.config, sketches)
        self.pairs += len(pairs)
        best = {}
        for _, j, sim in pairs:
            best[j] = max(best.get(j, 0.0), sim)
        dupes = cluster_duplicates(pairs)
        kept = [d for i, d in enumerate(docs) if i not in dupes]
        dropped = [_dropped(docs[i], self.name, "near_duplicate", f"jaccard {best.get(i, 0.0):.3f}",
                            duplicate_of=docs[j]["id"]) for i, j in sorted(dupes.items())]
        return kept, dropped

    def report(self) -> dict:
        return {"config": asdict(self.config), "verified_pairs": self.pairs}


@dataclass
class Decontaminate:
    """N-gram overlap with evaluation sets; records every hit, and drops hit documents when ``drop``."""

    eval_sets: dict[str, list[str]]
    config: DecontamConfig = field(default_factory=DecontamConfig)
    drop: bool = True
    name: str = "decontaminate"
    hits: list[dict] = field(default_factory=list)

    def apply(self, docs: list[Doc], pool=None) -> tuple[list[Doc], list[Doc]]:
        # scanned in this process: shipping the n-gram index to workers costs more than the lookups
        index = ContaminationIndex(self.eval_sets, self.config)
        kept, dropped = [], []
        for i, doc in enumerate(docs):
            hits = index.hits(doc["text"], i, doc["id"])
            self.hits += [asdict(h) for h in hits]
            if hits and self.drop:
                first = hits[0]
                dropped.append(_dropped(doc, self.name, "contaminated",
                                        f"{first.eval_set}[{first.eval_index}]: {first.ngram}"))
            else:
                kept.append(doc)
        return kept, dropped

    def report(self) -> dict:
        return {"config": asdict(self.config), "eval_sets": {k: len(v) for k, v in self.eval_sets.items()},
                "hits": len(self.hits), "drop": self.drop, "hit_list": self.hits}


def _map(pool, fn, items: list) -> list:
    """``map`` in a process pool when there is one; 64 chunks balance the workers and amortise pickling."""
    if pool is None or len(items) < 64:
        return [fn(x) for x in items]
    return pool.map(fn, items, chunksize=max(1, len(items) // 64))


def corpus_stats(docs: Iterable[Doc]) -> dict:
    """Documents, characters, word units (whitespace words; CJK characters count one each) and languages.

    >>> corpus_stats([{"id": "a", "text": "two words"}, {"id": "b", "text": "三个字"}])
    {'documents': 2, 'characters': 12, 'words': 5, 'languages': {'en': 1, 'zh': 1}}
    """
    n = chars = units = 0
    langs: Counter = Counter()
    for doc in docs:
        lang = detect_language(doc["text"])
        n, chars, units = n + 1, chars + len(doc["text"]), units + len(words(doc["text"], lang))
        langs[lang] += 1
    return {"documents": n, "characters": chars, "words": units, "languages": dict(sorted(langs.items()))}


@dataclass
class PipelineResult:
    kept: list[Doc]
    dropped: list[Doc]
    counts: Counter
    stats: dict
    steps: dict

    def summary(self) -> str:
        detail = ", ".join(f"{k}: {v}" for k, v in self.counts.most_common() if k != "kept")
        return f"kept {self.counts['kept']} of {self.stats['input']['documents']}" + (f" ({detail})" if detail else "")


def run_pipeline(docs: Iterable[Doc], steps: list, out_dir: str | Path | None = None,
                 sources: list[str] | None = None, workers: int = 1) -> PipelineResult:
    """Run ``steps`` in order; each sees only what the previous ones kept. Writes outputs when ``out_dir``.
    ``workers > 1`` runs per-document work (filters, PII, shingling and MinHash) in that many processes.

    >>> r = run_pipeline([{"id": "1", "text": "a b c"}, {"id": "2", "text": "A  b c!"}], [ExactDedup()])
    >>> r.summary(), r.dropped[0]["duplicate_of"]
    ('kept 1 of 2 (exact_duplicate: 1)', '1')
    """
    docs = [_check_doc(d, i) for i, d in enumerate(docs, start=1)]
    input_stats = corpus_stats(docs)
    dropped: list[Doc] = []
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise DataError("pipeline", None, "steps", ", ".join(names), "steps with distinct names")
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        for step in steps:
            docs, lost = step.apply(docs, pool)
            dropped += lost
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    counts = Counter(d["reason"] for d in dropped)
    counts["kept"] = len(docs)
    result = PipelineResult(docs, dropped, counts, {"input": input_stats, "output": corpus_stats(docs)},
                            {s.name: s.report() for s in steps})
    if out_dir is not None:
        write_outputs(result, Path(out_dir), sources or [])
    return result


def _check_doc(doc: Doc, row: int) -> Doc:
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
        raise DataError("documents", row, "text", describe(doc.get("text") if isinstance(doc, dict) else doc),
                        "a document {'id', 'text'} with a string text")
    return {**doc, "id": str(doc.get("id", row))}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from align_kit.data.io import write_jsonl  # line separators escaped: the next step reads it row for row

    write_jsonl(path, rows)


def write_outputs(result: PipelineResult, out: Path, sources: list[str]) -> None:
    """kept.jsonl, dropped.jsonl, report.json (counts, step reports, contamination hits) and README.md."""
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "kept.jsonl", result.kept)
    _write_jsonl(out / "dropped.jsonl", result.dropped)
    steps = {name: {k: v for k, v in rep.items() if k != "hit_list"} for name, rep in result.steps.items()}
    hits = [h for rep in result.steps.values() for h in rep.get("hit_list", [])]
    report = {"counts": dict(result.counts), "stats": result.stats, "steps": steps, "contamination_hits": hits}
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str))
    (out / "README.md").write_text(data_card(result, sources), encoding="utf-8")


def data_card(result: PipelineResult, sources: list[str]) -> str:
    """A data card: YAML front matter with the statistics (machine-readable), then a short readable body."""
    meta = {
        "pretty_name": "align_kit pretraining data",
        "language": sorted(result.stats["output"]["languages"]) or sorted(result.stats["input"]["languages"]),
        "source_files": sources,
        "pipeline": list(result.steps),
        "statistics": result.stats,
        "dropped_by_reason": {k: v for k, v in sorted(result.counts.items()) if k != "kept"},
        "steps": {name: {k: v for k, v in rep.items() if k != "hit_list"} for name, rep in result.steps.items()},
    }
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False)
    i, o = result.stats["input"], result.stats["output"]
    lines = ["---", front.rstrip(), "---", "", "# Pretraining data", "",
             f"Produced by `align_kit.data.pipeline` with steps: {', '.join(result.steps) or 'none'}.", "",
             "| | documents | characters | words |", "|---|---|---|---|",
             f"| input | {i['documents']} | {i['characters']} | {i['words']} |",
             f"| output | {o['documents']} | {o['characters']} | {o['words']} |", "",
             "Dropped documents, with reasons, are in `dropped.jsonl`; contamination hits in `report.json`.", ""]
    return "\n".join(lines)

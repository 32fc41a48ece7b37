"""Documents per second of the full data pipeline (quality, PII, exact dedup, MinHash dedup,
decontamination) at corpus sizes 1x, 4x and 16x, built from ../shared/data/pretrain.

    python benchmarks/bench_pipeline.py [--sizes 1 4 16] [--workers 2]

The 1x corpus is every document of ../shared/data/pretrain cut to web-page size: wiki articles in
400-word pieces, C4 documents as they are, chinese.txt lines joined into ~300-character documents. Each
further replica edits 30% of every document's words (characters for Chinese), so replicas are new
documents rather than duplicates (5-gram Jaccard ~0.1), and then 5% exact copies and 5% near copies (2%
edits) are added so the dedup steps have work to do. Prints a table and one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

from align_kit.data.clean import detect_language
from align_kit.data.decontam import load_eval_items
from align_kit.data.pipeline import (
    Decontaminate,
    ExactDedup,
    MinHashDedup,
    PIIScrubber,
    QualityFilter,
    run_pipeline,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def base_corpus(shared: Path) -> list[str]:
    pre = shared / "data" / "pretrain"
    docs = []
    for line in (pre / "wiki_demo.txt").read_text().splitlines():
        words = line.split()
        docs += [" ".join(words[i:i + 400]) for i in range(0, len(words), 400)]
    docs += [json.loads(line)["text"] for line in (pre / "c4_demo.jsonl").read_text().splitlines()]
    buf = ""
    for line in (pre / "chinese.txt").read_text().splitlines():
        buf += line.strip() + "\n"
        if len(buf) >= 300:
            docs.append(buf.strip())
            buf = ""
    return docs


def _edit(text: str, rate: float, rng: random.Random, vocab: dict[str, list[str]]) -> str:
    lang = detect_language(text)
    units = text.split() if lang == "en" else list(text)
    pool = vocab[lang]
    out = [rng.choice(pool) if rng.random() < rate else u for u in units]
    return (" " if lang == "en" else "").join(out)


def corpus(base: list[str], factor: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = {"en": [w for d in base[:400] for w in d.split()][:50000],
             "zh": [c for d in base if detect_language(d) == "zh" for c in d if not c.isspace()][:50000]}
    texts = list(base)
    for _ in range(factor - 1):
        texts += [_edit(t, 0.3, rng, vocab) for t in base]
    n = len(texts)
    texts += [texts[rng.randrange(n)] for _ in range(n // 20)]
    texts += [_edit(texts[rng.randrange(n)], 0.02, rng, vocab) for _ in range(n // 20)]
    rng.shuffle(texts)
    return [{"id": str(i), "text": t} for i, t in enumerate(texts)]


def _cpu() -> float:
    """CPU seconds of this process and its finished workers: on a shared machine wall time alone misleads."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2, help="processes for per-document work")
    args = parser.parse_args()
    if not (SHARED / "README.md").exists():
        print("../shared is absent: nothing to benchmark", file=sys.stderr)
        return 1
    base = base_corpus(SHARED)
    flan = SHARED / "data" / "flan"
    eval_sets = {p.name: load_eval_items(p, "question", ["question", "answer", "rationale"])
                 for p in sorted(flan.glob("*.tsv"))}
    print(f"cores available: {os.cpu_count()}, workers: {args.workers}, load average: {os.getloadavg()[0]:.1f}")
    print(f"{'size':>5}{'docs':>9}{'MB':>8}{'seconds':>9}{'docs/s':>9}{'CPU s':>8}{'load':>6}{'kept':>8}  dropped")
    for factor in args.sizes:
        docs = corpus(base, factor)
        megabytes = sum(len(d["text"].encode()) for d in docs) / 1e6
        steps = [QualityFilter(), PIIScrubber(), ExactDedup(), MinHashDedup(), Decontaminate(eval_sets)]
        cpu0, start = _cpu(), time.perf_counter()
        result = run_pipeline(docs, steps, workers=args.workers)
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
        load = os.getloadavg()[0]
        dropped = {k: v for k, v in result.counts.most_common() if k != "kept"}
        print(f"{factor:>4}x{len(docs):>9}{megabytes:>8.1f}{seconds:>9.1f}{len(docs) / seconds:>9.0f}"
              f"{cpu:>8.1f}{load:>6.1f}{result.counts['kept']:>8}  {dropped}")
        print(json.dumps({"size": factor, "documents": len(docs), "megabytes": round(megabytes, 2),
                          "seconds": round(seconds, 2), "docs_per_second": round(len(docs) / seconds, 1),
                          "cpu_seconds": round(cpu, 2), "load_average": round(load, 1),
                          "workers": args.workers, "kept": result.counts["kept"], "dropped": dropped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`align-kit data run` on datatrove (tasks=2, workers=2): clean + dedup + tokenise at 1x and 8x the corpus,
and align_kit's quality filters against datatrove's own Gopher/C4 filters on the same documents.

    python benchmarks/bench_datatrove.py [--sizes 1 8] [--tasks 2]

The corpus is bench_pipeline.py's (../shared/data/pretrain cut to web-page size; replicas edit 30% of the
units, plus 5% exact and 5% near copies), written as four JSON Lines files. Each measurement runs in a
fresh process, so its peak memory (the largest resident set of the command and of any task process) is its
own. Filter speed is CPU time per document with a reader-only run subtracted (process start-up and reading
cancel out), so "docs/s per core" is documents per CPU-second of the filter itself. datatrove's filters are
given a whitespace word tokenizer (align_kit splits English on whitespace too; datatrove's default, spaCy,
is not installed here and is slower), so the comparison is, if anything, generous to datatrove.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHARED = HERE.parents[0].parent / "shared"


def _usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
            max(own.ru_maxrss, kids.ru_maxrss) / 1024)


class TreeMonitor:
    """Samples this process and all its descendants every 50 ms: datatrove's task processes are forked by a
    forkserver, so they are grandchildren that getrusage(RUSAGE_CHILDREN) never sees. Gives CPU seconds
    (each process's last sample, summed), the largest single-process RSS and the largest total RSS."""

    def __init__(self):
        import threading

        import psutil

        self.root, self.cpu, self.peak, self.total = psutil.Process(), {}, 0.0, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import psutil

        while not self.stop.is_set():
            total = 0.0
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    t, rss = p.cpu_times(), p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.cpu[p.pid] = t.user + t.system
                self.peak, total = max(self.peak, rss), total + rss
            self.total = max(self.total, total)
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def write_corpus(folder: Path, factor: int) -> int:
    from bench_pipeline import base_corpus, corpus

    docs = corpus(base_corpus(SHARED), factor)
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(4):
        with (folder / f"part{part}.jsonl").open("w", encoding="utf-8") as f:
            for d in docs[part::4]:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return len(docs)


def run_pipeline_once(factor: int, tasks: int, work: Path) -> dict:
    from align_kit.data.trove.run import run_spec
    from align_kit.data.trove.spec import parse_spec

    n = write_corpus(work / "in", factor)
    megabytes = sum(p.stat().st_size for p in (work / "in").iterdir()) / 1e6
    spec = parse_spec({"input": {"paths": [str(work / "in")]}, "output": {"folder": str(work / "out")},
                       "steps": ["quality", "pii", "exact_dedup", "minhash_dedup",
                                 {"tokenize": {"tokenizer": str(SHARED / "models" / "stories260K")}}],
                       "tasks": tasks, "workers": tasks})
    start = time.perf_counter()
    with TreeMonitor() as mon:
        report = run_spec(spec)
    seconds, cpu = time.perf_counter() - start, sum(mon.cpu.values())
    return {"size": factor, "documents": n, "megabytes": round(megabytes, 1), "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1), "docs_per_cpu_second": round(n / cpu, 1),
            "peak_rss_mb": round(mon.peak), "peak_total_rss_mb": round(mon.total), "kept": report["counts"]["kept"],
            "dropped": {k: v for k, v in report["counts"].items() if k != "kept"}}


def run_filters_once(which: str, tasks: int, work: Path) -> dict:
    """CPU seconds of reader + filter(s) over the 1x corpus, ``tasks`` tasks run one after the other in this
    process (workers=1), so getrusage sees all of it."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    from align_kit.data.trove.run import resolve_files
    from align_kit.data.trove.spec import parse_spec
    from align_kit.data.trove.steps import DocumentReader, QualityStep

    class Words(WhitespaceTokenizer):
        def word_tokenize(self, text):
            return text.split()

    n = write_corpus(work / "in", 1)
    spec = parse_spec({"input": {"paths": [str(work / "in")]}, "output": {"folder": str(work / "x")},
                       "steps": ["quality"]})
    steps = [DocumentReader(resolve_files(spec))]
    if which == "align_kit":
        steps.append(QualityStep())
    elif which == "datatrove":
        from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

        words = Words()
        steps += [GopherRepetitionFilter(language=words), GopherQualityFilter(language=words),
                  C4QualityFilter(filter_no_terminal_punct=False, language=words)]
    kept = []
    steps.append(lambda data, rank, ws: (kept.append(1) for _ in data))
    cpu0 = _usage()[0]
    LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=str(work / f"logs_{which}")).run()
    return {"filters": which, "documents": n, "cpu_seconds": round(_usage()[0] - cpu0, 2)}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            kind, arg = args.one
            result = (run_pipeline_once(int(arg), args.tasks, Path(tmp)) if kind == "pipeline"
                      else run_filters_once(arg, args.tasks, Path(tmp)))
        print(json.dumps(result))
        return 0
    if not (SHARED / "README.md").exists():
        print("../shared is absent: nothing to benchmark", file=sys.stderr)
        return 1
    print(f"cores: {os.cpu_count()}, tasks: {args.tasks}, load average: {os.getloadavg()[0]:.1f}")
    cpu = {w: _child(["--one", "filters", w, "--tasks", str(args.tasks)]) for w in ("none", "align_kit", "datatrove")}
    n = cpu["none"]["documents"]
    rate = {w: n / max(1e-9, cpu[w]["cpu_seconds"] - cpu["none"]["cpu_seconds"]) for w in ("align_kit", "datatrove")}
    print(f"quality filters on {n} documents, docs/s per core: align_kit {rate['align_kit']:.0f}, datatrove "
          f"Gopher+repetition+C4 {rate['datatrove']:.0f}, ratio {rate['align_kit'] / rate['datatrove']:.2f}")
    print(json.dumps({"filters_docs_per_cpu_second": {k: round(v, 1) for k, v in rate.items()},
                      "ratio": round(rate["align_kit"] / rate["datatrove"], 2), "cpu": cpu}))
    print(f"{'size':>5}{'docs':>8}{'MB':>7}{'seconds':>9}{'CPU s':>8}{'docs/CPU-s':>11}{'peak MB':>9}"
          f"{'all MB':>8}{'kept':>7}")
    runs = []
    for factor in args.sizes:
        r = _child(["--one", "pipeline", str(factor), "--tasks", str(args.tasks)])
        runs.append(r)
        print(f"{factor:>4}x{r['documents']:>8}{r['megabytes']:>7}{r['seconds']:>9}{r['cpu_seconds']:>8}"
              f"{r['docs_per_cpu_second']:>11}{r['peak_rss_mb']:>9}{r['peak_total_rss_mb']:>8}{r['kept']:>7}  {r['dropped']}")
        print(json.dumps(r))
    if len(runs) > 1:
        print(f"peak memory {runs[-1]['size']}x / {runs[0]['size']}x: largest process "
              f"{runs[-1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.2f}, all processes "
              f"{runs[-1]['peak_total_rss_mb'] / runs[0]['peak_total_rss_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build a validated :class:`~.spec.PipelineSpec` into datatrove executors, run them, write counts and a card.

Layout of ``output.folder``::

    kept/{rank:05d}.jsonl|.parquet      surviving documents {"id", "text"}
    dropped/{step}_{rank:05d}.jsonl     dropped documents with step, reason, detail (duplicate_of)
    hits/{rank:05d}.jsonl               every contamination hit (document id, evaluation set and item, n-gram)
    tokens/{rank:05d}.bin|.json         token shards (with a tokenize step)
    work/                               what dedup stages exchange; per-task reports
    logs/{stage}/completions/           datatrove's completion markers: a re-run skips finished tasks
    pipeline.json  report.json  README.md

Stages: ``clean`` (read + the steps before dedup; with dedup it also writes signatures), ``buckets`` (one
task per band), ``clusters`` (one task), ``final`` (dedup filter + the steps after dedup + writers).
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from pathlib import Path

from align_kit.data.decontam import DecontamConfig, load_eval_items
from align_kit.data.io import file_kind, split_lines
from align_kit.data.trove.spec import DEDUP, PipelineSpec, fingerprint
from align_kit.errors import ConfigError, DataError

KINDS = {"jsonl": "jsonl", "parquet": "parquet", "txt": "text"}


def resolve_files(spec: PipelineSpec) -> list[tuple[str, str]]:
    """``(path, reader kind)`` of every input file: folders expand to their data files, sorted."""
    import fsspec

    files = []
    for path in spec.input.paths:
        fs, local = fsspec.core.url_to_fs(path)
        proto = path.split("://")[0] + "://" if "://" in path else ""
        if fs.isdir(local):
            found = sorted(p for p in fs.find(local) if _kind(p, spec, strict=False))
            if not found:
                raise DataError(path, None, None, "a folder with no .jsonl/.parquet/.txt files",
                                "at least one input file")
            files += [(proto + p if proto else p, _kind(p, spec)) for p in found]
        elif fs.isfile(local):
            files.append((path, _kind(path, spec)))
        else:
            raise DataError(path, None, None, "no such file or folder", "an existing input path")
    return files


def _kind(path: str, spec: PipelineSpec, strict: bool = True) -> str | None:
    if spec.input.format != "auto":
        return spec.input.format
    try:
        kind = KINDS.get(file_kind(path))
    except DataError:
        kind = None
    if kind is None and strict:
        raise DataError(path, None, None, f"suffix of '{posixpath.basename(path)}'",
                        "input.format, or a .jsonl(.gz), .parquet or .txt(.gz) file")
    return kind


def _eval_sets(cfg) -> dict[str, list[str]]:
    sets = {}
    for e in cfg.eval:
        if e.harness is not None:  # a benchmark's test documents, as the harness shows them to the model
            from align_kit.harness import benchmark_documents

            sets.update(benchmark_documents([e.harness]))
            continue
        columns = ["question", "answer", "rationale"] if e.flan else None
        sets[posixpath.basename(e.path)] = load_eval_items(e.path, e.field, columns)
    return sets


def _doc_steps(steps: list, out: str, pii_box: list) -> list:
    from align_kit.data.trove.steps import DecontamStep, PIIStep, QualityStep, dropped_writer

    built = []
    for kind, cfg in steps:
        if kind == "quality":
            built.append(QualityStep(cfg, dropped_writer(f"{out}/dropped", "quality")))
        elif kind == "pii":
            built.append(PIIStep(tuple(cfg.kinds)))
            pii_box.append(built[-1])
        elif kind == "decontaminate":
            dcfg = DecontamConfig(n=cfg.n, zh_n=cfg.zh_n, min_units=cfg.min_units, zh_min_units=cfg.zh_min_units)
            built.append(DecontamStep(_eval_sets(cfg), dcfg, dropped_writer(f"{out}/dropped", "decontaminate"),
                                      hits_folder=f"{out}/hits", drop=cfg.drop))
    return built


def build_stages(spec: PipelineSpec, files: list[tuple[str, str]]) -> list[tuple[str, list, int]]:
    """``(stage name, pipeline, tasks)`` in order."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

    from align_kit.data.trove.dedup import DedupCluster, DedupFilter, DedupSignature, datatrove_config
    from align_kit.data.trove.steps import (
        DocumentReader,
        RankFileReader,
        TaskReport,
        dropped_writer,
        kept_writer,
    )
    from align_kit.data.trove.tokens import TokenizeShards

    out, work, tasks = spec.output.folder.rstrip("/"), spec.output.folder.rstrip("/") + "/work", spec.tasks
    kinds = [k for k, _ in spec.steps]
    cut = [i for i, k in enumerate(kinds) if k in DEDUP]
    pre = spec.steps[:cut[0]] if cut else [s for s in spec.steps if s[0] != "tokenize"]
    post = [s for s in spec.steps[cut[-1] + 1:] if s[0] != "tokenize"] if cut else []
    tokenize = next((c for k, c in spec.steps if k == "tokenize"), None)
    reader = DocumentReader(files, text_field=spec.input.text_field, id_field=spec.input.id_field,
                            split=spec.input.split, skip=spec.input.on_bad_row == "skip",
                            rejected=dropped_writer(f"{out}/dropped", "read"))
    pre_pii: list = []
    head = [reader, TaskReport(f"{work}/reports/input"), *_doc_steps(pre, out, pre_pii)]

    def tail(pii: list) -> list:
        steps = [TaskReport(f"{work}/reports/output", pii[0] if pii else None), kept_writer(f"{out}/kept",
                                                                                             spec.output.format)]
        if tokenize is not None:
            steps.append(TokenizeShards(f"{out}/tokens", tokenize.tokenizer, tokenize.add_bos, tokenize.add_eos))
        return steps

    if not cut:
        return [("clean", head + tail(pre_pii), tasks)]
    mh = next((c for k, c in spec.steps if k == "minhash_dedup"), None)
    from align_kit.data.dedup import MinHashConfig

    sig = DedupSignature(work, mh or MinHashConfig(), near=mh is not None)
    clean = head + ([TaskReport(f"{work}/reports/pii", pre_pii[0])] if pre_pii else [])
    clean += [kept_writer(f"{work}/clean"), sig]
    stages = [("clean", clean, tasks)]
    if mh is not None:
        stages.append(("buckets", [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets",
                                                       config=datatrove_config(mh))], mh.bands))
    stages.append(("clusters", [DedupCluster(work, f"{work}/clean", tasks, mh, "exact_dedup" in kinds)], 1))
    post_pii: list = []
    final = [RankFileReader(f"{work}/clean"), DedupFilter(work, dropped_writer(f"{out}/dropped", "dedup")),
             *_doc_steps(post, out, post_pii)]
    stages.append(("final", final + tail(post_pii), tasks))
    return stages


def check_output_folder(spec: PipelineSpec) -> None:
    """Refuse an output folder that holds another pipeline's results (resuming would mix the two)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec.output.folder)
    mine = fingerprint(spec)
    marker = posixpath.join(root, "pipeline.json")
    if fs.exists(marker):
        with fs.open(marker, "r") as f:
            theirs = json.load(f)
        if theirs.get("fingerprint") != mine["fingerprint"]:
            diff = [k for k in ("input", "output_format", "tasks", "steps") if theirs.get(k) != mine[k]]
            raise ConfigError(f"output.folder {spec.output.folder}: holds the output of a different pipeline "
                              f"(differs in: {', '.join(diff) or 'settings'}); expected a new or empty folder, "
                              "or the same pipeline to resume it")
    elif fs.exists(root) and fs.ls(root, detail=False):
        raise ConfigError(f"output.folder {spec.output.folder}: found a non-empty folder without pipeline.json; "
                          "expected a new or empty folder")
    fs.makedirs(root, exist_ok=True)
    with fs.open(marker, "w") as f:
        json.dump(mine, f, indent=1, default=str)


def make_executors(spec: PipelineSpec, stages: list[tuple[str, list, int]]):
    """Chained executors, one per stage; running the last launches the chain (``depends``)."""
    out = spec.output.folder.rstrip("/")
    prev = None
    executors = []
    for name, pipeline, tasks in stages:
        common = dict(pipeline=pipeline, tasks=tasks, logging_dir=f"{out}/logs/{name}", depends=prev)
        workers = min(spec.workers, tasks)
        if spec.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            ex = LocalPipelineExecutor(workers=workers, **common)
        elif spec.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            s = spec.slurm
            ex = SlurmPipelineExecutor(workers=workers, time=s.time, partition=s.partition,
                                       cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos,
                                       job_name=f"align_kit_{name}", env_command=s.env_command,
                                       venv_path=s.venv_path, sbatch_args=dict(s.sbatch_args),
                                       slurm_logs_folder=f"{out}/logs/slurm", **common)
        else:
            from datatrove.executor.ray import RayPipelineExecutor

            r = spec.ray
            ex = RayPipelineExecutor(workers=workers, cpus_per_task=r.cpus_per_task if r else 1,
                                     mem_per_cpu_gb=r.mem_per_cpu_gb if r else 2.0, **common)
        executors.append(ex)
        prev = ex
    return executors


def incomplete(executors) -> int:
    return sum(len(ex.get_incomplete_ranks(skip_completed=True)) for ex in executors)


def run_spec(spec: PipelineSpec) -> dict | None:
    """Validate inputs and the output folder, run (or submit) every stage; the report when all finished."""
    files = resolve_files(spec)
    check_output_folder(spec)
    stages = build_stages(spec, files)
    executors = make_executors(spec, stages)
    if spec.executor == "ray":
        import ray

        if not ray.is_initialized():
            r = spec.ray
            if r is not None and r.address:
                ray.init(address=r.address)
            else:
                ray.init(num_cpus=spec.workers, include_dashboard=False)
    executors[-1].run()
    if incomplete(executors):
        return None  # Slurm: submitted; the same command, re-run after the jobs, writes the report
    return write_report(spec, [p for p, _ in files])


def _jsonl_rows(fs, folder: str):
    if not fs.exists(folder):
        return
    for name in sorted(fs.ls(folder, detail=False)):
        if name.endswith(".jsonl"):
            with fs.open(name, "r") as f:
                for line in f:
                    yield json.loads(line)


def _sum_reports(fs, folder: str) -> dict:
    total = {"documents": 0, "characters": 0, "words": 0, "languages": Counter()}
    pii = {"replacements": Counter(), "documents_changed": 0}
    if fs.exists(folder):
        for name in sorted(fs.ls(folder, detail=False)):
            with fs.open(name, "r") as f:
                rep = json.load(f)
            for k in ("documents", "characters", "words"):
                total[k] += rep[k]
            total["languages"].update(rep["languages"])
            if "pii" in rep:
                pii["replacements"].update(rep["pii"]["replacements"])
                pii["documents_changed"] += rep["pii"]["documents_changed"]
    total["languages"] = dict(sorted(total["languages"].items()))
    return {**total, "pii": {"replacements": dict(pii["replacements"]), "documents_changed": pii["documents_changed"]}}


def write_report(spec: PipelineSpec, sources: list[str]) -> dict:
    """Counts by reason (streamed from dropped/), statistics and the data card, as the in-memory path."""
    import fsspec

    from align_kit.data.pipeline import PipelineResult, data_card

    fs, root = fsspec.core.url_to_fs(spec.output.folder)
    counts: Counter = Counter(r["reason"] for r in _jsonl_rows(fs, posixpath.join(root, "dropped")))
    inp = _sum_reports(fs, posixpath.join(root, "work", "reports", "input"))
    outp = _sum_reports(fs, posixpath.join(root, "work", "reports", "output"))
    pii = _sum_reports(fs, posixpath.join(root, "work", "reports", "pii"))["pii"]
    pii = pii if pii["documents_changed"] else outp["pii"]
    counts["kept"] = outp["documents"]
    rejected = sum(v for k, v in counts.items() if k in ("invalid_json", "not_an_object", "missing_text",
                                                        "not_utf8"))
    inp["documents"] += rejected  # rejected rows never became documents; the card counts them as input
    hits = list(_jsonl_rows(fs, posixpath.join(root, "hits")))
    steps = {k: ({"replacements": pii["replacements"], "documents_changed": pii["documents_changed"]}
                 if k == "pii" else {"hits": len(hits), "drop": c.drop} if k == "decontaminate" else {})
             for k, c in spec.steps}
    strip = {k: v for k, v in inp.items() if k != "pii"}, {k: v for k, v in outp.items() if k != "pii"}
    result = PipelineResult([], [], counts, {"input": strip[0], "output": strip[1]}, steps)
    report = {"counts": dict(counts), "stats": result.stats, "steps": steps, "contamination_hits": hits,
              "executor": spec.executor, "tasks": spec.tasks, "fingerprint": fingerprint(spec)["fingerprint"]}
    with fs.open(posixpath.join(root, "report.json"), "w") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
    with fs.open(posixpath.join(root, "README.md"), "w") as f:
        f.write(data_card(result, [posixpath.basename(s) for s in sources]))
    report["summary"] = result.summary()
    return report


def read_kept(folder: str | Path) -> list[dict]:
    """Every kept document of a finished run, in task order (for tests and small outputs)."""
    rows = []
    for path in sorted(Path(folder, "kept").glob("*")):
        if path.suffix == ".jsonl":
            # split on "\n" only: a kept text may hold U+2028 / U+0085, which str.splitlines would cut at
            rows += [json.loads(line) for line in split_lines(path.read_text(encoding="utf-8")) if line.strip()]
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(path).to_pylist()
    return rows

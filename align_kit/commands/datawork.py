"""``align-kit data clean|dedup|decontaminate|stats INPUT... --out DIR``: the pretraining data pipeline.

Each command reads documents (txt one per line or blank-line separated, jsonl/jsonl.gz/json/csv/parquet with a
text field), runs its steps, prints counts by reason and writes ``kept.jsonl``, ``dropped.jsonl``,
``report.json`` and a data card ``README.md`` into ``--out``.

``align-kit data run PIPELINE.yaml`` runs the same steps on datatrove (local, Slurm or Ray executor), sharded,
streaming and resumable: see :mod:`align_kit.data.trove`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Iterator
from pathlib import Path

from align_kit.data.clean import QualityThresholds
from align_kit.data.decontam import DecontamConfig, load_eval_items
from align_kit.data.dedup import MinHashConfig, lsh_threshold
from align_kit.data.io import file_kind, read_records, read_text_documents
from align_kit.data.pii import PLACEHOLDERS
from align_kit.data.pipeline import (
    Decontaminate,
    ExactDedup,
    MinHashDedup,
    PIIScrubber,
    QualityFilter,
    run_pipeline,
)
from align_kit.errors import ConfigError, DataError, describe


def read_documents(paths: list[str], split: str = "line", text_field: str = "text",
                   id_field: str = "id") -> Iterator[dict]:
    """Documents ``{"id", "text"}`` from files; ids default to ``<file name>:<row>``."""
    for path in paths:
        name = Path(path).name
        if file_kind(path) == "txt":
            for row, text in read_text_documents(path, split):
                yield {"id": f"{name}:{row}", "text": text}
            continue
        for row, rec in read_records(path):
            text = rec.get(text_field)
            if not isinstance(text, str):
                hint = f" (fields: {', '.join(sorted(rec)[:8])}; choose one with --text-field)"
                raise DataError(path, row, text_field, describe(text), "a string" + hint)
            doc_id = rec.get(id_field)
            yield {"id": str(doc_id) if doc_id is not None else f"{name}:{row}", "text": text}


def _set_fields(obj, pairs: list[str], what: str):
    """Apply ``KEY=VALUE`` overrides to a config dataclass; unknown keys fail with a suggestion."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (one of: {', '.join(fields)})"
            raise ConfigError(f"{what}: unknown setting {pair!r}{hint}")
        current = getattr(obj, key)
        if not isinstance(current, (int, float)):
            raise ConfigError(f"{what}: {key} is not a number; set it from Python (QualityThresholds)")
        try:
            changes[key] = type(current)(value)
        except ValueError:
            raise ConfigError(f"{what}: {key} expects a {type(current).__name__}, got {value!r}") from None
    return dataclasses.replace(obj, **changes)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="txt, jsonl(.gz), json, csv or parquet files")
    parser.add_argument("--out", required=True, help="output folder (kept/dropped jsonl, report.json, README.md)")
    parser.add_argument("--split", choices=("line", "blank"), default="line",
                        help="txt files: one document per line, or documents separated by blank lines")
    parser.add_argument("--text-field", default="text", help="record field holding the text (default: text)")
    parser.add_argument("--id-field", default="id", help="record field holding a document id, if any")


def _clean_steps(args) -> list:
    thresholds = _set_fields(QualityThresholds(), args.set, "--set")
    steps: list = [QualityFilter(thresholds)]
    if not args.no_pii:
        kinds = tuple(k.strip() for k in args.pii.split(",") if k.strip())
        unknown = [k for k in kinds if k not in PLACEHOLDERS]
        if unknown:
            raise ConfigError(f"--pii: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(PLACEHOLDERS)}")
        steps.append(PIIScrubber(kinds))
    return steps


def _dedup_steps(args) -> list:
    steps: list = [ExactDedup()]
    if not args.exact_only:
        cfg = MinHashConfig(shingle_size=args.shingle_size, zh_shingle_size=args.zh_shingle_size,
                            bands=args.bands, rows=args.rows, threshold=args.threshold, verify=args.verify)
        print(f"MinHash LSH: {cfg.bands} bands x {cfg.rows} rows, S-curve midpoint "
              f"{lsh_threshold(cfg.bands, cfg.rows):.3f}, verified Jaccard >= {cfg.threshold}")
        steps.append(MinHashDedup(cfg))
    return steps


def _decontam_steps(args) -> list:
    eval_sets = {}
    if args.harness:  # benchmarks' test documents (align_kit.harness)
        from align_kit.harness import benchmark_documents

        eval_sets.update(benchmark_documents([t.strip() for t in args.harness.split(",") if t.strip()]))
    if not eval_sets and not args.eval:
        raise ConfigError("data decontaminate: give --eval PATH or --harness TASK[,TASK] (the evaluation sets)")
    for spec in args.eval or []:
        path, _, fld = spec.partition("::")
        columns = ["question", "answer", "rationale"] if path.endswith(".tsv") and args.flan else None
        eval_sets[Path(path).name] = load_eval_items(path, fld or None, columns)
    cfg = DecontamConfig(n=args.n, zh_n=args.zh_n)
    return [Decontaminate(eval_sets, cfg, drop=not args.report_only)]


def _run(args, steps: list) -> int:
    docs = read_documents(args.inputs, args.split, args.text_field, args.id_field)
    result = run_pipeline(docs, steps, args.out, [Path(p).name for p in args.inputs])
    print(result.summary())
    for reason, count in sorted(result.counts.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<20} {count:>8}")
    for name, rep in result.steps.items():
        if name == "pii":
            print(f"  PII replacements: {rep['replacements'] or 'none'}")
        if name == "decontaminate":
            print(f"  contamination hits: {rep['hits']} (listed in report.json)")
    print(f"wrote {args.out}/kept.jsonl, dropped.jsonl, report.json, README.md")
    return 0


def _run_yaml(args) -> int:
    import yaml

    from align_kit.data.trove.spec import parse_spec, read_yaml

    raw = read_yaml(args.pipeline)
    if not isinstance(raw, dict) or not isinstance(raw.get("output"), dict):
        parse_spec(raw, args.pipeline)  # a malformed file: raises its validation error
    for kv in args.set:  # overrides go into the YAML's mapping, so they are validated like it
        key, sep, value = kv.partition("=")
        if key not in ("executor", "tasks", "workers", "output.folder") or not sep:
            raise ConfigError(f"--set {kv!r}: expected executor=, tasks=, workers= or output.folder=VALUE")
        if key == "output.folder":
            raw["output"]["folder"] = value
        else:
            raw[key] = yaml.safe_load(value)
    spec = parse_spec(raw, args.pipeline)  # validated before anything runs
    if args.check:
        print(f"{args.pipeline}: valid ({len(spec.steps)} steps, executor {spec.executor}, tasks {spec.tasks})")
        return 0
    try:
        import datatrove  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError("data run needs datatrove: pip install \"align_kit[cluster]\"") from None
    from align_kit.data.trove.run import run_spec

    report = run_spec(spec)
    if report is None:
        print(f"submitted to {spec.executor}; run the same command again once the jobs finish to collect the "
              f"counts and the data card (finished tasks are skipped)")
        return 0
    print(report["summary"])
    for reason, count in sorted(report["counts"].items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<20} {count:>8}")
    print(f"wrote {spec.output.folder}/kept/, dropped/, report.json, README.md")
    return 0


def register(sub, data_sub) -> None:
    p = data_sub.add_parser("run", help="a pipeline YAML on datatrove: local, Slurm or Ray; sharded, resumable")
    p.add_argument("pipeline", metavar="PIPELINE.yaml")
    p.add_argument("--check", action="store_true", help="validate the YAML and stop")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override executor, tasks, workers or output.folder")
    p.set_defaults(func=_run_yaml)

    p = data_sub.add_parser("clean", help="quality filters (English/Chinese) and PII scrubbing")
    _common(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a quality threshold, e.g. --set min_words=30 --set zh_min_chars=20")
    p.add_argument("--no-pii", action="store_true", help="do not scrub PII")
    p.add_argument("--pii", default=",".join(PLACEHOLDERS), help="PII kinds to scrub (comma separated)")
    p.set_defaults(func=lambda a: _run(a, _clean_steps(a)))

    p = data_sub.add_parser("dedup", help="exact dedup on normalised text, then MinHash LSH near-dedup")
    _common(p)
    d = MinHashConfig()
    p.add_argument("--exact-only", action="store_true", help="skip near-dedup")
    p.add_argument("--shingle-size", type=int, default=d.shingle_size, help="words per shingle")
    p.add_argument("--zh-shingle-size", type=int, default=d.zh_shingle_size, help="characters per Chinese shingle")
    p.add_argument("--bands", type=int, default=d.bands)
    p.add_argument("--rows", type=int, default=d.rows)
    p.add_argument("--threshold", type=float, default=d.threshold, help="verified Jaccard threshold")
    p.add_argument("--verify", choices=("exact", "minhash"), default=d.verify)
    p.set_defaults(func=lambda a: _run(a, _dedup_steps(a)))

    p = data_sub.add_parser("decontaminate", help="n-gram overlap with evaluation sets; report every hit")
    _common(p)
    c = DecontamConfig()
    p.add_argument("--eval", action="append", metavar="PATH[::FIELD]",
                   help="evaluation set file (txt one item per line, or records with FIELD); repeatable")
    p.add_argument("--harness", metavar="TASK[,TASK]",
                   help="lm-evaluation-harness tasks whose test documents are evaluation sets (align_kit.harness)")
    p.add_argument("--flan", action="store_true", help=".tsv eval files are FLAN's header-less question/answer/rationale")
    p.add_argument("--n", type=int, default=c.n, help="words per n-gram")
    p.add_argument("--zh-n", type=int, default=c.zh_n, help="characters per Chinese n-gram")
    p.add_argument("--report-only", action="store_true", help="report hits but keep contaminated documents")
    p.set_defaults(func=lambda a: _run(a, _decontam_steps(a)))

    p = data_sub.add_parser("stats", help="statistics and a data card, without changing the documents")
    _common(p)
    p.set_defaults(func=lambda a: _run(a, []))

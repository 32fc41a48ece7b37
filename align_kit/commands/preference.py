"""``align-kit score MODEL_DIR ...`` and ``align-kit data convert-preference FILE ...``."""

from __future__ import annotations

import json
from pathlib import Path

from align_kit.errors import ConfigError, DataError, SkipReport


def register(sub, data_sub) -> None:
    s = sub.add_parser("score", help="score responses with a trained reward model")
    s.add_argument("model_dir", help="reward model folder (a reward run's model/ or the run folder)")
    s.add_argument("--prompt", help="the user prompt")
    s.add_argument("--response", action="append", default=[], help="a response to score (repeat for several)")
    s.add_argument("--file", help="jsonl of {prompt, response} or {prompt, chosen, rejected} rows instead")
    s.add_argument("--max-length", type=int, help="keep at most this many tokens (from the end)")
    s.set_defaults(func=cmd_score)

    c = data_sub.add_parser("convert-preference", help="convert preference data to align_kit's pair schema")
    c.add_argument("input", help="json, jsonl(.gz), csv, tsv or parquet file")
    c.add_argument("--format", default="auto", help="hh_rlhf, preference, sharegpt, paired, unpaired or auto")
    c.add_argument("--out", help="write converted rows as jsonl here")
    c.add_argument("--skip-bad-rows", action="store_true", help="drop bad rows and count them by reason")
    c.add_argument("--unpaired", action="store_true", help="write each pair as two KTO rows (label true/false)")
    c.add_argument("--columns", action="append", metavar="SOURCE=TARGET",
                   help="rename columns first, like a recipe's columns: (e.g. --columns better=chosen)")
    c.set_defaults(func=cmd_convert_preference)


def _model_dir(path: str) -> Path:
    folder = Path(path)
    return folder / "model" if (folder / "model" / "config.json").exists() else folder


def cmd_score(args) -> int:
    from align_kit.data.io import read_records
    from align_kit.scoring import RewardScorer

    if bool(args.file) == bool(args.prompt):
        raise ConfigError("score: give either --prompt with --response (repeatable) or --file")
    if args.prompt and not args.response:
        raise ConfigError("score: --prompt needs at least one --response")
    scorer = RewardScorer(_model_dir(args.model_dir), max_length=args.max_length)
    if args.prompt:
        for response, value in zip(args.response, scorer(args.prompt, args.response)):
            print(json.dumps({"response": response, "score": round(value, 6)}, ensure_ascii=False))
        return 0
    for row, rec in read_records(args.file):
        prompt = rec.get("prompt")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise DataError(args.file, row, "prompt", repr(prompt)[:40], "a prompt string or list of messages")
        keys = [k for k in ("response", "chosen", "rejected") if isinstance(rec.get(k), str)]
        if not keys:
            raise DataError(args.file, row, "response", "no response", "a response (or chosen and rejected) string")
        scores = scorer(prompt, [rec[k] for k in keys])
        print(json.dumps({"row": row, **{f"score_{k}": round(v, 6) for k, v in zip(keys, scores)}}))
    return 0


def cmd_convert_preference(args) -> int:
    from align_kit.data.formats import parse_columns
    from align_kit.data.io import read_records
    from align_kit.data.preference import convert_records, to_unpaired

    report = SkipReport(args.input)
    records = read_records(args.input, skip_report=report if args.skip_bad_rows else None)
    rows = list(convert_records(records, args.format, args.input, skip=args.skip_bad_rows, report=report,
                                columns=parse_columns(args.columns)))
    if args.unpaired:
        rows = to_unpaired([r for r in rows if "chosen" in r]) + [r for r in rows if "label" in r]
    from align_kit.commands.train import write_converted

    return write_converted(rows, args.out, report)

"""Recipe data sources -> rows in one schema, with held-out split, weighted mixing and skip reports."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from align_kit.data.cards import get_card
from align_kit.data.io import read_records, read_text_documents
from align_kit.errors import ConfigError, DataError, SkipReport

if TYPE_CHECKING:  # annotations only: the recipe loader (config) checks sources through this module
    from align_kit.config import DataArgs, DataSource

log = logging.getLogger("align_kit")
FLAN_COT_COLUMNS = ["question", "answer", "rationale"]


@dataclass
class Loaded:
    train: list[dict]
    eval: list[dict]
    reports: list[SkipReport] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # local files read (hashed into the run manifest)
    cuts: dict = field(default_factory=dict)  # per source: rows left out on purpose (max_rows, the mixture)


def _records(src: DataSource, location: str, skip_report: SkipReport | None = None, fmt: str | None = None):
    """``(row, record)`` from a local file or a Hub dataset (``hub:<id>[:<split>]``)."""
    if location.startswith("hub:"):
        _, repo, *rest = location.split(":")
        import datasets

        try:
            ds = datasets.load_dataset(repo, split=rest[0] if rest else src.split)
        except Exception as exc:  # offline, missing, private: one clear line
            raise ConfigError(f"data: could not load Hub dataset '{repo}': {type(exc).__name__}: {exc}") from None
        return enumerate(ds, start=1)
    if location.lower().endswith((".txt", ".txt.gz")):
        return ((row, {"text": doc}) for row, doc in read_text_documents(location, src.text_split))
    from align_kit.data.formats import headerless_columns

    # the format a data card gives counts too (FLAN CoT TSVs have no header row)
    return read_records(location, columns=headerless_columns(location, fmt or src.format), skip_report=skip_report)


def resolve(src: DataSource, for_training: bool) -> tuple[str, str, dict]:
    """(location, format, column renames) of a source, via its data card when named."""
    if (src.name is None) == (src.path is None):
        raise ConfigError("data source: give exactly one of 'name' (a data card) or 'path' (a file or hub:id)")
    if src.name is not None:
        card = get_card(src.name)
        fmt = card.format if src.format == "auto" else src.format
        return card.split_location(src.split, for_training), fmt, {**card.columns, **src.columns}
    return src.path, src.format, dict(src.columns)


def convert(kind: str, records, fmt: str, where: str, skip: bool, report: SkipReport, columns: dict):
    """Rows of one kind: ``instruction`` (messages), ``preference``, ``unpaired``, ``text`` or ``prompt``."""
    if kind == "instruction":
        from align_kit.data.formats import convert_records

        return list(convert_records(records, fmt, where, skip=skip, report=report, columns=columns))
    if kind in ("preference", "unpaired"):
        from align_kit.data import preference

        return list(preference.convert_records(records, fmt, where, skip=skip, report=report, columns=columns))
    if kind == "text":
        return list(_text_rows(records, where, skip, report, columns))
    if kind == "prompt":  # RL prompts with their reference fields
        from align_kit.data.prompts import convert_prompt_records

        return list(convert_prompt_records(records, fmt, where, skip=skip, report=report, columns=columns))
    raise ValueError(kind)


def _text_rows(records, where, skip, report, columns):
    field_name = columns.get("text", "text")
    for row, rec in records:
        value = rec.get(field_name)
        if isinstance(value, str) and value.strip():
            report.kept += 1
            yield {"text": value}
            continue
        err = DataError(where, row, field_name, "missing" if field_name not in rec else repr(value)[:40],
                        "a non-empty text string")
        if not skip:
            raise err
        report.add(err)


def load_source(src: DataSource, kind: str, skip: bool, for_training: bool) -> tuple[list[dict], SkipReport, str]:
    location, fmt, columns = resolve(src, for_training)
    if kind == "text" and src.text_field != "text":
        columns = {**columns, "text": src.text_field}
    report = SkipReport(location if src.name is None else f"{src.name}[{src.split}]")
    rows = convert(kind, _records(src, location, report if skip else None, fmt), fmt, location, skip, report, columns)
    if report.rejected:
        log.warning("data: %s", report.summary())
    if src.max_rows is not None and len(rows) > src.max_rows:
        log.info("data: %s: %d rows beyond max_rows=%d left out", report.source, len(rows) - src.max_rows,
                 src.max_rows)
        report.beyond_max_rows = len(rows) - src.max_rows
        rows = rows[: src.max_rows]
    if not rows:
        raise ConfigError(f"data: source {location} gave no usable rows ({report.summary()})")
    return rows, report, location


def mix(parts: list[tuple[list[dict], float]], rng: random.Random) -> list[dict]:
    """Mix sources by weight: the total stays the sum of source sizes, each source gets weight share of it
    (sampled without replacement when it has enough rows, upsampled with replacement otherwise).

    >>> a, b = [{"s": "a"}] * 10, [{"s": "b"}] * 10
    >>> sum(r["s"] == "a" for r in mix([(a, 3.0), (b, 1.0)], random.Random(0)))
    15
    """
    if len(parts) == 1:
        return list(parts[0][0])
    out = []
    for (rows, _), n in zip(parts, mix_sizes(parts)):
        out += rng.sample(rows, n) if n <= len(rows) else [rows[i % len(rows)] for i in range(n)]
    rng.shuffle(out)
    return out


def mix_sizes(parts: list[tuple[list, float]]) -> list[int]:
    """Rows each source contributes to the mixture (see :func:`mix`).

    >>> mix_sizes([([0] * 10, 3.0), ([0] * 10, 1.0)])
    [15, 5]
    """
    total = sum(len(rows) for rows, _ in parts)
    wsum = sum(w for _, w in parts)
    for _, w in parts:
        if w <= 0:
            raise ConfigError(f"data source weight must be positive, found {w}")
    return [len(parts[0][0])] if len(parts) == 1 else [round(total * w / wsum) for _, w in parts]


def hold_out(rows: list[dict], kind: str, fraction: float, seed: int, source: str) -> tuple[list[dict], list[dict]]:
    """``(train, held out)`` of one source. Preference and unpaired rows are split by prompt
    (``data.preference.split_train_eval``), so no held-out prompt is trained on with another answer; other
    rows are split row by row (seeded shuffle, ``int(n * fraction)`` rows, at least 1).

    >>> rows = [{"text": str(i)} for i in range(10)]
    >>> [len(part) for part in hold_out(rows, "text", 0.2, 0, "t.txt")]
    [8, 2]
    """
    if kind in ("preference", "unpaired"):
        from align_kit.data.preference import prompt_count, split_train_eval

        if prompt_count(rows) < 2:
            raise ConfigError(f"data: {source}: all {len(rows)} rows share one prompt, so no prompt can be held out "
                              "for evaluation (the split is by prompt); give data.eval or set data.eval_fraction: 0")
        return split_train_eval(rows, fraction, seed)
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = max(1, int(len(rows) * fraction))
    return rows[n_eval:], rows[:n_eval]


def load_data(data: DataArgs, kind: str) -> Loaded:
    """Load train and eval rows of a recipe's ``data:`` block."""
    rng = random.Random(data.seed)
    skip = data.on_bad_row == "skip"
    reports, files, parts, held_out = [], [], [], []
    for src in data.train:
        rows, report, loc = load_source(src, kind, skip, for_training=True)
        reports.append(report)
        files.append(loc)
        if not data.eval and data.eval_fraction > 0 and len(rows) > 1:
            rows, held = hold_out(rows, kind, data.eval_fraction, data.seed, report.source)
            held_out += held
        parts.append((rows, src.weight))
    eval_rows = held_out
    for src in data.eval:
        rows, report, loc = load_source(src, kind, skip, for_training=False)
        reports.append(report)
        files.append(loc)
        eval_rows += rows
    cuts = {}
    for src, report, (rows, _), n in zip(data.train, reports, parts, mix_sizes(parts)):
        cut = {"beyond max_rows": getattr(report, "beyond_max_rows", 0),
               "not drawn by the mixture": max(0, len(rows) - n), "repeated by the mixture": max(0, n - len(rows))}
        if any(cut.values()):
            cuts[report.source] = cut
        if n != len(rows):
            log.info("data: %s: weight %g puts %d of its %d training rows into the mixture", report.source,
                     src.weight, n, len(rows))
    for report in reports[len(data.train):]:
        if getattr(report, "beyond_max_rows", 0):
            cuts[report.source] = {"beyond max_rows": report.beyond_max_rows}
    return Loaded(mix(parts, rng), eval_rows, reports, [f for f in files if not f.startswith("hub:")], cuts)
